"""``fit --config`` (options from a TOML file, flags override, recorded in run.json),
progress lines on a non-terminal stderr, and the demo's report.
"""

import json
import subprocess
import sys

from .test_cli import run_cli


def test_config_file_with_command_line_overrides(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(f"""
data = "{small_zarr}"
out = "{run}"
model = "logistic"
epochs = 3
lr = 0.5
structure = "block"
batch_size = 512
refine = "stream"
""")
    code, summary, err = run_cli(capsys, "fit", "--config", config, "--epochs", 2)
    assert code == 0, err
    assert summary["epochs"] == 2  # the flag wins over the file's 3
    info = json.loads((run / "run.json").read_text())
    fo = info["fit_options"]
    assert (fo["lr"], fo["structure"], fo["batch_size"], fo["epochs"]) == (0.5, "block", 512, 2)
    assert info["config"] == str(config.resolve())
    # resuming with the same file is no change; a bad key or value is one clear line
    code, _, err = run_cli(capsys, "fit", "--config", config, "--resume")
    assert code == 0, err
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "x.zarr"\nout = "r"\nmodel = "logistic"\nlearning_rate = 0.1\n')
    code, _, err = run_cli(capsys, "fit", "--config", bad)
    assert code == 2 and "unknown option learning_rate" in err
    bad.write_text('data = "x.zarr"\nout = "r"\nmodel = "logistic"\nlr = -1\n')
    code, _, err = run_cli(capsys, "fit", "--config", bad)
    assert code == 2 and "lr must be a finite number > 0" in err
    code, _, err = run_cli(capsys, "fit", "--model", "logistic")
    assert code == 2 and "needs DATA and --out" in err


def test_progress_lines_on_a_non_terminal_stderr(small_zarr, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", "fit", str(small_zarr),
                           "--model", "logistic", "--out", str(tmp_path / "run"), "--epochs",
                           "3", "--refine", "stream", "--batch-size", "64",
                           "--progress-seconds", "0.01"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the last line of progress; a warning line (the cap's) may follow it
    lines = [ln for ln in proc.stderr.splitlines() if ": warning: " not in ln]
    assert "\r" not in proc.stderr
    assert lines[0].startswith("natgrad-stream fit: fit started: model logistic")
    assert any("rows/s" in ln and "epoch" in ln for ln in lines[1:-1])
    assert lines[-1].startswith("natgrad-stream fit: fit done: 15,000 samples")


def test_demo_reports_compile_time_apart_and_leaves_nothing_behind(tmp_path):
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", "demo"],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "TMPDIR": str(env_tmp)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["compile_seconds"] >= 0 and report["run_kept"] is False
    assert "re-whitened" in proc.stderr and "condition number" in proc.stderr
    assert list(env_tmp.iterdir()) == []  # nothing left in the temporary directory
    # no path is shown (on stderr or in the JSON) of a directory that is then deleted
    assert str(env_tmp) not in proc.stderr and report["run"] is None
    assert "temporary" in proc.stderr and "--out" in proc.stderr
    # each long step is announced before it runs (no silence after the run directory)
    err = proc.stderr
    for before, after in (("compiling", "kernels ready"), ("fitting one pass", "one pass:"),
                          ("computing the full-batch optimum", "held-out log-loss")):
        assert before in err and after in err and err.index(before) < err.index(after)
    # the rate on stderr is the JSON's: the same seconds and rows/s
    assert (f"{report['samples']:,} rows in {report['seconds']} s "
            f"({report['rows_per_s'] / 1e6:.2f} M rows/s)") in err


def test_held_out_evaluation_during_fit_is_logged_and_plotted(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out",
                                 run, "--epochs", 2, "--refine", "stream", "--val-x", "X_test",
                                 "--val-y", "y_test", "--val-every", 2000, "--log-every", 1000)
    assert code == 0, err
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["event"] == "validation"]
    assert len(vals) >= 4 and vals[-1]["samples"] == summary["samples"]
    ev = run_cli(capsys, "evaluate", run, small_zarr, "--x", "X_test", "--y", "y_test")[1]
    assert vals[-1]["log_loss"] == ev["log_loss"] and vals[-1]["loss"] == ev["log_loss"]
    assert records[-1]["event"] == "end"
    assert run_cli(capsys, "plot", run)[0] == 0
    code, _, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out",
                           tmp_path / "r2", "--val-x", "nope", "--val-y", "y_test")
    assert code == 2 and "nope" in err


def _progress_lines(err):
    import re

    out = []
    for line in err.splitlines():
        m = re.search(r"([\d,]+) rows \| .*\| (epoch [^|]*?) \|", line)
        if m:
            out.append((int(m.group(1).replace(",", "")), m.group(2)))
    return out


def test_progress_counts_passes_from_1_and_moves_inside_a_scoring_pass(tmp_path, capsys):
    """The human text says "epoch 1/2" for the first pass (the records keep their 0-based
    epoch), and a Fisher-scoring pass (the second) shows the rows it has read so far.
    """
    from natgrad_stream.app.demo import demo_dataset_path

    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", demo_dataset_path(), "--model", "logistic",
                                 "--out", run, "--epochs", 2, "--progress", "always",
                                 "--progress-seconds", 1e-6, "--log-every", 50_000)
    assert code == 0, err
    lines = _progress_lines(err)
    assert lines and "epoch 0" not in err
    labels = {label for _, label in lines}
    assert labels == {"epoch 1/2", "epoch 2/2"}, labels
    n = 200_000
    inside = [rows for rows, label in lines if label == "epoch 2/2" and n < rows < 2 * n]
    assert len(inside) >= 2 and inside == sorted(inside)  # advancing through the pass
    assert "fit done: 400,000 samples" in err and "epoch 2/2" in [
        ln for ln in err.splitlines() if ": warning: " not in ln][-1]
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in records if r["event"] == "progress"]
    assert progress[0]["epoch"] == 0  # records: 0-based, as before
    assert summary["epochs"] == 2


