"""The sparse benchmark's data and scoring (``scripts/sparse_bench_data.py``,
``scripts/sparse_bench.py``): the AnnData CSR layout written chunk by chunk reads back as the
matrix written, and the one scorer every run is judged by agrees with an in-memory formula.
"""

import time

import numpy as np
import pytest
import scipy.sparse as sp
import zarr


@pytest.fixture(scope="module")
def sbd(load_script):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        return load_script("sparse_bench_data")
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def bench(load_script, sbd):
    return load_script("sparse_bench")


def _random_csr(rng, n, d, density):
    return sp.random(n, d, density=density, format="csr", random_state=rng,
                     dtype=np.float32)


def test_csr_writer_round_trips_across_chunk_boundaries(sbd, tmp_path):
    rng = np.random.default_rng(0)
    M = _random_csr(rng, 300, 40, 0.2)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    w = sbd.CsrWriter(g, "X", 40, chunk_nnz=97)  # appends straddle chunk boundaries
    for a in range(0, 300, 37):
        block = M[a:a + 37]
        w.append(block.data, block.indices, np.diff(block.indptr))
    assert w.close() == {"n": 300, "d": 40, "nnz": M.nnz}
    x = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["X"]
    assert dict(x.attrs) == {"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                             "shape": [300, 40]}
    assert (x["data"].dtype, x["indices"].dtype, x["indptr"].dtype) == (
        np.float32, np.int32, np.int64)
    assert x["data"].chunks == (97,) and x["data"].shape == (M.nnz,)
    np.testing.assert_array_equal(sbd.load_csr(x).toarray(), M.toarray())
    np.testing.assert_array_equal(sbd.csr_rows(x, 50, 120).toarray(), M[50:120].toarray())
    blocks = [X.toarray() for _, _, X in sbd.iter_csr(x, 64)]
    np.testing.assert_array_equal(np.vstack(blocks), M.toarray())


def test_writer_refuses_counts_that_do_not_add_up(sbd, tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    w = sbd.CsrWriter(g, "X", 5)
    with pytest.raises(ValueError, match="row counts"):
        w.append(np.ones(3), np.arange(3), [1, 1])


def test_logistic_measures_match_the_in_memory_formula(sbd, tmp_path):
    rng = np.random.default_rng(1)
    M = _random_csr(rng, 500, 30, 0.3)
    y = (rng.random(500) < 0.4).astype(np.float32)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    w = sbd.CsrWriter(g, "X", 30, chunk_nnz=128)
    w.append(M.data, M.indices, np.diff(M.indptr))
    w.close()
    coef, b, lam = rng.normal(size=30), 0.3, 1e-2
    got = sbd.logistic_measures(g["X"], y, coef, b, lam, block=70)
    z = M.toarray().astype(np.float64) @ coef + b
    p = 1 / (1 + np.exp(-z))
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert got["log_loss"] == pytest.approx(loss, rel=1e-12)
    assert got["objective"] == pytest.approx(loss + lam / 2 * coef @ coef, rel=1e-12)
    assert got["accuracy"] == np.mean((z > 0) == (y > 0.5))
    with pytest.raises(ValueError, match="31 features|shape"):
        sbd.logistic_measures(g["X"], y, np.zeros(31), 0.0, lam)


def test_softmax_measures_read_k_minus_1_rows_with_class_0_at_zero(sbd, tmp_path):
    rng = np.random.default_rng(2)
    M = _random_csr(rng, 200, 12, 0.4)
    y = rng.integers(0, 4, size=200)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    w = sbd.CsrWriter(g, "X", 12)
    w.append(M.data, M.indices, np.diff(M.indptr))
    w.close()
    W, b = rng.normal(size=(3, 12)), rng.normal(size=3)
    short = sbd.softmax_measures(g["X"], y, W, b, 4)
    full = sbd.softmax_measures(g["X"], y, np.vstack([np.zeros(12), W]), np.r_[0.0, b], 4)
    assert short == full
    Z = np.hstack([np.zeros((200, 1)), M.toarray() @ W.T + b])
    ll = np.mean(np.logaddexp.reduce(Z, axis=1) - Z[np.arange(200), y])
    assert short["log_loss"] == pytest.approx(ll, rel=1e-12)


def test_synthetic_store_has_distinct_sorted_columns_and_is_reused(sbd, tmp_path):
    path = tmp_path / "syn.zarr"
    info = sbd.synthetic_logistic(path, rows=3000, features=500, nnz=20, test_rows=400)
    assert (info["n"], info["d"], info["nnz_total"], info["n_test"]) == (3000, 500, 60_000, 400)
    g = zarr.open_group(str(path), mode="r")
    X = sbd.load_csr(g["X"])
    assert np.all(np.diff(X.indptr) == 20)
    cols = X.indices.reshape(3000, 20)
    assert np.all(np.diff(cols, axis=1) > 0) and cols.min() >= 0 and cols.max() < 500
    y = g["y"][:]
    assert set(np.unique(y)) == {0.0, 1.0} and g["y_test"].shape == (400,)
    stamp = (path / "X" / "data" / "zarr.json").stat().st_mtime_ns
    assert sbd.synthetic_logistic(path, rows=3000, features=500, nnz=20,
                                  test_rows=400) == info
    assert (path / "X" / "data" / "zarr.json").stat().st_mtime_ns == stamp


def test_cells_store_is_anndata_like_with_the_chosen_sparsity(sbd, tmp_path):
    path = tmp_path / "cells.zarr"
    info = sbd.cells(path, cells=3000, genes=2000, types=8, nnz=40, test_cells=300)
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["encoding-type"] == "anndata"
    X = sbd.load_csr(g["X"])
    assert X.shape == (3000, 2000)
    assert 35 < X.nnz / 3000 < 45 and info["nnz_per_cell"] == X.nnz / 3000
    assert X.data.min() > 0  # log1p of positive counts: every stored value is a count ≥ 1
    ct = g["obs/cell_type"]
    assert ct.attrs["encoding-type"] == "categorical"
    np.testing.assert_array_equal(ct["codes"][:], g["y"][:])
    assert list(ct["categories"][:]) == [f"type_{t:02d}" for t in range(8)]
    assert g["obs"].attrs["column-order"] == ["cell_type"]
    assert len(np.unique(g["y"][:])) == 8
    # types differ in their mean profile: a type's centroid is nearest its own rows' mean
    Xd, yy = X.toarray(), g["y"][:]
    cent = np.vstack([Xd[yy == t].mean(axis=0) for t in range(8)])
    Xt = sbd.load_csr(g["X_test"]).toarray()
    pred = np.argmin(((Xt[:, None, :] - cent[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(pred == g["y_test"][:]) > 0.5


def test_vw_table_keeps_features_off_the_constant_slot(bench):
    for d in (4_191, 100_000, 116_061, 1_000_000):
        b = bench.vw_bits(d)
        assert (1 << b) >= d and (bench.VW_CONSTANT & ((1 << b) - 1)) >= d
    assert bench.vw_bits(100_000) == 18 and bench.vw_bits(1_000_000) == 21


@pytest.fixture(scope="module")
def gap(load_script, sbd):
    return load_script("one_pass_gap")


def test_one_pass_gap_finds_the_scale_a_shrunk_model_lacks(gap):
    # labels drawn from a logistic model whose logit is 2·z: the coefficients z, scored
    # as they are, lack a factor 2 that the held-out rescaling finds (to sampling error)
    rng = np.random.default_rng(0)
    n, d = 20_000, 30
    X = sp.csr_matrix(rng.standard_normal((n, d)))
    w = rng.normal(0.0, 0.5, size=d)
    z = X @ w
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(2.0 * z - 0.3)))).astype(np.float64)
    s, b, loss = gap.best_scale(X, y, w, 0.0)
    assert s == pytest.approx(2.0, rel=0.1) and b == pytest.approx(-0.3, abs=0.1)
    u = s * z + b
    assert loss == pytest.approx(np.mean(np.logaddexp(0.0, u) - y * u), rel=1e-12)
    assert loss < np.mean(np.logaddexp(0.0, z) - y * z)


def test_sparse_rate_reports_the_pass_beside_the_raw_read(load_script, sbd, tmp_path,
                                                          monkeypatch):
    """``scripts/sparse_rate.py`` on a small store: one round's one pass (all the rows,
    the same running loss as a second round: the same steps) beside the raw read of the
    same store, their ratio, and the fit's CPU with the learner's thread named.
    """
    import json
    import os
    import threading

    import natgrad_stream._malloc

    rate = load_script("sparse_rate")
    monkeypatch.setattr(natgrad_stream._malloc, "keep_freed_buffers", lambda: None)
    path = tmp_path / "syn.zarr"
    sbd.synthetic_logistic(path, rows=3000, features=500, nnz=20, test_rows=400)
    assert rate.main([str(path), "--rounds", "2", "--json", str(tmp_path / "r.json")]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    # fit options after "--", as the docstring shows, reach the fit
    assert rate.main([str(path), "--rounds", "1", "--json", str(tmp_path / "b.json"), "--",
                      "--batch-size", "512"]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["extra"] == ["--batch-size", "512"]
    first, second = out["rounds"]
    assert first["rows_per_s"] == pytest.approx(3000 / first["fit_seconds"])
    assert first["x_raw_read"] == pytest.approx(first["rows_per_s"]
                                                / first["raw_rows_per_s"])
    assert first["running_loss"] == second["running_loss"]
    if not os.path.isdir("/proc/self/task"):
        return  # (the CPU split reads Linux's /proc)
    assert first["cpu"]["learner"] > 0
    # a thread of a named role is counted under it
    with rate.ThreadCPU() as cpu:
        def spin(seconds=0.5):  # long enough for several of the monitor's 50 ms samples
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sum(i * i for i in range(10_000))

        t = threading.Thread(target=spin, name="natgrad-permute[test]_0")
        t.start()
        t.join()
    assert cpu.split().get("permute", 0.0) > 0


def test_sparse_floor_measures_the_parts_of_a_pass(load_script, sbd, tmp_path):
    """``scripts/sparse_floor.py`` on a small store: the kernel-alone pass computes the
    logistic loss of every row (NumPy reference), the readers deliver every row in both
    orders, and the bound is the raw read's wall over (raw CPU + kernel CPU) / cores.
    """
    import json

    floor = load_script("sparse_floor")
    path = tmp_path / "syn.zarr"
    sbd.synthetic_logistic(path, rows=3000, features=500, nnz=20, test_rows=400)
    k = floor.KernelPass(path)
    X = sbd.load_csr(zarr.open_group(str(path), mode="r")["X"])
    assert k.n == X.shape[0] == 3000 and k.indptr[-1] == X.nnz
    terms = k.data.astype(np.float64) * k.theta[k.indices]  # (every row has 20 entries)
    zs = np.add.reduceat(terms, k.indptr[:-1]) + k.theta[-1]
    want = np.sum(np.logaddexp(0.0, zs) - k.y * zs)
    for b in (256, 3000):  # (the batch size changes only the order of the sum)
        assert k.run(b) == pytest.approx(want, rel=1e-12)
    assert floor.reader(path, 512, True) == floor.reader(path, 512, False) == 3000
    out = tmp_path / "f.json"
    assert floor.main([str(path), "--rounds", "1", "--batch-sizes", "256,1024", "--cores",
                       "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    r = res["rounds"][0]
    assert set(r["kernel"]) == {"256", "1024"} and r["raw_cpu"] > 0
    assert res["bound"]["256"] == pytest.approx(
        r["raw_wall"] / ((r["raw_cpu"] + r["kernel"]["256"]["cpu"]) / 2))
