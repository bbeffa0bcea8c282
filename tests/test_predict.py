"""natgrad-stream predict: streamed predictions of a fitted run, written atomically."""

import json
import os

import numpy as np
import pytest
import zarr

from natgrad_stream.app.cli import main
from natgrad_stream.app.predict import predict_run, predict_to_file
from natgrad_stream.app.runs import evaluate_run, fit_run, run_params
from natgrad_stream.data import open_zarr
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.models import make_model
from natgrad_stream.models.predictions import predict_columns


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, (json.loads(lines[-1]) if lines else None), err


@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory, small_zarr):
    run = tmp_path_factory.mktemp("runs") / "logistic"
    fit_run(small_zarr, run, model="logistic", epochs=3)
    return run


def _theta(run):
    p = run_params(run)
    return np.r_[np.ravel(p["coef"]), np.ravel(p["intercept"])]


def _read(path):
    """``{column: array}`` of a written prediction file, whatever its format."""
    path = str(path)
    if path.endswith(".zarr"):
        g = zarr.open_group(path, mode="r")
        out = {}
        for name in g.array_keys():
            a, cols = g[name][...], g[name].attrs["columns"]
            for j, c in enumerate(cols):
                out[c] = a if a.ndim == 1 else a[:, j]
        return out
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return {c: np.array([r[j] for r in rows[1:]]) for j, c in enumerate(rows[0])}


def _leftovers(directory):
    return [p for p in os.listdir(directory) if ".partial-" in p or ".old-" in p]


