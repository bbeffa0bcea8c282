"""Tables in: Parquet files and directories (hive partitions), Arrow tables and datasets,
CSV, .npy, HuggingFace datasets and re-iterable callables, streamed with the plans,
cursors, checks and digests of Zarr arrays; ``convert`` to a checksummed Zarr store.
"""

import json
import os

import numpy as np
import pytest
import zarr

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from natgrad_stream.app.cli import main  # noqa: E402
from natgrad_stream.app.runs import fit_run  # noqa: E402
from natgrad_stream.data import as_source  # noqa: E402
from natgrad_stream.data.convert import convert_to_zarr  # noqa: E402
from natgrad_stream.data.tables import select_columns  # noqa: E402
from natgrad_stream.errors import DataError  # noqa: E402
from natgrad_stream.learner import NaturalGradientLearner  # noqa: E402
from natgrad_stream.models import make_model  # noqa: E402

N, D = 3_000, 4


def logistic_table(n=N, seed=0) -> "pa.Table":
    """Raw features of mixed dtypes and scales, a logistic target, weights and an id."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, D)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -1.0, 2.0]
    z = f @ np.array([0.8, 0.1, -4.0, 0.3]) - 0.4
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
    return pa.table({"id": np.arange(n, dtype=np.int64),
                     "f0": f[:, 0], "f1": f[:, 1].astype(np.float32),
                     "f2": f[:, 2], "f3": np.round(f[:, 3]).astype(np.int16),
                     "target": y, "weight": rng.uniform(0.5, 2.0, n).astype(np.float32)})


def features(table, cols=("f0", "f1", "f2", "f3")):
    return np.column_stack([table[c].to_numpy() for c in cols])


def parquet_dir(path, table, sizes=(1_100, 700, 1_200), row_group=500):
    """``table`` split over files of ``sizes`` rows, row groups of ``row_group`` rows."""
    path.mkdir()
    a = 0
    for i, k in enumerate(sizes):
        pq.write_table(table.slice(a, k), path / f"part-{i}.parquet", row_group_size=row_group)
        a += k
    return path


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, (json.loads(lines[-1]) if lines else None), err


def fitted(data, epochs=None, **kw):
    lr = NaturalGradientLearner(make_model("logistic", D), seed=3)
    return lr.fit(data, epochs=epochs, x="f*", y="target", **kw)


# -- Parquet ---------------------------------------------------------------------------------
def test_parquet_rows_columns_and_order_are_the_tables(tmp_path):
    t = logistic_table()
    src = as_source(parquet_dir(tmp_path / "d", t), x="f*", y="target", w="weight")
    # files sorted by path, row groups in order: 500, 500, 100, 500, 200, 500, 500, 200
    assert (src.n_rows, src.n_features, src.chunk_rows) == (N, D, 500)
    assert src.feature_names == ["f0", "f1", "f2", "f3"] and src.x_dtype == np.float64
    rows = []
    with src.batches(batch_size=256, epochs=2, seed=5) as stream:
        for b in stream:
            assert np.array_equal(b.X, features(t)[b.rows])
            assert np.array_equal(b.y, t["target"].to_numpy()[b.rows])
            assert np.array_equal(b.w, t["weight"].to_numpy()[b.rows])
            rows.append(b.rows.copy())
    first, second = np.concatenate(rows[:len(rows) // 2]), np.concatenate(rows[len(rows) // 2:])
    assert sorted(first) == list(range(N)) and sorted(second) == list(range(N))
    assert not np.array_equal(first, second)  # shuffled per epoch, reproducibly:
    with src.batches(batch_size=256, epochs=2, seed=5) as stream:
        assert np.array_equal(np.concatenate([b.rows.copy() for b in stream]),
                              np.concatenate(rows))


def test_uniform_row_groups_are_the_chunks_and_the_zarr_copy_fits_identically(tmp_path):
    t = logistic_table()
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=400)
    made = convert_to_zarr(tmp_path / "t.parquet", tmp_path / "c.zarr", x="f*", y="target")
    assert made["chunk_rows"] == 400 and made["columns"] == ["f0", "f1", "f2", "f3"]
    a = fitted(str(tmp_path / "t.parquet"), epochs=2)
    b = NaturalGradientLearner(make_model("logistic", D), seed=3).fit(
        str(tmp_path / "c.zarr"), epochs=2)
    # same chunks, plans and batches: the same arithmetic (one process, one machine)
    assert np.array_equal(a.theta, b.theta)


def test_a_parquet_directory_fits_to_the_optimum_of_its_zarr_copy(tmp_path):
    """Row groups of 500, 100 and 200 rows: the copy's chunks (500 rows) cut the rows
    otherwise, so the passes sum in another order; both fits stop at a Newton decrement
    at round-off, so they agree to round-off magnified by the Hessian's condition
    (features scaled over two decades: ~1e4 × 1e-16 × the loss).
    """
    t = logistic_table()
    d = parquet_dir(tmp_path / "d", t)
    convert_to_zarr(d, tmp_path / "c.zarr", x="f*", y="target")
    a = fitted(str(d))
    b = NaturalGradientLearner(make_model("logistic", D), seed=3).fit(str(tmp_path / "c.zarr"))
    assert a.result.converged and b.result.converged and a.result.epochs > 1
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-9, atol=1e-10)
    assert abs(a.result.train_loss - b.result.train_loss) < 1e-13


def test_convert_round_trips_bit_for_bit(tmp_path, capsys):
    t = logistic_table()
    d = parquet_dir(tmp_path / "d", t)
    code, made, err = run_cli(capsys, "convert", d, tmp_path / "c.zarr", "--x", "f0,f3,f1",
                              "--y", "target", "--w", "weight")
    assert code == 0, err
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    X = features(t, ("f0", "f3", "f1"))
    assert g["X"].dtype == np.float64 and np.array_equal(g["X"][...], X)
    assert g["y"].dtype == np.int8 and np.array_equal(g["y"][...], t["target"].to_numpy())
    assert g["w"].dtype == np.float32 and np.array_equal(g["w"][...], t["weight"].to_numpy())
    assert g.attrs["natgrad_stream"]["columns"] == ["f0", "f3", "f1"]
    assert made["rows"] == N and made["chunk_rows"] == 500
    # a float32 column alone stays float32; an int16 alone int16
    for col, dtype in (("f1", np.float32), ("f3", np.int16)):
        convert_to_zarr(d, tmp_path / f"{col}.zarr", x=col, y=None)
        got = zarr.open_group(str(tmp_path / f"{col}.zarr"), mode="r")["X"]
        assert got.dtype == dtype and np.array_equal(got[:, 0], t[col].to_numpy())
    # the copy is checksummed and has a manifest, as make-data writes
    assert "natgrad_stream_manifest" in g["X"].attrs
    code, _, err = run_cli(capsys, "convert", d, tmp_path / "c.zarr", "--x", "f*",
                           "--y", "target")
    assert code == 2 and "exists" in err


def test_column_selection():
    names = ["id", "f0", "f1", "f10", "g", "target", "weight"]
    assert select_columns(names, "f*", exclude=("target",)) == ["f0", "f1", "f10"]
    assert select_columns(names, "g,f1?", exclude=()) == ["g", "f10"]
    assert select_columns(names, "f1,f*", exclude=()) == ["f1", "f0", "f10"]
    assert select_columns(names, "X", exclude=("target", "weight")) == \
        ["id", "f0", "f1", "f10", "g"]
    assert select_columns(names, "*", exclude=("target", None)) == \
        ["id", "f0", "f1", "f10", "g", "weight"]
    with pytest.raises(DataError, match="no column matches 'h\\*'.*'target'"):
        select_columns(names, "h*")
    with pytest.raises(DataError, match="no column matches 'nope'"):
        select_columns(names, "f0,nope")


def test_hive_partitions_are_columns(tmp_path):
    t = logistic_table().append_column("site", pa.array(np.arange(N) % 3, pa.int32()))
    pq.write_to_dataset(t, tmp_path / "h", partition_cols=["site"])
    src = as_source(tmp_path / "h", x="f0,site", y="target")
    with src.batches(batch_size=4096, shuffle=False) as stream:
        X = np.concatenate([b.X.copy() for b in stream])
    site, f0 = t["site"].to_numpy(), t["f0"].to_numpy()
    # files by path (site=0, 1, 2): each row's partition value beside its features
    order = np.argsort(site, kind="stable")
    assert np.array_equal(X[:, 0], f0[order]) and np.array_equal(X[:, 1], site[order])


def test_arrow_objects_fit_as_their_parquet_file(tmp_path):
    import pyarrow.dataset as pads

    t = logistic_table()
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=400)
    ref = fitted(str(tmp_path / "t.parquet"), epochs=2).theta
    assert np.array_equal(fitted(pads.dataset(tmp_path / "t.parquet"), epochs=2).theta, ref)
    # an in-memory table is cut in blocks of its own (65,536 rows): another order, so two
    # converged fits, equal to the stopping rule's precision (a Newton decrement of at most
    # 1e-14·|J| leaves θ within √(2e-14·|J|/λ_min(H)) ≈ 4e-6 of the optimum here: J = 0.109,
    # λ_min(H) = 1.3e-4; the last steps converge quadratically, so it is usually far closer)
    got = fitted(t)
    np.testing.assert_allclose(got.theta, fitted(str(tmp_path / "t.parquet")).theta,
                               rtol=0, atol=5e-6)


def test_resume_mid_epoch_on_parquet_equals_uninterrupted(tmp_path, capsys):
    d = parquet_dir(tmp_path / "d", logistic_table())
    common = ["--model", "logistic", "--x", "f*", "--y", "target", "--epochs", 2,
              "--seed", 3, "--batch-size", 256]
    assert run_cli(capsys, "fit", d, "--out", tmp_path / "whole", *common)[0] == 0
    code, s1, _ = run_cli(capsys, "fit", d, "--out", tmp_path / "part", *common,
                          "--max-samples", 1_300)
    assert code == 0 and s1["interrupted"] and 0 < s1["samples"] < N
    code, s2, _ = run_cli(capsys, "fit", d, "--out", tmp_path / "part", "--resume")
    assert code == 0 and s2["samples"] == 2 * N
    assert run_cli(capsys, "params", tmp_path / "part")[1] == \
        run_cli(capsys, "params", tmp_path / "whole")[1]
    # evaluate on the training table (its content digests compared) equals the Zarr copy's
    convert_to_zarr(d, tmp_path / "c.zarr", x="f*", y="target")
    code, on_table, err = run_cli(capsys, "evaluate", tmp_path / "part", d, "--x", "f*",
                                  "--y", "target")
    assert code == 0 and on_table["n"] == N, err
    assert run_cli(capsys, "evaluate", tmp_path / "part", tmp_path / "c.zarr")[1] == on_table


# -- bad inputs: one line, exit 2 ---------------------------------------------------------------
def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_tables_are_one_line_and_exit_2(tmp_path, capsys):
    t = logistic_table().append_column("city", pa.array(["a", "b", "c"] * (N // 3)))
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=1000)
    fit = ["fit", tmp_path / "t.parquet", "--model", "logistic", "--out", tmp_path / "r1"]
    _one_line_error(*run_cli(capsys, *fit, "--x", "f*", "--y", "label")[::2],
                    "'label'", "no such column", "target")
    _one_line_error(*run_cli(capsys, *fit, "--x", "f0,size", "--y", "target")[::2],
                    "no column matches 'size'")
    _one_line_error(*run_cli(capsys, *fit, "--x", "f0,city", "--y", "target")[::2],
                    "'city'", "type string", "numeric")
    nulls = logistic_table().set_column(2, "f1", pa.array(
        [None if i == 2_345 else 1.0 for i in range(N)], pa.float32()))
    pq.write_table(nulls, tmp_path / "n.parquet", row_group_size=1000)
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "n.parquet", "--model", "logistic",
                             "--out", tmp_path / "r2", "--x", "f*", "--y", "target")[::2],
                    "'f1'", "row 2345", "missing value")
    # a damaged file: its bytes cut in the middle, or garbage with a Parquet suffix
    raw = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all" * 10)
    for bad in ("cut.parquet", "junk.parquet"):
        _one_line_error(*run_cli(capsys, "fit", tmp_path / bad, "--model", "logistic",
                                 "--out", tmp_path / f"r-{bad}", "--x", "f*", "--y",
                                 "target")[::2], bad)
    # damaged inside a row group (the footer intact): refused at that row group
    t2 = logistic_table()
    pq.write_table(t2, tmp_path / "g.parquet", row_group_size=1000, compression="zstd")
    meta = pq.ParquetFile(tmp_path / "g.parquet").metadata
    col = meta.row_group(1).column(1)
    raw = bytearray((tmp_path / "g.parquet").read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    raw[mid:mid + 64] = bytes(64)
    (tmp_path / "g.parquet").write_bytes(bytes(raw))
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "g.parquet", "--model", "logistic",
                             "--out", tmp_path / "r3", "--x", "f*", "--y", "target")[::2],
                    "g.parquet row group 1")


def test_a_changed_file_is_refused(tmp_path, capsys):
    d = parquet_dir(tmp_path / "d", logistic_table())
    common = ["--model", "logistic", "--x", "f*", "--y", "target", "--epochs", 2]
    code, s1, _ = run_cli(capsys, "fit", d, "--out", tmp_path / "r", *common,
                          "--max-samples", 1_000)
    assert code == 0 and s1["interrupted"]
    other = logistic_table(seed=1)
    pq.write_table(other.slice(0, 700), d / "part-1.parquet", row_group_size=500)
    _one_line_error(*run_cli(capsys, "fit", d, "--out", tmp_path / "r", "--resume")[::2],
                    "not the data the run", "part-1.parquet")
    # and while a stream reads it
    src = as_source(d, x="f*", y="target")
    with src.batches(batch_size=100, shuffle=False) as stream:
        next(stream)
        with open(d / "part-2.parquet", "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(DataError, match="part-2.parquet changed while it was read"):
            for _ in stream:
                pass


def test_fit_run_records_the_tables_files(tmp_path):
    d = parquet_dir(tmp_path / "d", logistic_table())
    fit_run(str(d), tmp_path / "r", model="logistic", x="f*", y="target", epochs=1)
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    files = record["data_identity"]["files"]
    assert sorted(files) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert files["part-1.parquet"]["size"] == os.path.getsize(d / "part-1.parquet")


# -- CSV, .npy, Arrow streams, callables ------------------------------------------------------
def test_csv_fits_and_converts_as_the_table(tmp_path, capsys):
    import pyarrow.csv as pacsv

    t = logistic_table()
    t = t.set_column(2, "f1", t["f1"].cast(pa.float64()))  # float32 text reads as float64
    pacsv.write_csv(t, tmp_path / "t.csv")
    src = as_source(tmp_path / "t.csv", x="f*", y="target")
    assert (src.n_rows, src.n_features) == (N, D)
    with src.batches(batch_size=N, shuffle=False) as stream:
        b = next(stream)
    # CSV text holds float64 values exactly (shortest round-trip repr)
    assert np.array_equal(b.X, features(t))
    assert run_cli(capsys, "convert", tmp_path / "t.csv", tmp_path / "c.zarr", "--x",
                   "f*", "--y", "target")[0] == 0
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert np.array_equal(g["X"][...], b.X)
    code, s, err = run_cli(capsys, "fit", tmp_path / "t.csv", "--x", "f*", "--y", "target",
                           "--model", "logistic", "--out", tmp_path / "r")
    assert code == 0 and s["converged"], err
    np.testing.assert_allclose(fitted(t).theta, np.array(
        [*run_cli(capsys, "params", tmp_path / "r")[1]["coef"],
         run_cli(capsys, "params", tmp_path / "r")[1]["intercept"]]), rtol=1e-9, atol=1e-10)


def test_npy_features_with_targets_from_a_file_or_a_column(tmp_path, capsys):
    t = logistic_table()
    X = features(t)
    y = t["target"].to_numpy()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "Xy.npy", np.column_stack([X[:, :2], y, X[:, 2:]]))
    a = as_source(tmp_path / "X.npy", y=str(tmp_path / "y.npy"))
    b = as_source(tmp_path / "Xy.npy", y="2")
    for src in (a, b):
        assert (src.n_rows, src.n_features) == (N, D)
        with src.batches(batch_size=500, seed=1, epochs=1) as stream:
            for batch in stream:
                assert np.array_equal(batch.X, X[batch.rows])
                assert np.array_equal(batch.y, y[batch.rows])
    ref = NaturalGradientLearner(make_model("logistic", D), seed=3).fit((X, y), epochs=2)
    got = NaturalGradientLearner(make_model("logistic", D), seed=3).fit(
        str(tmp_path / "Xy.npy"), y="2", epochs=2)
    assert np.array_equal(got.theta, ref.theta)  # same chunks as in memory: same fit
    code, made, err = run_cli(capsys, "convert", tmp_path / "X.npy", tmp_path / "c.zarr",
                              "--y", tmp_path / "y.npy")
    assert code == 0, err
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert np.array_equal(g["X"][...], X) and np.array_equal(g["y"][...], y)
    assert g["y"].dtype == y.dtype
    code, s, err = run_cli(capsys, "fit", tmp_path / "Xy.npy", "--y", "2", "--model",
                           "logistic", "--out", tmp_path / "r", "--epochs", 2)
    assert code == 0, err
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "X.npy", "--model", "logistic",
                             "--out", tmp_path / "r2")[::2],
                    "a .npy source takes --y as a second .npy file or a column index")
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "X.npy", "--y", 7, "--model",
                             "logistic", "--out", tmp_path / "r3")[::2], "has 4 columns")


def test_npy_columns_are_named_by_their_index(tmp_path, capsys):
    """A .npy matrix has no column names: its columns are x<index> (as arrays' x0, x1, ...),
    so a summary does not print '0[class 1]' or '2' for a coefficient.
    """
    t = logistic_table()
    M = np.column_stack([t["target"].to_numpy(), features(t)])
    np.save(tmp_path / "Xy.npy", M)
    assert as_source(str(tmp_path / "Xy.npy"), x="2,4", y="0").feature_names == ["x2", "x4"]
    code, _, err = run_cli(capsys, "fit", tmp_path / "Xy.npy", "--y", 0, "--model",
                           "logistic", "--out", tmp_path / "r")
    assert code == 0, err
    code, s, err = run_cli(capsys, "summary", tmp_path / "r", "--format", "json")
    assert code == 0, err
    assert [c["name"] for c in s["coefficients"]] == ["x1", "x2", "x3", "x4", "intercept"]


def test_record_batch_readers_stream_once_and_callables_every_epoch(tmp_path):
    t = logistic_table()
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=700))
    one = fitted(reader, epochs=1)
    again = fitted(lambda: pa.RecordBatchReader.from_batches(
        t.schema, t.to_batches(max_chunksize=700)), epochs=1)
    assert np.array_equal(one.theta, again.theta)
    with pytest.raises(ValueError, match="one epoch only.*callable"):
        fitted(pa.RecordBatchReader.from_batches(t.schema, t.to_batches()), epochs=2)
    calls = []

    def batches():
        calls.append(1)
        return pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=700))

    lr = fitted(batches, epochs=3)
    assert lr.result.samples == 3 * N and len(calls) == 4  # features first, then 3 epochs
    # resumed mid-epoch (within a record batch), the same as uninterrupted
    part = fitted(batches, epochs=3, max_samples=N + 1_000)
    assert part.result.interrupted and part.state.cursor.epoch == 1
    state = part.state_dict()
    resumed = NaturalGradientLearner.from_state_dict(state).fit(
        batches, epochs=3, x="f*", y="target")
    assert np.array_equal(resumed.theta, lr.theta)


def test_a_callable_of_numpy_batches_is_multi_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((900, 3))
    y = (X[:, 0] > 0).astype(float)

    def batches():
        for a in range(0, 900, 300):
            yield X[a:a + 300], y[a:a + 300]

    src = as_source(batches)
    with src.batches(batch_size=200, epochs=2) as stream:
        got = [(b.cursor, b.X.copy()) for b in stream]
    assert [c.epoch for c, _ in got] == [0] * 6 + [1] * 6
    assert np.array_equal(np.concatenate([x for _, x in got]), np.concatenate([X, X]))


# -- categorical columns, HuggingFace datasets ------------------------------------------------
def categorical_table(n=N, seed=0):
    rng = np.random.default_rng(seed)
    city = rng.choice(["paris", "lyon", "nice", "lille"], n).astype(object)
    city[rng.random(n) < 0.05] = None
    plan = pa.array(rng.choice(["a", "b", "c"], n)).dictionary_encode()
    f0 = rng.standard_normal(n)
    effect = {"paris": 1.0, "lyon": -0.5, "nice": 0.2, "lille": 0.0, None: 0.0}
    z = 0.7 * f0 + np.array([effect[c] for c in city]) + (plan.to_numpy(
        zero_copy_only=False) == "b") * 0.8 - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
    return pa.table({"f0": f0, "city": pa.array(city, pa.string()), "plan": plan,
                     "target": y})


def test_categorical_columns_one_hot_and_hashed(tmp_path, capsys):
    import pandas as pd

    from natgrad_stream.data.hashing import hash_columns
    from natgrad_stream.data.sparse_source import SparseSource

    t = categorical_table()
    pq.write_table(t, tmp_path / "c.parquet", row_group_size=700)
    src = as_source(tmp_path / "c.parquet", x="f0,city,plan;onehot", y="target")
    assert isinstance(src, SparseSource) and src.n_features == 1 + 4 + 3
    assert src.feature_names == ["f0", "city=lille", "city=lyon", "city=nice", "city=paris",
                                 "plan=a", "plan=b", "plan=c"]
    df = t.select(["f0", "city", "plan"]).to_pandas()
    onehot = np.column_stack([df["f0"]] + [
        (df[c] == v).to_numpy(float) for c, v in
        (n.split("=") for n in src.feature_names[1:])])
    hashed = hash_columns(df, 10).toarray()
    hsrc = as_source(tmp_path / "c.parquet", x="f0,city,plan;hash=10", y="target")
    assert hsrc.n_features == 1024
    for s, expected in ((src, onehot), (hsrc, hashed)):
        with s.batches(batch_size=500, seed=2, epochs=1) as stream:
            for b in stream:
                assert np.array_equal(b.X.toarray(), expected[b.rows])
    # fitted as the one-hot matrix in memory (the same chunks: the same fit)
    import scipy.sparse as sp

    ref = NaturalGradientLearner(make_model("logistic", 8), seed=3, l2=1e-3).fit(
        SparseSource(sp.csr_matrix(onehot), t["target"].to_numpy(), chunk_rows=700), epochs=3)
    got = NaturalGradientLearner(make_model("logistic", 8), seed=3, l2=1e-3).fit(
        str(tmp_path / "c.parquet"), x="f0,city,plan;onehot", y="target", epochs=3)
    np.testing.assert_allclose(got.theta, ref.theta, rtol=1e-10, atol=1e-12)
    # the command line: --one-hot / --hash-bits, convert to a CSR group
    code, s, err = run_cli(capsys, "fit", tmp_path / "c.parquet", "--x", "f0,city,plan",
                           "--one-hot", "--y", "target", "--model", "logistic", "--l2", 1e-3,
                           "--out", tmp_path / "r", "--epochs", 3, "--seed", 3)
    assert code == 0, err
    params = run_cli(capsys, "params", tmp_path / "r")[1]
    np.testing.assert_allclose(params["coef"], ref.theta[:-1], rtol=1e-10, atol=1e-12)
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["x"] == "f0,city,plan;onehot" and record["fit_options"]["one_hot"]
    code, s, err = run_cli(capsys, "fit", tmp_path / "c.parquet", "--out", tmp_path / "r",
                           "--resume", "--epochs", 4)  # the encoding is the run's
    assert code == 0 and s["samples"] == 4 * N, err
    # evaluate on the training table without flags: the run's columns and encoding (it
    # looked for columns X and y, and failed with exit 2)
    code, ev, err = run_cli(capsys, "evaluate", tmp_path / "r", tmp_path / "c.parquet")
    assert code == 0 and ev["n"] == N, err
    assert ev["log_loss"] == pytest.approx(s["train_loss"], rel=1e-12)
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "c.parquet", "--x", "f0,city",
                             "--one-hot", "--hash-bits", 8, "--y", "target", "--model",
                             "logistic", "--out", tmp_path / "r4")[::2], "exclude each other")
    code, made, err = run_cli(capsys, "convert", tmp_path / "c.parquet", tmp_path / "h.zarr",
                              "--x", "f0,city,plan", "--hash-bits", 10, "--y", "target")
    assert code == 0 and made["sparse"] and made["features"] == 1024, err
    back = as_source(str(tmp_path / "h.zarr"))
    with back.batches(batch_size=N, shuffle=False) as stream:
        assert np.array_equal(next(stream).X.toarray(), hashed[:1400])
    # a string column without an encoding, an unknown encoding: one line, exit 2
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "c.parquet", "--x", "f0,city", "--y",
                             "target", "--model", "logistic", "--out", tmp_path / "r2")[::2],
                    "'city'", "type string", "--one-hot")
    _one_line_error(*run_cli(capsys, "fit", tmp_path / "c.parquet", "--x", "f0,city;ordinal",
                             "--y", "target", "--model", "logistic",
                             "--out", tmp_path / "r3")[::2], "unknown encoding 'ordinal'")
    del pd


def test_huggingface_datasets_fit_as_their_arrow_table():
    datasets = pytest.importorskip("datasets")
    t = logistic_table()
    ds = datasets.Dataset(t)
    assert np.array_equal(fitted(ds, epochs=2).theta, fitted(t, epochs=2).theta)
    # an indices mapping (shuffle, select, filter) is read through it
    sub = ds.select(range(0, N, 2))
    src = as_source(sub, x="f*", y="target")
    with src.batches(batch_size=N, shuffle=False) as stream:
        b = next(stream)
    assert np.array_equal(b.X, features(t)[::2]) and src.n_rows == N // 2


def test_scikit_learn_estimators_take_tables(tmp_path):
    pytest.importorskip("sklearn")
    from natgrad_stream.sklearn import NaturalGradientClassifier

    t = logistic_table().drop_columns(["id", "weight"])
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=1000)
    X, y = features(t), t["target"].to_numpy()
    ref = NaturalGradientClassifier(C=10.0, tol=1e-14).fit(X, y)
    for data in (str(tmp_path / "t.parquet"), t):
        clf = NaturalGradientClassifier(C=10.0, tol=1e-14).fit(data, "target")
        assert list(clf.classes_) == [0, 1] and clf.n_features_in_ == D
        assert list(clf.param_names_) == ["f0", "f1", "f2", "f3", "intercept"]
    with pytest.raises(ValueError, match="a Zarr store or a table.*array or column"):
        NaturalGradientClassifier(class_weight="balanced").fit(str(tmp_path / "t.parquet"),
                                                               "target")
        np.testing.assert_allclose(clf.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
        assert clf.score(X, y) == ref.score(X, y)


def test_special_files_are_refused_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.parquet")
    os.mkfifo(tmp_path / "pipe.npy")
    d = parquet_dir(tmp_path / "d", logistic_table())
    os.mkfifo(d / "part-9.parquet")
    for data in (tmp_path / "pipe.parquet", tmp_path / "pipe.npy", d):
        code, _, err = run_cli(capsys, "fit", data, "--model", "logistic", "--y", "target",
                               "--out", tmp_path / f"r-{data.name}")
        _one_line_error(code, err, "FIFO")


# -- a run fitted on a table, used on tables ------------------------------------------------------
def test_a_table_runs_columns_name_its_summary_and_are_checked(tmp_path, capsys):
    t = logistic_table().drop_columns(["id", "weight"])
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=1000)
    run = tmp_path / "r"
    code, _, err = run_cli(capsys, "fit", tmp_path / "t.parquet", "--x", "f*", "--y", "target",
                           "--model", "logistic", "--out", run)
    assert code == 0, err
    code, s, err = run_cli(capsys, "summary", run, "--format", "json")
    assert code == 0, err
    assert [c["name"] for c in s["coefficients"]] == ["f0", "f1", "f2", "f3", "intercept"]
    # predict on the table needs no --x: the run's columns (not the target as a feature)
    code, p, err = run_cli(capsys, "predict", run, tmp_path / "t.parquet",
                           "--out", tmp_path / "p.csv")
    assert code == 0 and p["rows"] == N, err
    # the same columns in another order: a glob would select them silently swapped
    pq.write_table(t.select(["f1", "f0", "f2", "f3", "target"]), tmp_path / "swap.parquet")
    for args in (("evaluate", run, tmp_path / "swap.parquet", "--x", "f*", "--y", "target"),
                 ("predict", run, tmp_path / "swap.parquet", "--out", tmp_path / "q.csv"),
                 ("summary", run, tmp_path / "swap.parquet")):
        _one_line_error(*run_cli(capsys, *args)[::2], "'f1'", "'f0'", "fitted on")
    assert not (tmp_path / "q.csv").exists()
    # its Zarr copy carries the column names: a run fitted on it names them too
    code, _, err = run_cli(capsys, "convert", tmp_path / "t.parquet", tmp_path / "t.zarr",
                           "--x", "f*", "--y", "target")
    assert code == 0, err
    code, _, err = run_cli(capsys, "fit", tmp_path / "t.zarr", "--model", "logistic",
                           "--out", tmp_path / "rz")
    assert code == 0, err
    code, sz, err = run_cli(capsys, "summary", tmp_path / "rz", "--format", "json")
    assert code == 0, err
    assert [c["name"] for c in sz["coefficients"]] == [c["name"] for c in s["coefficients"]]
    code, _, err = run_cli(capsys, "evaluate", run, tmp_path / "t.zarr")
    assert code == 0, err


def test_a_one_hot_runs_levels_name_its_summary_and_are_checked(tmp_path, capsys):
    t = categorical_table()
    pq.write_table(t, tmp_path / "c.parquet", row_group_size=700)
    run = tmp_path / "r"
    code, _, err = run_cli(capsys, "fit", tmp_path / "c.parquet", "--x", "f0,city",
                           "--one-hot", "--y", "target", "--model", "logistic", "--l2", 1e-3,
                           "--out", run)
    assert code == 0, err
    code, s, err = run_cli(capsys, "summary", run, "--format", "json")
    assert code == 0, err
    assert [c["name"] for c in s["coefficients"]] == [
        "f0", "city=lille", "city=lyon", "city=nice", "city=paris", "intercept"]
    code, p, err = run_cli(capsys, "predict", run, tmp_path / "c.parquet",
                           "--out", tmp_path / "p.csv")
    assert code == 0 and p["rows"] == N, err
    code, p, err = run_cli(capsys, "predict", run, tmp_path / "c.parquet", "--x", "f0,city",
                           "--one-hot", "--out", tmp_path / "p2.csv")  # as evaluate takes it
    assert code == 0 and p["rows"] == N, err
    # other data with as many levels but another one: its columns would mean other cities
    city = t["city"].to_numpy(zero_copy_only=False)
    other = t.set_column(1, "city", pa.array(np.where(city == "nice", "rome", city),
                                             pa.string()))
    pq.write_table(other, tmp_path / "o.parquet", row_group_size=700)
    for args in (("evaluate", run, tmp_path / "o.parquet", "--x", "f0,city", "--one-hot",
                  "--y", "target"),
                 ("predict", run, tmp_path / "o.parquet", "--out", tmp_path / "q.csv"),
                 ("summary", run, tmp_path / "o.parquet")):
        _one_line_error(*run_cli(capsys, *args)[::2], "'city=rome'", "'city=nice'")


def test_a_string_target_column_is_refused_as_a_target(tmp_path, capsys):
    t = logistic_table().append_column("label", pa.array(["yes", "no", "no"] * (N // 3)))
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=1000)
    code, _, err = run_cli(capsys, "fit", tmp_path / "t.parquet", "--x", "f*", "--y", "label",
                           "--model", "logistic", "--out", tmp_path / "r")
    _one_line_error(code, err, "'label'", "type string", "target")
    assert "--one-hot" not in err and "--x" not in err, err
