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
    lines = proc.stderr.splitlines()
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
