"""``fit --follow`` against a concurrent writer process: every committed row learned exactly
once, also across kill -9 and ``--resume``; SIGTERM stops resumably; clear refusals.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from natgrad_stream.checkpoint import load_checkpoint
from natgrad_stream.data.datasets import make_dataset

from .test_cli import run_cli

ROWS, APPENDS, EACH = 2000, 12, 250


@pytest.fixture()
def stores(tmp_path):
    """A store of 2,000 rows to follow, and a source of the rows a writer will append."""
    full = tmp_path / "full.zarr"
    make_dataset(full, task="logistic", rows=ROWS + APPENDS * EACH, features=4,
                 chunk_rows=500, seed=5)
    live = tmp_path / "live.zarr"
    make_dataset(live, task="logistic", rows=ROWS, features=4, chunk_rows=500, seed=5)
    return live, full


def _writer(live, full, pause=0.15):
    code = textwrap.dedent(f"""
        import time, zarr
        from natgrad_stream.data import append_rows
        src = zarr.open_group({str(full)!r}, mode="r")
        for k in range({APPENDS}):
            a = {ROWS} + k * {EACH}
            append_rows({str(live)!r}, X=src["X"][a:a + {EACH}], y=src["y"][a:a + {EACH}])
            time.sleep({pause})
        """)
    return subprocess.Popen([sys.executable, "-c", code])


def _total_committed(live):
    import zarr

    return zarr.open_group(str(live), mode="r").attrs["natgrad_stream"]["committed_rows"]


def test_follow_learns_every_appended_row_once(stores, tmp_path, capsys):
    live, full = stores
    writer = _writer(live, full)
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", live, "--model", "logistic", "--out", run,
                                 "--follow", "--poll-seconds", 0.05, "--idle-timeout", 2)
    assert writer.wait(timeout=60) == 0
    assert code == 0, err
    assert summary["samples"] == ROWS + APPENDS * EACH == _total_committed(live)
    assert not summary["interrupted"]
    state = load_checkpoint(run / "checkpoint.npz")
    assert state["cursor"]["row"] == ROWS + APPENDS * EACH
    info = json.loads((run / "run.json").read_text())["fit_options"]
    assert info["follow"] is True and info["idle_timeout"] == 2.0


def test_follow_killed_and_resumed_learns_each_row_once(stores, tmp_path, capsys):
    live, full = stores
    run = tmp_path / "run"
    writer = _writer(live, full, pause=0.2)
    fit = subprocess.Popen([sys.executable, "-m", "natgrad_stream", "fit", str(live), "--model",
                            "logistic", "--out", str(run), "--follow", "--poll-seconds", "0.05",
                            "--checkpoint-every", "500"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.npz").exists() or \
            load_checkpoint(run / "checkpoint.npz")["counters"]["samples"] < ROWS + EACH:
        assert time.monotonic() < deadline and fit.poll() is None
        time.sleep(0.05)
    fit.kill()  # kill -9 while following
    fit.wait()
    fit.stderr.close()
    learned = load_checkpoint(run / "checkpoint.npz")["counters"]["samples"]
    assert learned < ROWS + APPENDS * EACH
    code, summary, err = run_cli(capsys, "fit", live, "--out", run, "--resume",
                                 "--idle-timeout", 2)  # follow mode is the run's
    assert writer.wait(timeout=60) == 0
    assert code == 0, err
    assert summary["samples"] == ROWS + APPENDS * EACH == _total_committed(live)
    assert load_checkpoint(run / "checkpoint.npz")["cursor"]["row"] == ROWS + APPENDS * EACH


def test_sigterm_stops_a_follow_run_resumably(stores, tmp_path):
    live, _ = stores
    run = tmp_path / "run"
    fit = subprocess.Popen([sys.executable, "-m", "natgrad_stream", "fit", str(live), "--model",
                            "logistic", "--out", str(run), "--follow", "--poll-seconds", "0.05"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists():  # started: it waits for rows after 2,000
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    fit.send_signal(signal.SIGTERM)
    out, err = fit.communicate(timeout=60)
    assert fit.returncode == 130, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == ROWS and summary["interrupted"]
    assert load_checkpoint(run / "checkpoint.npz")["cursor"]["row"] == ROWS


def test_follow_refusals(stores, tmp_path, capsys):
    live, _ = stores
    for i, (args, phrase) in enumerate([
            (["--optimizer", "lbfgs"], "--follow does not apply to --optimizer lbfgs"),
            (["--epochs", 2], "--epochs does not apply to --follow"),
    ]):
        code, out, err = run_cli(capsys, "fit", live, "--model", "logistic", "--out",
                                 tmp_path / f"r{i}", "--follow", *args)
        assert code == 2 and phrase in err, err
    code, _, err = run_cli(capsys, "fit", live, "--model", "logistic", "--out",
                           tmp_path / "r9", "--shuffle-window", 100)
    assert code == 2 and "--shuffle-window applies only with --follow" in err