@pytest.mark.parametrize("suffix", [".zarr", ".parquet", ".csv"])
def test_each_format_round_trips_and_equals_the_model(tmp_path, capsys, small_zarr,
                                                      logistic_run, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"pred{suffix}"
    code, record, err = run_cli(capsys, "predict", logistic_run, small_zarr, "--x", "X_test",
                                "--out", out)
    assert code == 0, err
    assert record["rows"] == 1000 and record["columns"] == ["proba_0", "proba_1", "class"]
    got = _read(out)
    X = zarr.open_group(str(small_zarr), mode="r")["X_test"][...]
    want = predict_columns(make_model("logistic", 3), X, _theta(logistic_run),
                           ("proba", "class"))
    # the formats store float64 exactly (CSV: the shortest repr that reads back the same)
    np.testing.assert_array_equal(got["proba_1"].astype(np.float64), want["proba"][:, 1])
    np.testing.assert_array_equal(got["proba_0"].astype(np.float64), want["proba"][:, 0])
    np.testing.assert_array_equal(got["class"].astype(np.int64), want["class"])
    assert _leftovers(tmp_path) == []


def test_zarr_output_is_checksummed_and_verified_on_reading(tmp_path, small_zarr,
                                                           logistic_run):
    from natgrad_stream.data.manifest import MANIFEST_ATTR

    out = tmp_path / "p.zarr"
    predict_run(logistic_run, small_zarr, out, x="X_test")
    g = zarr.open_group(str(out), mode="r")
    assert g["proba"].attrs[MANIFEST_ATTR]["rows"] == 1000
    assert g.attrs["natgrad_stream_predictions"]["kinds"] == ["proba", "class"]
    source = open_zarr(out, x="proba", y="class")  # the project's checked reader
    with source.batches(batch_size=1000, shuffle=False) as stream:
        assert sum(b.X.shape[0] for b in stream) == 1000


@pytest.mark.parametrize("task, density", [("logistic", None), ("softmax", None),
                                           ("logistic", 0.1), ("softmax", 0.1)])
def test_probabilities_equal_evaluate(tmp_path, task, density):
    data = tmp_path / "d.zarr"
    make_dataset(data, task=task, rows=3000, features=4 if density is None else 50,
                 chunk_rows=700, test_rows=2000, seed=2, density=density)
    run = tmp_path / "run"
    fit_run(data, run, model=task, epochs=2)
    predict_run(run, data, tmp_path / "p.zarr", x="X_test")
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    proba, cls = g["proba"][...], g["class"][...]
    y = zarr.open_group(str(data), mode="r")["y_test"][...].astype(np.int64)
    ev = evaluate_run(run, data, x="X_test", y="y_test")
    rows = np.arange(len(y))
    np.testing.assert_allclose(-np.mean(np.log(proba[rows, y])), ev["log_loss"], rtol=1e-12)
    assert np.mean(cls == y) == ev["accuracy"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("task, kinds", [("linear", ("mean", "link")),
                                         ("poisson", ("mean", "link"))])
def test_regression_means_and_links(tmp_path, task, kinds):
    data = tmp_path / "d.zarr"
    make_dataset(data, task=task, rows=2000, features=3, chunk_rows=500, seed=1)
    run = tmp_path / "run"
    fit_run(data, run, model=task, epochs=2)
    predict_run(run, data, tmp_path / "p.zarr", what=kinds)
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    X = zarr.open_group(str(data), mode="r")["X"][...]
    model, theta = make_model(task, 3), _theta(run)
    np.testing.assert_allclose(g["mean"][...], model.predict_mean(X, theta), rtol=1e-13)
    link = np.log(g["mean"][...]) if task == "poisson" else g["mean"][...]
    np.testing.assert_allclose(g["link"][...], link, rtol=1e-12, atol=1e-12)


def test_sparse_store(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    data = tmp_path / "s.zarr"
    make_dataset(data, task="logistic", rows=3000, features=200, density=0.05,
                 chunk_rows=1000, seed=4)
    run = tmp_path / "run"
    fit_run(data, run, model="logistic", epochs=2)
    code, record, err = run_cli(capsys, "predict", run, data, "--out", tmp_path / "p.parquet",
                                "--what", "proba,link")
    assert code == 0, err
    got = _read(tmp_path / "p.parquet")
    source = open_zarr(data, y=None)
    import scipy.sparse as sp

    with source.batches(batch_size=3000, shuffle=False) as stream:
        X = sp.vstack([b.X.to_scipy().copy() for b in stream]).tocsr()
    theta = _theta(run)
    z = X @ theta[:-1] + theta[-1]
    np.testing.assert_allclose(got["link"], z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["proba_1"], 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_missing_chunk_is_one_line_exit_2_and_no_output(tmp_path, capsys, small_zarr,
                                                        logistic_run):
    import shutil

    data = tmp_path / "d.zarr"
    shutil.copytree(small_zarr, data)
    (data / "X_test" / "c" / "1" / "0").unlink()
    for suffix in (".zarr", ".csv"):
        out = tmp_path / f"p{suffix}"
        code, record, err = run_cli(capsys, "predict", logistic_run, data, "--x", "X_test",
                                    "--out", out)
        assert code == 2 and record is None
        assert len(err.strip().splitlines()) == 1, err
        assert "array 'X_test'" in err and "chunk 1" in err
        assert not out.exists() and _leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys, small_zarr,
                                                     logistic_run):
    out = tmp_path / "p.csv"
    out.write_text("keep me\n")
    code, _, err = run_cli(capsys, "predict", logistic_run, small_zarr, "--out", out)
    assert code == 2 and "exists; pass --overwrite" in err
    assert out.read_text() == "keep me\n"
    code, record, _ = run_cli(capsys, "predict", logistic_run, small_zarr, "--out", out,
                              "--overwrite")
    assert code == 0 and record["rows"] == 5000 and out.read_text() != "keep me\n"
    zout = tmp_path / "p.zarr"  # a directory output is replaced too
    for _ in range(2):
        code, _, _ = run_cli(capsys, "predict", logistic_run, small_zarr, "--out", zout,
                             "--overwrite", "--what", "class")
        assert code == 0
    assert sorted(zarr.open_group(str(zout), mode="r").array_keys()) == ["class"]
    assert _leftovers(tmp_path) == []


def test_a_failure_midway_leaves_the_old_output_and_no_partial_file(tmp_path, small_zarr,
                                                                    logistic_run,
                                                                    monkeypatch):
    from natgrad_stream.app import table_writers

    out = tmp_path / "p.csv"
    out.write_text("old\n")
    calls = []

    def failing(self, block):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, block)

    original = table_writers.CSVTableWriter.write
    monkeypatch.setattr(table_writers.CSVTableWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):  # 5,000 rows in 512-row chunks: several reads
        predict_to_file(make_model("logistic", 3), _theta(logistic_run), small_zarr, out,
                        overwrite=True)
    assert out.read_text() == "old\n" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (("--out", "p.txt"), "unknown output format '.txt'"),
    (("--out", "nodir/p.zarr"), "directory nodir does not exist"),
    (("--out", "nodir/p.csv"), "directory nodir does not exist"),
    (("--out", "p.csv", "--what", "mean,foo"), "--what takes"),
    (("--out", "p.csv", "--what", "link,proba,mean,class,oops"), "--what takes"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, small_zarr, logistic_run, args,
                                         message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "predict", logistic_run, small_zarr, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_kinds_a_model_does_not_predict_are_refused(tmp_path, capsys):
    data = tmp_path / "d.zarr"
    make_dataset(data, task="linear", rows=500, features=2, chunk_rows=250)
    fit_run(data, tmp_path / "run", model="linear", epochs=1)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "predict", tmp_path / "run", data, "--out",
                           tmp_path / "p.csv", "--what", "proba")
    assert code == 2 and "model 'linear' predicts mean, link; got proba" in err


def test_density_model_run_is_refused(tmp_path, capsys):
    data = tmp_path / "g.zarr"
    make_dataset(data, task="gaussian-mean", rows=500, features=2, chunk_rows=250)
    fit_run(data, tmp_path / "run", model="gaussian-mean", epochs=1)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "predict", tmp_path / "run", data, "--out",
                           tmp_path / "p.csv")
    assert code == 2 and "predicts no target" in err and len(err.strip().splitlines()) == 1


def test_output_over_the_data_or_the_run_is_refused(tmp_path, capsys, small_zarr,
                                                    logistic_run):
    import shutil

    data = tmp_path / "d.zarr"
    shutil.copytree(small_zarr, data)
    before = sorted(p.name for p in data.iterdir())
    for extra in ((), ("--overwrite",)):
        code, _, err = run_cli(capsys, "predict", logistic_run, data, "--out", data, *extra)
        assert code == 2 and "which the prediction reads" in err
        assert sorted(p.name for p in data.iterdir()) == before
    code, _, err = run_cli(capsys, "predict", logistic_run, data, "--out",
                           logistic_run / "p.csv")
    assert code == 2 and "which the prediction reads" in err


def test_feature_count_mismatch(tmp_path, capsys, logistic_run):
    data = tmp_path / "d.zarr"
    make_dataset(data, task="logistic", rows=300, features=5, chunk_rows=100)
    code, _, err = run_cli(capsys, "predict", logistic_run, data, "--out", tmp_path / "p.csv")
    assert code == 2 and "has 5 features but the model was fitted on 3" in err


def test_class_names_label_the_columns(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 2))
    model = make_model("softmax", 2, n_classes=3)
    theta = rng.standard_normal(model.n_params)
    out = tmp_path / "p.csv"
    record = predict_to_file(model, theta, X, out, class_names=["a", "b", "c"])
    assert record["columns"] == ["proba_a", "proba_b", "proba_c", "class"]
    got = _read(out)
    codes = np.argmax(predict_columns(model, X, theta, ("link",))["link"], axis=1)
    assert list(got["class"]) == list(np.array(["a", "b", "c"])[codes])


