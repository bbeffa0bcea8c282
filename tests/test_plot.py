"""``natgrad-stream plot``: a run's training log drawn into an image."""

import json
import sys

import numpy as np
import pytest

from natgrad_stream.app.cli import main

from .test_cli import run_cli

pytest.importorskip("matplotlib")


def read_image(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small logistic run: 3 passes over 20,000 rows, a progress record every 2,000."""
    base = tmp_path_factory.mktemp("plot")
    data, run = base / "d.zarr", base / "run"
    assert main(["make-data", str(data), "--task", "logistic", "--rows", "20000",
                 "--features", "3", "--chunk-rows", "2000"]) == 0
    assert main(["fit", str(data), "--model", "logistic", "--out", str(run), "--epochs", "3",
                 "--log-every", "2000"]) == 0
    return run


def test_plot_writes_png_in_run(run_dir, capsys):
    capsys.readouterr()
    code, result, _ = run_cli(capsys, "plot", run_dir)
    assert code == 0
    assert result == {"path": str(run_dir / "plot.png")}
    image = read_image(run_dir / "plot.png")
    assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 400
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_plot_out(run_dir, tmp_path, capsys):
    out = tmp_path / "figure.png"
    code, result, _ = run_cli(capsys, "plot", run_dir, "--out", out)
    assert code == 0 and result == {"path": str(out)}
    assert read_image(out).shape[0] >= 400
    assert not list(tmp_path.glob(".plot-*"))  # no temporary left behind


def test_plot_unknown_format(run_dir, tmp_path, capsys):
    code, result, err = run_cli(capsys, "plot", run_dir, "--out", tmp_path / "figure.xyz")
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1 and ".xyz" in err


def test_plot_without_metrics(tmp_path, capsys):
    code, result, err = run_cli(capsys, "plot", tmp_path)
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1 and "metrics.jsonl" in err
    code, _, err = run_cli(capsys, "plot", tmp_path / "missing")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_plot_without_progress_records(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"event": "start", "samples": 0, "step": 0}) + "\n")
    code, _, err = run_cli(capsys, "plot", tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no progress records" in err
    assert not (tmp_path / "plot.png").exists()


def test_plot_without_matplotlib(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "figure.png"
    code, result, err = run_cli(capsys, "plot", run_dir, "--out", out)
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1
    assert 'pip install "natgrad-stream[plot]"' in err
    assert not out.exists()


def test_plot_every_event_kind(tmp_path, capsys):
    """Validation, rollback, resumption, L-BFGS rounds, failed refreshes, drift, a wide
    samples range (log axis) and a last line cut short are all drawn or skipped quietly.
    """
    records = [{"event": "start", "samples": 0, "step": 0, "model": {"name": "mlp"}}]
    samples = 0
    for i in range(1, 120):
        samples = int(500 * 1.08 ** i)
        if i == 60:
            records.append({"event": "rollback", "detected_at": samples,
                            "samples": samples // 2})
            samples //= 2
        records.append({"event": "progress", "step": i, "samples": samples,
                        "loss": 1.0 / i + 0.2, "rows_per_s": 1e5 + i, "elapsed": i})
        if i % 20 == 0:
            records.append({"event": "rewhiten", "reason": "drift", "samples": samples,
                            "drift": 0.1 + i / 1000, "ok": i != 40,
                            "condition_number": 10.0 * i, "raw_condition_number": 1e3 * i})
            records.append({"event": "validation", "samples": samples, "loss": 1.0 / i})
        if i == 90:
            records.append({"event": "start", "samples": samples, "step": i})
    records.append({"event": "round", "round": 1, "samples": samples, "loss": 0.2,
                    "rewhiten": {"reason": "round", "condition_number": 50.0, "ok": True}})
    records.append({"event": "pass", "pass": 1, "samples": samples, "loss": 0.21})
    records.append({"event": "end", "samples": samples, "train_loss": 0.2, "seconds": 3.0})
    text = "\n".join(json.dumps(r) for r in records) + '\n{"event": "prog'
    (tmp_path / "metrics.jsonl").write_text(text)
    code, result, _ = run_cli(capsys, "plot", tmp_path)
    assert code == 0 and result == {"path": str(tmp_path / "plot.png")}
    assert read_image(tmp_path / "plot.png").shape[0] >= 400


def test_plot_corrupt_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(
        'not json\n{"event": "progress", "samples": 1, "loss": 1.0}\n')
    code, _, err = run_cli(capsys, "plot", tmp_path)
    assert code == 2 and "line 1" in err and len(err.strip().splitlines()) == 1


def _loss_axes(fig):
    """The loss panel and its twin (validation accuracy), by their labels."""
    axes = fig.get_axes()
    loss = next(ax for ax in axes if ax.get_ylabel() == "loss")
    twins = [ax for ax in axes if ax is not loss and ax.bbox.bounds == loss.bbox.bounds]
    return loss, twins


def _fraction_before(ax, x):
    """Where ``x`` lies along the axis, 0 at its left end and 1 at its right."""
    import math

    lo, hi = ax.get_xlim()
    f = (lambda v: math.log(v)) if ax.get_xscale() == "log" else (lambda v: v)
    return (f(x) - f(lo)) / (f(hi) - f(lo))


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    """The issue's case: a default fit (to convergence) with held-out data and the default
    --log-every, larger than the training data.
    """
    base = tmp_path_factory.mktemp("plotval")
    data, run = base / "d.zarr", base / "run"
    assert main(["make-data", str(data), "--task", "logistic", "--rows", "20000",
                 "--features", "3", "--chunk-rows", "2000", "--test-rows", "4000"]) == 0
    assert main(["fit", str(data), "--model", "logistic", "--out", str(run), "--val-x",
                 "X_test", "--val-y", "y_test", "--progress", "never"]) == 0
    return run


def test_plot_starts_where_the_data_start_and_draws_training_and_validation(validated_run):
    from natgrad_stream.app.plot import draw_run, read_metrics

    records = read_metrics(validated_run)
    fig = draw_run(validated_run)
    ax, twins = _loss_axes(fig)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    train = lines["training loss (interval mean of batch losses)"]
    xs = train.get_xdata()
    batch = records[0]["options"]["batch_size"]
    # the training loss from the first batch on, and the axis from there
    assert len(xs) >= 4 and xs[0] <= batch
    first = min(xs[0], *lines["training loss (whole-data pass)"].get_xdata())
    assert 0 <= _fraction_before(ax, first) < 0.05
    assert _fraction_before(ax, max(r["samples"] for r in records)) <= 1.0
    passes = [r["loss"] for r in records if r.get("event") == "pass"]
    assert list(lines["training loss (whole-data pass)"].get_ydata()) == passes
    val = [r for r in records if r.get("event") == "validation"]
    assert list(lines["validation loss"].get_ydata()) == [r["loss"] for r in val]
    lo, hi = ax.get_ylim()
    assert all(lo <= r["loss"] <= hi for r in val)  # inside the panel
    (score_ax,) = twins
    acc, auc = score_ax.get_lines()
    assert acc.get_label() == "validation accuracy"
    assert list(acc.get_ydata()) == [r["accuracy"] for r in val]
    assert auc.get_label() == "validation AUC"
    assert list(auc.get_ydata()) == [r["auc"] for r in val]
    assert score_ax.get_ylabel() == "validation accuracy / validation AUC"


def test_validation_auc_is_roc_auc_score(validated_run):
    """The validation records' AUC is scikit-learn's ``roc_auc_score`` of the held-out
    probabilities at the logged θ (the last record: the fitted θ).
    """
    import zarr
    from sklearn.metrics import roc_auc_score

    from natgrad_stream.app.evaluate import binary_auc
    from natgrad_stream.app.plot import read_metrics
    from natgrad_stream.app.runs import run_params
    from natgrad_stream.models import make_model

    records = read_metrics(validated_run)
    last = [r for r in records if r.get("event") == "validation"][-1]
    params = run_params(validated_run)
    theta = np.r_[params["coef"], params["intercept"]]
    model = make_model("logistic", 3)
    data = validated_run.parent / "d.zarr"
    g = zarr.open_group(str(data), mode="r")
    X, y = g["X_test"][:], g["y_test"][:]
    z = X.astype(float) @ theta[:-1] + theta[-1]
    assert last["auc"] == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    assert binary_auc(model, theta, (X, y)) == pytest.approx(roc_auc_score(y, z), abs=1e-12)
    assert binary_auc(model, theta, (X, np.zeros_like(y))) is None


def test_plot_of_a_regression_has_no_accuracy_axis(tmp_path):
    from natgrad_stream.app.plot import draw_run

    data, run = tmp_path / "d.zarr", tmp_path / "run"
    assert main(["make-data", str(data), "--task", "linear", "--rows", "5000",
                 "--features", "3", "--test-rows", "1000"]) == 0
    assert main(["fit", str(data), "--model", "linear", "--out", str(run), "--val-x",
                 "X_test", "--val-y", "y_test", "--progress", "never"]) == 0
    ax, twins = _loss_axes(draw_run(run))
    assert twins == []
    assert {"validation loss", "training loss (interval mean of batch losses)"} <= {
        ln.get_label() for ln in ax.get_lines()}