def test_every_progress_display_counts_each_row_once_through_scoring_passes():
    import io

    import numpy as np

    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model
    from natgrad_stream.training.callbacks import ProgressBar, TqdmProgress

    rng = np.random.default_rng(0)
    X = rng.standard_normal((140_000, 3))
    y = (rng.random(140_000) < 1 / (1 + np.exp(-X @ [1.0, -2.0, 0.5]))).astype(float)

    class Seen(ProgressBar):
        def __init__(self):
            super().__init__(io.StringIO(), interval=0.0)
            self.inside = []

        def on_pass_progress(self, learner, rows):
            self.inside.append((learner.strategy.status().split(" |")[0], rows))
            super().on_pass_progress(learner, rows)

    seen, bar = Seen(), TqdmProgress(io.StringIO())
    learner = NaturalGradientLearner(make_model("logistic", 3))
    learner.fit((X, y), epochs=3, callbacks=[seen, bar])
    assert learner.samples == 3 * 140_000
    assert bar.bar.n == learner.samples  # the bar ends at the rows read, none twice
    passes = {label for label, _ in seen.inside}
    assert passes == {"epoch 2/3", "epoch 3/3"}
    for label in passes:
        rows = [r for lab, r in seen.inside if lab == label]
        assert len(rows) >= 2 and rows == sorted(rows) and rows[-1] == 140_000
    assert "\r" in seen.stream.getvalue() and "epoch 3/3" in seen.stream.getvalue()


def test_validation_of_an_lbfgs_hand_over_ends_at_the_returned_parameters(tmp_path, capsys):
    """Inside an L-BFGS round the learner's θ is the round's start: held-out evaluations
    there repeated it (an mlp fit whose one round the cap cut logged the loss of its first
    pass's θ to the end), and the last one was not the returned θ's. Now a validation
    record is written only when θ moved, and the last one is ``evaluate``'s.
    """
    import numpy as np

    from .conftest import write_group

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    y = np.tanh(X @ np.array([1.5, -2.0, 0.5])) + 0.1 * rng.standard_normal(400)
    write_group(tmp_path / "d.zarr", X=X[:300], y=y[:300], X_test=X[300:], y_test=y[300:])
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", tmp_path / "d.zarr", "--model", "mlp",
                                 "--hidden", 3, "--epochs", 40, "--out", run, "--val-x",
                                 "X_test", "--val-y", "y_test", "--val-every", 600,
                                 "--log-every", 600, "--progress", "never")
    assert code == 0, err
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["mse"] for r in records if r["event"] == "validation"]
    assert len(vals) >= 2
    assert all(a != b for a, b in zip(vals[:-1], vals[1:], strict=True))  # θ moved
    ev = run_cli(capsys, "evaluate", run, tmp_path / "d.zarr", "--x", "X_test",
                 "--y", "y_test")[1]
    assert vals[-1] == ev["mse"]