def test_csv_without_pyarrow(tmp_path, small_zarr, logistic_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    out = tmp_path / "p.csv"
    predict_run(logistic_run, small_zarr, out, x="X_test")
    got = _read(out)
    X = zarr.open_group(str(small_zarr), mode="r")["X_test"][...]
    want = predict_columns(make_model("logistic", 3), X, _theta(logistic_run), ("proba",))
    np.testing.assert_array_equal(got["proba_1"].astype(np.float64), want["proba"][:, 1])
    with pytest.raises(ValueError, match="needs pyarrow"):
        predict_run(logistic_run, small_zarr, tmp_path / "p.parquet", x="X_test")


def test_streamed_read_by_read(tmp_path, small_zarr, logistic_run, monkeypatch):
    """Bounded memory: each write holds one read of whole chunks (2 × 512 rows), never the
    data's 5,000 rows.
    """
    from natgrad_stream.app import table_writers

    sizes = []
    original = table_writers.ZarrTableWriter.write

    def recording(self, block):
        sizes.append(len(block["class"]))
        return original(self, block)

    monkeypatch.setattr(table_writers.ZarrTableWriter, "write", recording)
    predict_run(logistic_run, small_zarr, tmp_path / "p.zarr")
    assert sum(sizes) == 5000 and max(sizes) <= 1024 and len(sizes) == 5


@pytest.mark.parametrize("labels", [[0, 1, 2], ["a", "b,c", "d"]])
def test_csv_formatted_in_slices_is_pyarrow_writers_bytes(tmp_path, monkeypatch, labels):
    """Blocks cut into slices formatted by two threads (here from 7 rows a slice) write
    the bytes of pyarrow's own CSV writer over the same blocks, header and labels
    (quoted where needed) included.
    """
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv

    from natgrad_stream.app import table_writers as T

    monkeypatch.setattr(T, "CSV_SLICE_MIN_ROWS", 7)
    rng = np.random.default_rng(0)
    fields, names = {"proba": 3, "class": 1}, {"proba": ["p0", "p1", "p2"], "class": ["class"]}
    blocks = []
    for n in (20, 13, 1, 0, 40):
        p = rng.dirichlet(np.ones(3), n) if n else np.empty((0, 3))
        blocks.append({"proba": p, "class": np.argmax(p, axis=1) if n else
                       np.empty(0, dtype=np.int64)})
    writer = T.CSVTableWriter(tmp_path / "p.csv", fields, names, {"class": labels}, None,
                              16, {})
    for block in blocks:
        writer.write(block)
    writer.finish()
    assert writer._pool is None
    ref = None
    for block in blocks:
        table = T._arrow_table(pa, writer._flat(block))
        if ref is None:
            ref = pcsv.CSVWriter(str(tmp_path / "ref.csv"), table.schema,
                                 write_options=pcsv.WriteOptions(quoting_style="needed"))
        ref.write_table(table)
    ref.close()
    got = (tmp_path / "p.csv").read_bytes()
    assert got == (tmp_path / "ref.csv").read_bytes()
    assert got.count(b"\n") == 1 + 74


def test_a_run_fitted_on_a_table_predicts_and_evaluates_its_table(tmp_path, capsys):
    """A run fitted on a table with the default features (every column but --y and --w)
    predicts and evaluates that table without naming them again: the run's target and
    weight columns are left out of the features, as in the fit (predict saw the target as
    a feature, evaluate the weights: "the feature columns are not those the model was
    fitted on"). The same for a .npy matrix whose target is a column index.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 400
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    label = (rng.random(n) < 1 / (1 + np.exp(-(a - b)))).astype(np.int64)
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": a, "label": label, "b": b,
                             "wt": rng.uniform(0.5, 2.0, n)}), table)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", table, "--model", "logistic", "--y", "label",
                           "--w", "wt", "--epochs", 2, "--out", run, "--progress", "never")
    assert code == 0, err
    code, scores, err = run_cli(capsys, "evaluate", run, table)
    assert code == 0, err
    code, named, err = run_cli(capsys, "evaluate", run, table, "--x", "a,b", "--y", "label")
    assert code == 0 and scores == named, err
    code, out, err = run_cli(capsys, "predict", run, table, "--out", tmp_path / "p.parquet")
    assert code == 0 and out["rows"] == n, err
    proba = pq.read_table(tmp_path / "p.parquet").column("proba_1").to_numpy()
    code, _, err = run_cli(capsys, "predict", run, table, "--x", "a,b",
                           "--out", tmp_path / "q.parquet")
    assert code == 0, err
    np.testing.assert_array_equal(
        proba, pq.read_table(tmp_path / "q.parquet").column("proba_1").to_numpy())
    npy = tmp_path / "m.npy"
    np.save(npy, np.column_stack([a, label, b]))
    run = tmp_path / "run_npy"
    code, _, err = run_cli(capsys, "fit", npy, "--model", "logistic", "--y", 1,
                           "--epochs", 2, "--out", run, "--progress", "never")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", run, npy, "--out", tmp_path / "n.csv")
    assert code == 0 and out["rows"] == n, err
