"""Run safety: one writer per run directory, checkpoints a long run can trust, the data's
identity on resume, OS failures as one line with exit 2. Each test failed on the code
before these guards (a second process, a damaged checkpoint, other data or a full disk gave
a traceback or a silent wrong answer).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal

from natgrad_stream.checkpoint import load_checkpoint
from natgrad_stream.data import append_rows
from natgrad_stream.data.datasets import make_dataset

from .test_cli import _digest, run_cli


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=5000, features=3, chunk_rows=500, seed=2)
    return path


def _fit(capsys, data, run, *args):
    return run_cli(capsys, "fit", data, "--out", run, *args)


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(data, tmp_path,
                                                                            capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from natgrad_stream.app.runs import run_lock
            with run_lock(Path({str(run)!r})):
                print("locked", flush=True)
                time.sleep(60)
            """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out, err = _fit(capsys, data, run, "--model", "logistic")
        assert code == 2 and out is None
        assert f"in use by process {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert not (run / "checkpoint.npz").exists()
    finally:
        holder.kill()  # dies holding the lock: the kernel releases it
        holder.wait()
        holder.stdout.close()
    code, summary, err = _fit(capsys, data, run, "--model", "logistic")
    assert code == 0, err


def test_run_files_are_never_written_through_symlinks(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(target)
    code, _, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 2 and "metrics.jsonl" in err
    assert target.read_text() == "precious\n"


def _flip_byte(path, where=0.5):
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * where)
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_or_is_refused(data, tmp_path,
                                                                           capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--epochs", 1)[0] == 0
    assert _fit(capsys, data, run, "--resume", "--epochs", 2)[0] == 0
    assert (run / "checkpoint.1.npz").is_file()  # --keep-checkpoints 2 by default
    epoch_one = load_checkpoint(run / "checkpoint.1.npz")["theta"]
    _flip_byte(run / "checkpoint.npz")
    stale = run / ".checkpoint-dead.npz.tmp"
    stale.write_bytes(b"left by a killed writer")
    code, summary, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 0, err
    assert "warning" in err and "using the older checkpoint" in err and "checkpoint.1.npz (" in err
    assert summary["samples"] == 10_000  # epoch 2 again, from the end of epoch 1
    assert not stale.exists()
    # the same as continuing from epoch 1 without the damage
    again = tmp_path / "again"
    assert _fit(capsys, data, again, "--model", "logistic", "--epochs", 1)[0] == 0
    assert_array_equal(load_checkpoint(again / "checkpoint.npz")["theta"], epoch_one)
    assert _fit(capsys, data, again, "--resume", "--epochs", 2)[0] == 0
    assert_array_equal(load_checkpoint(run / "checkpoint.npz")["theta"],
                       load_checkpoint(again / "checkpoint.npz")["theta"])
    # no good checkpoint left: a clear refusal, files untouched
    for name in ("checkpoint.npz", "checkpoint.1.npz"):
        path = run / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    before = {p.name: _digest(p) for p in run.glob("checkpoint*.npz")}
    code, out, err = _fit(capsys, data, run, "--resume", "--epochs", 3)
    assert code == 2 and out is None and "no good checkpoint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert before == {p.name: _digest(p) for p in run.glob("checkpoint*.npz")}


def test_checkpoint_checksums_catch_damage_inside_an_array(tmp_path):
    from natgrad_stream.checkpoint import save_checkpoint
    from natgrad_stream.errors import CheckpointError

    path = tmp_path / "c.npz"
    save_checkpoint(path, {"theta": np.arange(4.0), "n": 3})
    raw = bytearray(path.read_bytes())
    i = raw.find(np.arange(4.0).tobytes())
    raw[i + 9] ^= 0x01  # one bit of θ; the zip member is stored, so only a checksum sees it
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged|unreadable"):
        load_checkpoint(path)


def test_periodic_checkpoints_by_wall_time_keep_the_last_k(data, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _fit(capsys, data, run, "--model", "logistic", "--epochs", 1,
                        "--checkpoint-seconds", 1e-6, "--keep-checkpoints", 3)
    assert code == 0, err
    names = sorted(p.name for p in run.glob("checkpoint*.npz"))
    assert names == ["checkpoint.1.npz", "checkpoint.2.npz", "checkpoint.npz"]
    assert load_checkpoint(run / "checkpoint.2.npz")["counters"]["samples"] < 5000


def test_a_full_disk_exits_2_naming_the_file_and_keeps_the_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    before = _digest(run / "checkpoint.npz")
    size = (run / "checkpoint.npz").stat().st_size
    log_size = (run / "metrics.jsonl").stat().st_size

    def full_disk():  # files may not grow past a limit: writes fail with EFBIG
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = max(size // 2, log_size + 4096)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", "fit", str(data), "--out",
                           str(run), "--resume", "--epochs", "2"], preexec_fn=full_disk,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "checkpoint.npz" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _digest(run / "checkpoint.npz") == before
    assert not list(run.glob(".checkpoint-*.tmp"))
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "error"  # never an end record claiming success


def test_a_missing_path_and_an_unwritable_out_are_one_line(data, tmp_path, capsys):
    code, _, err = _fit(capsys, tmp_path / "nowhere.zarr", tmp_path / "r", "--model",
                        "logistic")
    assert code == 2 and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _fit(capsys, data, blocker / "run", "--model", "logistic")
    assert code == 2 and "file" in err and len(err.strip().splitlines()) == 1


def test_second_sigint_lets_a_checkpoint_being_written_finish(monkeypatch):
    from natgrad_stream.app.cli import _GracefulStop
    from natgrad_stream.training.checkpoint import WRITING

    stop = _GracefulStop()
    stop._handle(signal.SIGINT, None)
    WRITING.set()
    try:
        stop._handle(signal.SIGINT, None)  # deferred: no KeyboardInterrupt
    finally:
        WRITING.clear()
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_resume_on_other_data_is_refused_naming_what_differs(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--epochs", 1,
                "--max-samples", 2000)[0] == 0
    other = tmp_path / "other.zarr"  # same width, other rows
    make_dataset(other, task="logistic", rows=5000, features=3, chunk_rows=500, seed=3)
    before = _digest(run / "checkpoint.npz")
    code, _, err = _fit(capsys, other, run, "--resume")
    assert code == 2 and "is not the data the run" in err and "array 'X' has other values" \
        in err and str(data) in err
    assert _digest(run / "checkpoint.npz") == before
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == str(data)
    # the same store moved elsewhere is the same data: a warning, and the run continues
    moved = tmp_path / "moved.zarr"
    shutil.copytree(data, moved)
    code, summary, err = _fit(capsys, moved, run, "--resume")
    assert code == 0 and "moved" in err and summary["samples"] == 5000
    assert json.loads((run / "run.json").read_text())["data"] == str(moved)


def _append(path, rows, tmp_path):
    """Append ``rows`` rows drawn from the same generator as the fixture's."""
    more = tmp_path / f"more-{rows}.zarr"
    if not more.exists():
        make_dataset(more, task="logistic", rows=5000 + rows, features=3, chunk_rows=500,
                     seed=2)
    src = zarr.open_group(str(more), mode="r")
    n = zarr.open_group(str(path), mode="r")["X"].shape[0]
    # the project's writer, which keeps the store's manifest (a plain zarr append is refused)
    append_rows(str(path), **{name: src[name][n:n + rows] for name in ("X", "y")})


def test_rows_appended_mid_epoch_join_at_the_next_epoch(data, tmp_path, capsys):
    """Interrupted mid-epoch, rows appended, resumed: the epoch finishes over the rows it
    planned and the next covers all of them — the same parameters as a run whose first
    epoch ended before the append.
    """
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(data, a)
    shutil.copytree(data, b)
    ra, rb = tmp_path / "ra", tmp_path / "rb"
    assert _fit(capsys, a, ra, "--model", "logistic", "--seed", 4, "--epochs", 1)[0] == 0
    code, s, _ = _fit(capsys, b, rb, "--model", "logistic", "--seed", 4, "--epochs", 1,
                      "--max-samples", 2500)
    assert code == 0 and s["interrupted"] and s["samples"] < 5000
    for path in (a, b):
        _append(path, 1200, tmp_path)
    for run, path in ((ra, a), (rb, b)):
        code, summary, err = _fit(capsys, path, run, "--resume", "--epochs", 2)
        assert code == 0 and "appended" in err, err
        assert summary["samples"] == 5000 + 6200
    assert_array_equal(load_checkpoint(ra / "checkpoint.npz")["theta"],
                       load_checkpoint(rb / "checkpoint.npz")["theta"])


def test_concurrent_cli_fits_on_one_run_directory(data, tmp_path):
    """Two real processes started together on one directory: exactly one fits."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "natgrad_stream", "fit", str(data), "--out", str(run),
           "--model", "logistic", "--epochs", "20"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = " ".join(e for _, e in outs)
    assert codes == [0, 2], errs
    assert "in use by process" in errs or "already holds a run" in errs
    time.sleep(0)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("start") == 1
    assert os.path.exists(run / "run.json")


def test_a_diverging_run_stops_with_exit_1_and_keeps_the_last_checkpoint(data, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    before = _digest(run / "checkpoint.npz")
    code, out, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 0
    fresh = tmp_path / "fresh"
    code, out, err = _fit(capsys, data, fresh, "--model", "logistic", "--lr", 1e6)
    assert code == 1 and out is None and "diverging" in err and "rolled back" in err
    assert not (fresh / "checkpoint.npz").exists()  # nothing garbage was saved
    records = [json.loads(ln) for ln in (fresh / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "error" and records[-1]["type"] == "NumericalError"
    # the guard can be relaxed or turned off
    code, summary, err = _fit(capsys, data, tmp_path / "off", "--model", "logistic", "--lr",
                              1e6, "--divergence-factor", "none")
    assert code == 0
    assert _digest(run / "checkpoint.npz") != before


def test_the_divergence_guard_rolls_the_python_learner_back():
    from natgrad_stream.errors import NumericalError
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 3)) * [1.0, 30.0, 0.1] + [0.0, 5.0, 0.0]
    y = (rng.random(40_000) < 1 / (1 + np.exp(-X @ [1.0, 0.05, 2.0]))).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 3), lr=1e6, batch_size=500)
    with pytest.raises(NumericalError, match="after 3 step cuts"), \
            pytest.warns(RuntimeWarning, match="rolled back"):
        learner.fit((X, y))
    theta = learner.theta
    loss = np.mean(np.logaddexp(0, X @ theta[:-1] + theta[-1]) - y * (X @ theta[:-1] + theta[-1]))
    assert np.isfinite(loss) and loss < 10 * 0.7  # rolled back to a good window's end


def test_a_too_long_step_is_rolled_back_and_cut_until_the_fit_converges(tmp_path):
    """A constant natural step of 30 overshoots (error × −29 per step in whitened
    coordinates): the guard rolls back and cuts it to 3, then 0.3, which converges; each
    rollback is logged.
    """
    from natgrad_stream.callbacks import MetricsLogger
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60_000, 3)) * [1.0, 30.0, 0.1] + [0.0, 5.0, 0.0]
    y = (rng.random(60_000) < 1 / (1 + np.exp(-X @ [1.0, 0.05, 2.0]))).astype(float)
    log = tmp_path / "log.jsonl"
    learner = NaturalGradientLearner(make_model("logistic", 3), lr=30.0,
                                     step_schedule="constant", batch_size=500)
    with pytest.warns(RuntimeWarning, match="rolled back"):
        learner.fit((X, y), callbacks=[MetricsLogger(log)])
    rollbacks = [r for r in map(json.loads, log.read_text().splitlines())
                 if r["event"] == "rollback"]
    assert [r["step_scale"] for r in rollbacks] == pytest.approx([0.1, 0.01])
    theta = learner.theta
    z = X @ theta[:-1] + theta[-1]
    loss = np.mean(np.logaddexp(0, z) - y * z)
    ref = NaturalGradientLearner(make_model("logistic", 3), batch_size=500).fit((X, y))
    z = X @ ref.theta[:-1] + ref.theta[-1]
    assert loss < 1.01 * np.mean(np.logaddexp(0, z) - y * z)


@pytest.fixture()
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), where this machine allows mounting one."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_really_full_and_a_read_only_disk(data, small_disk, capsys):
    run = small_disk / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    before = _digest(run / "checkpoint.npz")
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(free - 2048, 0))
    code, out, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 2 and out is None and "No space left on device" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _digest(run / "checkpoint.npz") == before
    assert not list(run.glob(".checkpoint-*.tmp"))
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"event": "end"' not in last or '"epochs": 1' in last  # no false success
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code, out, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 2 and "Read-only file system" in err and len(err.strip().splitlines()) == 1
    assert _digest(run / "checkpoint.npz") == before


@pytest.fixture()
def linear_data(tmp_path):
    path = tmp_path / "lin.zarr"
    make_dataset(path, task="linear", rows=40_000, features=3, chunk_rows=4096, seed=3)
    return path


def test_a_rollback_relearns_the_rolled_back_rows_and_resumes_exactly(linear_data, tmp_path,
                                                                      capsys):
    """A constant step of 30 diverges; each rollback re-reads its window (no row is
    skipped: samples = rows of the pass), and a run split by --max-samples and resumed
    equals the uninterrupted one bit for bit (the rollback point is checkpointed).
    """
    opts = ["--model", "linear", "--lr", 30, "--step-schedule", "constant",
            "--batch-size", 256, "--epochs", 1]
    whole, part = tmp_path / "whole", tmp_path / "part"
    code, summary, err = _fit(capsys, linear_data, whole, *opts)
    assert code == 0 and "rolled back" in err, err
    assert summary["samples"] == 40_000 and summary["epochs"] == 1
    records = [json.loads(ln) for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    assert any(r["event"] == "rollback" for r in records)
    for cap in (1024, 3000):
        shutil.rmtree(part, ignore_errors=True)
        code, s1, _ = _fit(capsys, linear_data, part, *opts, "--max-samples", cap)
        assert code == 0 and s1["interrupted"]
        code, s2, err = _fit(capsys, linear_data, part, "--resume")
        assert code == 0, err
        assert_array_equal(load_checkpoint(part / "checkpoint.npz")["theta"],
                           load_checkpoint(whole / "checkpoint.npz")["theta"])


def test_overwrite_leaves_no_older_checkpoint_of_the_replaced_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    assert _fit(capsys, data, run, "--resume", "--epochs", 2)[0] == 0
    assert (run / "checkpoint.1.npz").exists()
    assert _fit(capsys, data, run, "--model", "logistic", "--overwrite", "--seed", 5)[0] == 0
    assert not list(run.glob("checkpoint.[0-9]*.npz"))
    _flip_byte(run / "checkpoint.npz")
    code, _, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 2 and "no good checkpoint" in err  # never the replaced run's state


def test_a_damaged_checkpoint_is_set_aside_and_never_rotated_over_a_good_one(data, tmp_path,
                                                                            capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic")[0] == 0
    assert _fit(capsys, data, run, "--resume", "--epochs", 2)[0] == 0
    good = _digest(run / "checkpoint.1.npz")
    _flip_byte(run / "checkpoint.npz")
    assert _fit(capsys, data, run, "--resume", "--epochs", 2)[0] == 0  # falls back
    assert (run / "checkpoint.damaged-0.npz").exists()
    assert _digest(run / "checkpoint.1.npz") == good  # the good one rotated, not the bad
    load_checkpoint(run / "checkpoint.npz")
    load_checkpoint(run / "checkpoint.1.npz")


def test_rotation_keeps_the_newest_checkpoint_in_place(tmp_path):
    from natgrad_stream.checkpoint import save_checkpoint

    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a": np.zeros(2)}, keep=3)
    first_inode = path.stat().st_ino
    save_checkpoint(path, {"a": np.ones(2)}, keep=3)
    assert (tmp_path / "c.1.npz").stat().st_ino == first_inode  # a link, not a move
    assert_array_equal(load_checkpoint(tmp_path / "c.1.npz")["a"], np.zeros(2))
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_follow_stops_at_max_samples_without_waiting_for_rows(data, tmp_path):
    run = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", "fit", str(data), "--out",
                           str(run), "--model", "logistic", "--follow", "--max-samples",
                           "5000", "--poll-seconds", "0.05"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 30
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 5000 and summary["interrupted"]


def test_a_fit_that_finds_the_new_run_locked_leaves_the_holders_directory(data, tmp_path,
                                                                          monkeypatch):
    """Two fits started together on a new directory: the one that lost the lock removed
    the lock file and the directory it had seen missing, which the winner had just made,
    and the winner's first write failed ("run/.run-….json.tmp: No such file or
    directory"; seen in the concurrent-fits test under load). Only a fit that held the lock
    cleans up after itself.
    """
    import contextlib

    from natgrad_stream.app import runs
    from natgrad_stream.errors import RunDirectoryError

    run = tmp_path / "run"
    real = runs.run_lock
    holder = contextlib.ExitStack()

    @contextlib.contextmanager
    def racing(run_dir):
        holder.enter_context(real(run_dir))  # the other process made it and locked it
        with real(run_dir):
            yield

    monkeypatch.setattr(runs, "run_lock", racing)
    with holder, pytest.raises(RunDirectoryError, match="in use by process"):
        runs.fit_run(data, run, model="logistic", epochs=1)
    assert (run / ".lock").is_file()  # (the winner's, released only now)
