"""Sparse sources: SciPy matrices and CSR groups on Zarr streamed with the plans, order,
cursors, checks and digests of dense data; AnnData stores; make-data --density; sparse
appends and follow mode.
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from natgrad_stream.data import ArraySource, as_source, open_zarr
from natgrad_stream.data.csr_store import CSRArrays
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.data.sparse_source import SparseSource
from natgrad_stream.data.sparse_writer import write_csr_matrix
from natgrad_stream.errors import DataError

N, D = 1_000, 40


def matrix(n=N, d=D, density=0.1, seed=0):
    """A CSR matrix with some empty rows and a few dense ones."""
    M = sp.random(n, d, density=density, format="lil", random_state=seed, dtype=np.float64)
    M[5, :] = 0.0
    M[7, :] = np.arange(1, d + 1)
    return M.tocsr()


def targets(n=N):
    return np.arange(n, dtype=np.float64) % 2


def collect(stream):
    """Every batch's (rows, dense X, y, cursor), copied (buffers are reused)."""
    with stream as s:
        return [(b.rows.copy(), b.X.toarray() if hasattr(b.X, "toarray") else b.X.copy(),
                 None if b.y is None else b.y.copy(), b.cursor) for b in s]


def store_csr(path, M, y=None, w=None, *, chunk_rows=128, entry_chunk=97):
    """A group holding ``M`` as the CSR group ``X`` (and arrays ``y``, ``w``)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_csr_matrix(g, "X", M, chunk_rows=chunk_rows, entry_chunk=entry_chunk)
    for name, a in (("y", y), ("w", w)):
        if a is not None:
            g.create_array(name, shape=a.shape, chunks=(100,), dtype=a.dtype,
                           config={"write_empty_chunks": True})[...] = a
    return path


# -- rows, order, cursors --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "csr_array", "coo_array"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_are_the_matrix_rows_once_per_epoch(fmt, shuffle):
    M = matrix()
    X = (sp.csr_array(M) if fmt == "csr_array" else sp.coo_array(M) if fmt == "coo_array"
         else M.asformat(fmt))
    y = targets()
    source = as_source((X, y))
    assert isinstance(source, SparseSource)
    assert source.n_rows == N and source.has_targets
    got = collect(SparseSource(X, y, chunk_rows=128).batches(batch_size=64, epochs=2, seed=4,
                                                             shuffle=shuffle))
    rows = np.concatenate([r for r, *_ in got])
    assert len(rows) == 2 * N
    for epoch in (rows[:N], rows[N:]):
        assert np.array_equal(np.sort(epoch), np.arange(N))
    for r, Xb, yb, _ in got:
        assert np.array_equal(Xb, M[r].toarray())
        assert np.array_equal(yb, y[r])
    assert (rows[:N] != np.arange(N)).any() == shuffle


def test_order_is_that_of_dense_data_and_reproducible_by_seed():
    M, y = matrix(), targets()
    dense = ArraySource(M.toarray(), y, chunk_rows=128)
    sparse = SparseSource(M, y, chunk_rows=128)
    kw = dict(batch_size=50, epochs=2, chunks_per_read=3, seed=9)
    a = collect(sparse.batches(**kw))
    b = collect(dense.batches(**kw))
    assert [list(r) for r, *_ in a] == [list(r) for r, *_ in b]
    assert [c for *_, c in a] == [c for *_, c in b]
    again = collect(sparse.batches(**kw))
    assert all(np.array_equal(r1, r2) for (r1, *_), (r2, *_) in zip(a, again, strict=True))
    other = collect(sparse.batches(**{**kw, "seed": 10}))
    assert not np.array_equal(np.concatenate([r for r, *_ in a]),
                              np.concatenate([r for r, *_ in other]))


def test_resume_from_any_cursor_equals_the_uninterrupted_stream():
    M, y = matrix(), targets()
    source = SparseSource(M, y, chunk_rows=100)
    kw = dict(batch_size=37, epochs=2, chunks_per_read=2, seed=1)
    full = collect(source.batches(**kw))
    for i in (0, 3, 13, len(full) // 2, len(full) - 2):
        rest = collect(source.batches(**kw, start=full[i][3]))
        assert len(rest) == len(full) - i - 1
        for (r1, X1, y1, c1), (r2, X2, y2, c2) in zip(full[i + 1:], rest, strict=True):
            assert np.array_equal(r1, r2) and np.array_equal(X1, X2) and c1 == c2
            assert np.array_equal(y1, y2)


def test_batches_carry_canonical_sparse_rows():
    M = matrix().astype(np.int64)  # integer counts: float64 values, int32 indices
    source = SparseSource(M, chunk_rows=100)
    with source.batches(batch_size=100, shuffle=False) as s:
        b = next(iter(s))
    assert b.X.dtype == np.float64 and b.X.indices.dtype == np.int32
    assert b.X.indptr.dtype == np.int64 and b.X.shape == (100, D)
    assert source.x_dtype == np.float64 and source.n_features == D


def test_read_buffers_are_sized_by_entries_within_the_budget():
    M = matrix(density=0.05)
    M = sp.vstack([M, sp.random(200, D, density=0.9, format="csr", random_state=2)]).tocsr()
    source = SparseSource(M, chunk_rows=100)
    assert source.chunk_entries.sum() == M.nnz
    assert source.read_entries(1) == max(source.chunk_entries)
    wide = source.read_plan(chunks_per_read=8, prefetch=4, read_buffer_bytes=None)
    small = source.read_plan(chunks_per_read=8, prefetch=4,
                             read_buffer_bytes=wide.nbytes // 4)
    assert small.nbytes <= wide.nbytes // 4
    assert (small.chunks_per_read, small.prefetch) < (8, 4)
    rows = np.concatenate([r for r, *_ in collect(source.batches(
        batch_size=64, chunks_per_read=8, prefetch=4, read_buffer_bytes=wide.nbytes // 4))])
    assert np.array_equal(np.sort(rows), np.arange(M.shape[0]))


def test_a_shuffled_stream_counts_the_read_it_permutes_in_its_plan():
    """A shuffled read is staged in one of two more read buffers and permuted into the
    pooled one beside the learner (the batches are then views): the plan counts them, and
    the batches are the read's rows in the documented permuted order.
    """
    M, y = matrix(), targets()
    source = SparseSource(M, y, chunk_rows=100)
    one_read = source.plan_bytes(2, 2, 64, False) - source.plan_bytes(2, 1, 64, False)
    assert source.plan_bytes(2, 1, 64, True) - source.plan_bytes(2, 1, 64, False) \
        == 2 * one_read
    assert source.plan_bytes(2, 1, 64, True) == source.plan_bytes(2, 1, 4096, True)
    with source.batches(batch_size=64, chunks_per_read=2, prefetch=1, seed=3) as s:
        got = [(b.X.toarray(), b.y.copy(), b.rows.copy()) for b in s]  # buffers reused
    rows = np.concatenate([r for *_, r in got])
    assert np.array_equal(np.sort(rows), np.arange(N))
    dense = M.toarray()
    for X, yb, r in got:
        assert np.array_equal(X, dense[r]) and np.array_equal(yb, y[r])


def test_a_shuffled_stream_left_early_ends_its_reading_and_permuting_threads():
    import threading
    import time

    source = SparseSource(matrix(), targets(), chunk_rows=100)
    with source.batches(batch_size=10, chunks_per_read=1, prefetch=1, epochs=3) as s:
        first = next(iter(s))
        assert first.X.shape[0] == 10
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            t.name.startswith(("natgrad-permute", "natgrad-reader"))
            for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("natgrad-permute", "natgrad-reader"))]


# -- Zarr CSR groups ------------------------------------------------------------------------
def test_zarr_csr_group_reads_as_the_matrix(tmp_path):
    M, y = matrix(), targets()
    w = np.linspace(0.5, 2.0, N)
    store_csr(tmp_path / "d.zarr", M, y, w)
    source = open_zarr(tmp_path / "d.zarr", w="w")
    assert isinstance(source, SparseSource) and source.chunk_rows == 128
    assert (source.n_rows, source.n_features) == (N, D)
    kw = dict(batch_size=64, epochs=1, seed=2, chunks_per_read=2)
    memory = collect(SparseSource(M, y, w, chunk_rows=128).batches(**kw))
    stored = collect(source.batches(**kw))
    for (r1, X1, y1, c1), (r2, X2, y2, c2) in zip(memory, stored, strict=True):
        assert np.array_equal(r1, r2) and np.array_equal(X1, X2)
        assert np.array_equal(y1, y2) and c1 == c2


@pytest.mark.parametrize("part", ["data", "indices"])
def test_missing_entry_chunk_is_one_error_naming_array_chunk_and_row(tmp_path, part):
    M = matrix()
    store_csr(tmp_path / "d.zarr", M, targets())
    (tmp_path / "d.zarr" / "X" / part / "c" / "3").unlink()
    source = open_zarr(tmp_path / "d.zarr")
    with pytest.raises(DataError) as info:
        collect(source.batches(batch_size=64, shuffle=False))
    err = info.value
    assert err.array == f"X/{part}" and "missing from the store" in str(err)
    entry = 3 * 97  # the first entry of the missing chunk
    row = int(np.searchsorted(M.indptr, entry, side="right")) - 1
    assert (err.row, err.chunk) == (row, row // 128)


def test_missing_indptr_chunk_is_refused_when_opened(tmp_path):
    store_csr(tmp_path / "d.zarr", matrix(), targets())
    (tmp_path / "d.zarr" / "X" / "indptr" / "c" / "2").unlink()
    with pytest.raises(DataError) as info:
        open_zarr(tmp_path / "d.zarr")
    assert info.value.array == "X/indptr" and info.value.row == 256


def bad_arrays(kind):
    M = matrix()
    data, indices, indptr = M.data.copy(), M.indices.copy(), M.indptr.copy()
    row = 301
    if kind == "index":
        indices[indptr[row] + 1] = D
    elif kind == "negative index":
        indices[indptr[row]] = -1
    elif kind == "nan":
        data[indptr[row] + 1] = np.nan
    elif kind == "decreasing":
        indptr[row + 1] = indptr[row] - 1
    elif kind == "past the end":
        indptr[row + 1:] = len(data) + 5
    return CSRArrays(data, indices, indptr, M.shape), row


@pytest.mark.parametrize("kind,array,text", [
    ("index", "X/indices", f"outside [0, {D})"),
    ("negative index", "X/indices", "column index -1"),
    ("nan", "X/data", "non-finite"),
    ("decreasing", "X/indptr", "decreases"),
    ("past the end", "X/indptr", "past the"),
])
def test_bad_values_are_one_error_naming_array_chunk_and_row(kind, array, text):
    arrays, row = bad_arrays(kind)
    source = SparseSource(arrays, targets(), chunk_rows=100)
    with pytest.raises(DataError) as info:
        collect(source.batches(batch_size=64, shuffle=False))
    err = info.value
    assert (err.array, err.chunk, err.row) == (array, 3, row) and text in str(err)


def test_an_iterable_of_sparse_batches_is_checked_and_delivered_as_sparse_rows():
    M, y = matrix(), targets()
    items = [(M[:300], y[:300]), (M[300:].tocoo(), y[300:])]
    source = as_source(iter(items))
    got = collect(source.batches(batch_size=128))
    assert np.array_equal(np.vstack([X for _, X, _, _ in got]), M.toarray())
    assert np.array_equal(np.concatenate([yb for *_, yb, _ in got]), y)
    bad = M.copy()
    bad.data[bad.indptr[250]] = np.inf
    with pytest.raises(DataError, match="batch 0 row 250 column .*non-finite"):
        collect(as_source(iter([(bad, y)])).batches(batch_size=128))


def test_shape_mismatches_are_refused(tmp_path):
    M = matrix()
    with pytest.raises(DataError, match="has 999 rows"):
        SparseSource(M, targets()[:-1])
    with pytest.raises(DataError, match="rows \\+ 1"):
        CSRArrays(M.data, M.indices, M.indptr[:-1], M.shape)
    store_csr(tmp_path / "d.zarr", M, targets())
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r+")
    g["X"].attrs["shape"] = [N + 1, D]
    with pytest.raises(DataError, match="X/indptr"):
        open_zarr(tmp_path / "d.zarr")
    g["X"].attrs["shape"] = [N, D]
    g["X"].attrs["encoding-type"] = "csc_matrix"
    with pytest.raises(DataError, match="CSC"):
        open_zarr(tmp_path / "d.zarr")


def test_a_changed_chunk_is_refused_by_the_digests():
    M, y = matrix(), targets()
    digests = ChunkDigests()
    collect(SparseSource(M, y, chunk_rows=100).batches(batch_size=64, digests=digests))
    assert len(digests) == 10
    again = collect(SparseSource(M.copy(), y, chunk_rows=100).batches(batch_size=64,
                                                                      digests=digests))
    assert sum(len(r) for r, *_ in again) == N
    for change in ("value", "column", "y"):
        M2, y2 = M.copy(), y.copy()
        k = M2.indptr[420] + 1
        if change == "value":
            M2.data[k] += 1.0
        elif change == "column":
            M2.indices[k] = (M2.indices[k] + 1) % D
            M2.sort_indices()
        else:
            y2[420] = 1 - y2[420]
        with pytest.raises(DataError, match="changed after the run read them") as info:
            collect(SparseSource(M2, y2, chunk_rows=100).batches(batch_size=64,
                                                                 digests=digests))
        assert info.value.chunk == 4
        assert info.value.array == ("y" if change == "y" else "X")


# -- AnnData stores ---------------------------------------------------------------------------
def anndata_store(path, M, labels, categories):
    """A store in AnnData's layout: X and layers/counts CSR, obs columns, obsm/X_pca."""
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    write_csr_matrix(g, "X", M, chunk_rows=128)
    layers = g.create_group("layers", attributes={"encoding-type": "dict",
                                                   "encoding-version": "0.1.0"})
    write_csr_matrix(layers, "counts", M * 2, chunk_rows=128)
    obs = g.create_group("obs", attributes={
        "encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index",
        "column-order": ["cell_type", "n_genes"]})
    cat = obs.create_group("cell_type", attributes={
        "encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
    cat.create_array("codes", shape=(M.shape[0],), chunks=(100,), dtype="int8",
                     config={"write_empty_chunks": True})[...] = labels
    names = cat.create_array("categories", shape=(len(categories),), dtype=str)
    names[...] = np.array(categories, dtype=object)  # variable-length strings, as anndata
    obs.create_array("n_genes", shape=(M.shape[0],), chunks=(100,), dtype="int32",
                     config={"write_empty_chunks": True})[...] = np.diff(M.indptr)
    obsm = g.create_group("obsm", attributes={"encoding-type": "dict",
                                               "encoding-version": "0.1.0"})
    obsm.create_array("X_pca", shape=(M.shape[0], 5), chunks=(100, 5), dtype="float32",
                      config={"write_empty_chunks": True})[...] = M[:, :5].toarray()
    return path


def test_anndata_store_members_and_categorical_class_names(tmp_path):
    M = matrix()
    labels = (np.arange(N) % 3).astype(np.int8)
    path = anndata_store(tmp_path / "cells.zarr", M, labels, ["B cell", "T cell", "NK"])
    source = open_zarr(path, x="X", y="obs/cell_type")
    assert isinstance(source, SparseSource)
    assert source.class_names == ["B cell", "T cell", "NK"]
    for r, Xb, yb, _ in collect(source.batches(batch_size=100, seed=1)):
        assert np.array_equal(Xb, M[r].toarray()) and np.array_equal(yb, labels[r])
    counts = open_zarr(path, x="layers/counts", y="obs/n_genes")
    for r, Xb, yb, _ in collect(counts.batches(batch_size=100, shuffle=False)):
        assert np.array_equal(Xb, 2 * M[r].toarray())
        assert np.array_equal(yb, np.diff(M.indptr)[r])
    pca = open_zarr(path, x="obsm/X_pca", y="obs/cell_type")
    assert isinstance(pca, ArraySource) and pca.class_names == source.class_names
    assert sum(len(r) for r, *_ in collect(pca.batches(batch_size=256))) == N


def test_a_missing_category_is_one_error_naming_column_and_row(tmp_path):
    M = matrix()
    labels = (np.arange(N) % 2).astype(np.int8)
    labels[555] = -1
    path = anndata_store(tmp_path / "cells.zarr", M, labels, ["a", "b"])
    for x in ("X", "obsm/X_pca"):
        with pytest.raises(DataError, match="missing value") as info:
            collect(open_zarr(path, x=x, y="obs/cell_type").batches(batch_size=64))
        assert (info.value.array, info.value.row) == ("obs/cell_type", 555)


# -- make-data --density ------------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "natgrad_stream", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("task", ["logistic", "softmax"])
def test_make_data_density_round_trip(tmp_path, task):
    path = tmp_path / "s.zarr"
    run = cli("make-data", str(path), "--task", task, "--rows", "3000", "--features",
              "20000", "--density", "0.001", "--chunk-rows", "512", "--test-rows", "300")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["nonzeros_per_row"] == 20 and summary["density"] == 0.001
    g = zarr.open_group(str(path), mode="r")
    assert g["X"].attrs["encoding-type"] == "csr_matrix"
    assert g["X"].attrs["shape"] == [3000, 20000]
    source = open_zarr(path)
    assert isinstance(source, SparseSource) and source.chunk_rows == 512
    assert source.x_dtype == np.float32
    rows = []
    for b in source.batches(batch_size=1000, shuffle=False):
        counts = np.diff(b.X.indptr)
        assert (counts == 20).all()  # 0.001 × 20,000 non-zeros in every row
        for i in range(len(b.rows)):
            cols = b.X.indices[b.X.indptr[i]:b.X.indptr[i + 1]]
            assert len(np.unique(cols)) == 20
        rows.append(b.y.copy())
    y = np.concatenate(rows)
    assert set(np.unique(y)) <= ({0, 1} if task == "logistic" else {0, 1, 2})
    assert len(set(np.unique(y))) > 1
    coef = g["true_coef"][...]
    assert coef.shape == ((3, 20000) if task == "softmax" else (20000,))
    test = open_zarr(path, x="X_test", y="y_test")
    assert test.n_rows == 300
    # the same seed writes the same data
    again = tmp_path / "again.zarr"
    assert cli("make-data", str(again), "--task", task, "--rows", "3000", "--features",
               "20000", "--density", "0.001", "--chunk-rows", "512").returncode == 0
    assert np.array_equal(zarr.open_group(str(again))["X/data"][...], g["X/data"][...])


def test_make_data_density_refuses_other_tasks_and_bad_fractions(tmp_path):
    for args, text in ((("--task", "ica", "--density", "0.1"), "--density applies"),
                       (("--task", "logistic", "--density", "0"), "must be in (0, 1]")):
        run = cli("make-data", str(tmp_path / "x.zarr"), "--rows", "10", "--features", "10",
                  *args)
        assert run.returncode == 2 and text in run.stderr
        assert len(run.stderr.strip().splitlines()) <= 2


# -- appends and follow mode ----------------------------------------------------------------------
def empty_sparse_store(path, d=30):
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_csr_matrix(g, "X", sp.csr_matrix((0, d), dtype=np.float32), chunk_rows=50,
                     entry_chunk=64)
    g.create_array("y", shape=(0,), chunks=(50,), dtype="uint8",
                   config={"write_empty_chunks": True})
    return path


def new_rows(i, n=37, d=30):
    M = sp.random(n, d, density=0.2, format="csr", random_state=i, dtype=np.float32)
    return M, (np.arange(n) % 2).astype(np.uint8)


def test_append_sparse_rows_then_follow_and_read_them(tmp_path):
    from natgrad_stream.data import FollowSource, append_rows

    path = empty_sparse_store(tmp_path / "f.zarr")
    parts = [new_rows(i) for i in range(4)]
    for i, (M, y) in enumerate(parts):
        fmt = ("csr", "coo", "csc", "dense")[i]
        rows = M.toarray() if fmt == "dense" else M.asformat(fmt)
        assert append_rows(path, X=rows, y=y) == 37 * (i + 1)
    full = sp.vstack([M for M, _ in parts]).tocsr()
    g = zarr.open_group(str(path), mode="r")
    assert g["X"].attrs["shape"] == [148, 30]
    assert g.attrs["natgrad_stream"]["committed_rows"] == 148
    digests = ChunkDigests()
    follow = FollowSource(path, idle_timeout=0.2, poll_seconds=0.05)
    got = collect(follow.batches(batch_size=16, digests=digests))
    assert np.array_equal(np.concatenate([r for r, *_ in got]), np.arange(148))
    y = np.concatenate([y for _, y in parts])
    for r, Xb, yb, _ in got:
        assert np.array_equal(Xb, full[r].toarray()) and np.array_equal(yb, y[r])
    # the stored group reads as the same rows, and its content digests agree
    stored = collect(open_zarr(path).batches(batch_size=16, seed=3, digests=digests))
    for r, Xb, *_ in stored:
        assert np.array_equal(Xb, full[r].toarray())


def test_follow_learns_sparse_rows_as_they_are_appended(tmp_path):
    import threading
    import time

    from natgrad_stream.data import FollowSource, append_rows

    path = empty_sparse_store(tmp_path / "f.zarr")
    parts = [new_rows(i, n=23) for i in range(5)]

    def writer():
        for M, y in parts:
            append_rows(path, X=M, y=y)
            time.sleep(0.05)

    follow = FollowSource(path, idle_timeout=1.0, poll_seconds=0.02, shuffle_window=20)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        got = collect(follow.batches(batch_size=8, seed=2))
    finally:
        thread.join()
    full = sp.vstack([M for M, _ in parts]).tocsr()
    rows = np.concatenate([r for r, *_ in got])
    assert np.array_equal(np.sort(rows), np.arange(115))
    for r, Xb, *_ in got:
        assert np.array_equal(Xb, full[r].toarray())


def test_bad_sparse_appends_are_refused_before_anything_is_written(tmp_path):
    from natgrad_stream.data import append_rows

    path = empty_sparse_store(tmp_path / "f.zarr")
    M, y = new_rows(0)
    append_rows(path, X=M, y=y)
    with pytest.raises(DataError, match="31 features"):
        append_rows(path, X=sp.random(3, 31, density=0.5, format="csr"), y=y[:3])
    bad = sp.csr_matrix((np.ones(2, np.float32), np.array([1, 30]), np.array([0, 1, 2])),
                        shape=(2, 30))
    bad.indices[1] = 30  # scipy would not build it: an index past the features
    with pytest.raises(DataError, match="outside \\[0, 30\\)") as info:
        append_rows(path, X=bad, y=y[:2])
    assert info.value.array == "X/indices"
    g = zarr.open_group(str(path), mode="r")
    assert g["X"].attrs["shape"] == [37, 30]
    assert g.attrs["natgrad_stream"]["committed_rows"] == 37


def test_run_identity_names_the_csr_arrays_and_their_appends(tmp_path):
    from natgrad_stream.data import append_rows
    from natgrad_stream.data.identity import compare_identity, data_identity

    path = store_csr(tmp_path / "d.zarr", matrix(), targets())
    before = data_identity(path, ("X", "y", None))
    assert set(before["arrays"]) == {"X/data", "X/indices", "X/indptr", "y"}
    M, _ = new_rows(1, n=10, d=D)
    append_rows(path, X=M, y=np.zeros(10))
    after = data_identity(path, ("X", "y", None),
                          head_rows={k: v["head_rows"] for k, v in before["arrays"].items()})
    differences, notes = compare_identity(before, after)
    assert not differences and any("X/indptr" in n and "appended" in n for n in notes)
    g = zarr.open_group(str(path), mode="r+")
    g["X/data"][:3] = -1.0
    with pytest.raises(DataError, match="is not the chunk written there"):  # its manifest
        data_identity(path, ("X", "y", None))
    from natgrad_stream.data.manifest import write_manifest

    write_manifest(path / "X", ["data"])  # the change recorded on purpose: other values
    changed = data_identity(path, ("X", "y", None))
    assert any("X/data" in d for d in compare_identity(before, changed)[0])


# -- windows of chunks and row prefixes (L-BFGS windows, epochs planned before appends) --------
def test_chunk_windows_and_prefixes_read_as_those_of_dense_data():
    from natgrad_stream.data.window import chunk_window, row_prefix

    M, y = matrix(), targets()
    sparse, dense = SparseSource(M, y, chunk_rows=128), ArraySource(M.toarray(), y,
                                                                    chunk_rows=128)
    kw = dict(batch_size=50, epochs=2, chunks_per_read=2, seed=7)
    for make in (lambda s: chunk_window(s, np.array([1, 4, 5, 7])),
                 lambda s: chunk_window(chunk_window(s, np.array([0, 2, 3, 6, 7])),
                                        np.array([1, 4])),
                 lambda s: row_prefix(s, 700)):
        a, b = make(sparse), make(dense)
        assert a.n_rows == b.n_rows
        assert list(a.chunk_index if a.chunk_index is not None else []) == \
            list(b.chunk_index if b.chunk_index is not None else [])
        got, want = collect(a.batches(**kw)), collect(b.batches(**kw))
        for (r1, X1, y1, c1), (r2, X2, y2, c2) in zip(got, want, strict=True):
            assert np.array_equal(r1, r2) and np.array_equal(X1, X2)
            assert np.array_equal(y1, y2) and c1 == c2


def test_window_errors_and_digests_are_those_of_the_data_chunks():
    from natgrad_stream.data.window import chunk_window, locate_in_full_data

    arrays, row = bad_arrays("nan")  # row 301: chunk 3 of 100-row chunks
    source = SparseSource(arrays, targets(), chunk_rows=100)
    chunks = np.array([1, 3, 8])
    with pytest.raises(DataError) as info:
        collect(chunk_window(source, chunks).batches(batch_size=64, shuffle=False))
    assert (info.value.chunk, info.value.row) == (1, 100 + row - 300)  # in the window
    full = locate_in_full_data(info.value, chunks, 100)
    assert (full.array, full.chunk, full.row) == ("X/data", 3, row)
    digests = ChunkDigests()
    collect(chunk_window(SparseSource(matrix(), targets(), chunk_rows=100),
                         chunks).batches(batch_size=64, digests=digests))
    assert [c for c in range(10) if digests.recorded(c)] == [1, 3, 8]


def test_aligned_chunks_are_decoded_directly_and_missing_ones_named(tmp_path):
    from natgrad_stream.data.sparse_writer import make_sparse_dataset

    path = tmp_path / "s.zarr"
    make_sparse_dataset(path, task="linear", rows=2000, features=500, density=0.02,
                        chunk_rows=512, seed=1)
    source = open_zarr(path)
    assert all(d is not None and d.covers(512 * 10, 1024 * 10) for d in source.csr.direct[:2])
    zarr_rows = zarr.open_group(str(path), mode="r")
    data, indptr = zarr_rows["X/data"][...], zarr_rows["X/indptr"][...]
    for r, Xb, *_ in collect(source.batches(batch_size=300, seed=4)):
        for i, row in enumerate(r):
            values = data[indptr[row]:indptr[row + 1]]
            assert np.array_equal(np.sort(Xb[i][Xb[i] != 0]), np.sort(values))
    (path / "X" / "data" / "c" / "2").unlink()
    with pytest.raises(DataError, match="missing from the store") as info:
        collect(open_zarr(path).batches(batch_size=300, shuffle=False))
    assert (info.value.array, info.value.chunk, info.value.row) == ("X/data", 2, 1024)


def test_targets_and_weights_are_checked_as_for_dense_data():
    M, y = matrix(), targets()
    w = np.ones(N)
    w[640] = -1.0
    with pytest.raises(DataError, match="negative sample weight") as info:
        collect(SparseSource(M, y, w, chunk_rows=100).batches(batch_size=64, shuffle=False))
    assert (info.value.array, info.value.chunk, info.value.row) == ("w", 6, 640)
    y2 = y.copy()
    y2[12] = np.nan
    with pytest.raises(DataError, match="non-finite") as info:
        collect(SparseSource(M, y2, chunk_rows=100).batches(batch_size=64, shuffle=False))
    assert (info.value.array, info.value.row) == ("y", 12)
    # a handler on the package's logger itself: the CLI tests may stop its propagation
    seen, logger = _Records(), logging.getLogger("natgrad_stream")
    logger.addHandler(seen)
    try:
        rows = collect(SparseSource(M, y, chunk_rows=500).batches(
            batch_size=64, read_buffer_bytes=1000))
    finally:
        logger.removeHandler(seen)
    assert sum(len(r) for r, *_ in rows) == N
    assert any("too large for read_buffer_bytes" in m for m in seen.messages)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_permute_csr_rows_equals_scipy_row_indexing():
    """A shuffled read's permutation (rows copied in stored order to their places) is
    SciPy's ``X[perm]``, with empty rows, uneven lengths and ``indptr[0] != 0``.
    """
    from natgrad_stream.data._sparse_kernels import permute_csr_rows

    rng = np.random.default_rng(11)
    X = sp.random(500, 40, density=0.08, format="csr", random_state=3, dtype=np.float32)
    X = (sp.diags((np.arange(500) != 27).astype(np.float32)) @ X).tocsr()  # an empty row
    X.eliminate_zeros()
    perm = rng.permutation(X.shape[0] - 20)
    # rows 20: of X as a view whose indptr does not start at 0
    indptr = X.indptr[20:].astype(np.int64)
    assert indptr[0] != 0 and (np.diff(indptr) == 0).any()
    out_data = np.full(X.nnz, np.nan, np.float32)
    out_indices = np.full(X.nnz, -1, np.int32)
    out_indptr = np.full(perm.size + 1, -1, np.int64)
    e = permute_csr_rows(X.data, X.indices.astype(np.int32), indptr, perm, out_data,
                         out_indices, out_indptr)
    want = X[20:][perm]
    assert e == want.nnz
    np.testing.assert_array_equal(out_indptr, want.indptr)
    np.testing.assert_array_equal(out_indices[:e], want.indices)
    np.testing.assert_array_equal(out_data[:e], want.data)


def test_stored_chunks_misaligned_with_logical_ones_are_decoded_directly(tmp_path,
                                                                          monkeypatch):
    """Entries of a logical chunk that start or end inside a stored chunk are decoded by
    the direct zstd reader too (the part copied from the whole chunk): the batches are the
    in-memory matrix's, and a missing stored chunk is the same error as zarr's path gives.
    """
    from natgrad_stream.data._zstd_direct import DirectChunks

    M, y = matrix(), targets()
    store_csr(tmp_path / "s.zarr", M, y)  # logical chunks of 128 rows, entries by 97
    calls = []
    read_into = DirectChunks.read_into

    def spy(self, a, b, out, lo=None):
        calls.append((self.label, a, b, lo))
        return read_into(self, a, b, out, lo)

    monkeypatch.setattr(DirectChunks, "read_into", spy)
    source = open_zarr(tmp_path / "s.zarr")
    got = collect(source.batches(batch_size=50, seed=3))
    want = collect(SparseSource(M, y, chunk_rows=128).batches(batch_size=50, seed=3))
    assert len(got) == len(want)
    for (r1, x1, y1, c1), (r2, x2, y2, c2) in zip(got, want, strict=True):
        assert np.array_equal(r1, r2) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
        assert c1 == c2
    assert any(label == "X/data" and lo is not None and lo != a for label, a, _, lo in calls)
    (tmp_path / "s.zarr" / "X" / "data" / "c" / "3").unlink()
    errors = []
    for direct in (True, False):
        s = open_zarr(tmp_path / "s.zarr")
        if not direct:
            s.csr.direct = (None, None, None)
        with pytest.raises(DataError, match="missing from the store") as info:
            collect(s.batches(batch_size=50, shuffle=False))
        errors.append((info.value.array, info.value.chunk, info.value.row))
    assert errors[0] == errors[1] and errors[0][0] == "X/data"


def test_prefetch_changes_nothing_and_may_point_past_the_end():
    """The kernels' prefetch hint reads no value into the result and never faults, even
    for an index past the array's end (a row ahead of the last).
    """
    from natgrad_stream._jit import jit
    from natgrad_stream._prefetch import prefetch

    @jit
    def total(a, ahead):
        s = 0.0
        for i in range(a.shape[0]):
            prefetch(a, i + ahead)
            s += a[i]
        return s

    a = np.arange(1000, dtype=np.float64)
    assert total(a, 10_000_000) == a.sum() == total(a, 0)
