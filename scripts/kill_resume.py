"""kill -9 (or SIGINT, SIGTERM) at random moments, then ``fit --resume`` until done: the
final parameters must equal, bit for bit, those of an uninterrupted run.

    python scripts/kill_resume.py                 # 20 trials per configuration
    python scripts/kill_resume.py --trials 3      # a quick look
    python scripts/kill_resume.py --configs sgd-dask,lbfgs-dask   # Dask drivers only
    python scripts/kill_resume.py --signal INT    # graceful stops (exit 130) instead

Each trial starts ``natgrad-stream fit`` with frequent checkpoints, kills it with SIGKILL
(``--signal``: the signal sent) after a random delay, resumes (killing again with
probability 1/2, up to three kills), and compares the final ``theta`` with the reference
run's. A kill before the first checkpoint leaves no run to resume: the trial then starts
over with ``--overwrite``, as a user would. SIGINT and SIGTERM stop a fit gracefully: it
writes a checkpoint and exits 130 (or 0 when it finished first). Prints one JSON report
(per optimizer: trials, kills, graceful stops (exit 130), identical, and the stops that
exited otherwise, e.g. a SIGINT during start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "sgd": ["--model", "logistic"],
    "momentum": ["--model", "logistic", "--optimizer", "momentum", "--lr", "0.5",
                 "--structure", "diagonal"],
    "adam": ["--model", "logistic", "--optimizer", "adam", "--average"],
    # a streaming pass, then L-BFGS rounds (the later-pass method of ICA, Ising, mlp), with
    # checkpoints due by samples inside the rounds
    "handover": ["--model", "logistic", "--refine", "lbfgs"],
    "softmax-block": ["--model", "softmax", "--structure", "block"],
    # read buffers under a byte budget that binds: one 2,048-row chunk per read (not 2)
    "sgd-budget": ["--model", "logistic", "--read-buffer-bytes", "500K"],
    "lbfgs": ["--model", "logistic", "--optimizer", "lbfgs", "--lbfgs-rounds", "4",
              "--lbfgs-iters", "8", "--batch-size", "4096"],
    # the driver of a Dask fit killed (the cluster, started by this script, stays up)
    "sgd-dask": ["--model", "logistic", "--batch-size", "512"],
    "lbfgs-dask": ["--model", "logistic", "--optimizer", "lbfgs", "--lbfgs-rounds", "4",
                   "--lbfgs-iters", "8", "--batch-size", "4096"],
}
#: The scheduler of the ``-dask`` configurations (set by :func:`main`).
DASK = {"address": None}
#: The signal that interrupts a trial's fits (set by :func:`main`; SIGKILL by default).
SIGNAL = {"number": signal.SIGKILL}
#: Exit status of a fit stopped gracefully by SIGINT or SIGTERM.
EXIT_SIGNAL = 130
#: Graceful stops that exited otherwise than 130 (or 0: finished first), counted by exit
#: status and the start of stderr's last line, by configuration.
BAD_EXITS: dict[str, dict] = {}
#: Graceful stops (exit 130) by configuration.
STOPS: dict[str, int] = {}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "natgrad_stream", *map(str, args)]


def _theta(run: Path) -> np.ndarray:
    from natgrad_stream.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.npz")["theta"]


def _extent(name: str) -> list[str]:
    """Options of every attempt (fresh or resumed): the run's length and checkpoints, and
    the cluster of a ``-dask`` configuration.
    """
    dask = ["--dask", DASK["address"]] if name.endswith("-dask") else []
    if name.startswith("lbfgs"):
        return dask
    epochs = "12" if name == "handover" else "3"  # L-BFGS rounds: complete ones and a capped one
    return ["--epochs", epochs, "--checkpoint-every", "3000", *dask]


def make_data(root: Path) -> dict[str, Path]:
    """The two datasets of the trials (logistic and softmax, 30,000 × 8)."""
    from natgrad_stream.data.datasets import make_dataset

    out = {}
    for task in ("logistic", "softmax"):
        path = root / f"{task}.zarr"
        if not path.exists():
            make_dataset(path, task=task, rows=30_000, features=8, chunk_rows=2048, seed=11)
        out[task] = path
    return out


def reference(name: str, data: Path, root: Path, *,
              warm: bool = False) -> tuple[np.ndarray, float]:
    """θ of an uninterrupted run and its wall time (with ``warm``, of a second run: the
    first may compile kernels into Numba's cache, much longer than the trials' runs).
    """
    run = root / f"ref-{name}"
    for _ in range(2 if warm else 1):
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(_cli("fit", data, "--out", run, *CONFIGS[name], *_extent(name)),
                       check=True, capture_output=True)
    return _theta(run), time.perf_counter() - t0


def _interrupt(proc, name: str) -> None:
    """Send the trials' signal to ``proc`` and wait for it to end; a graceful stop (SIGINT,
    SIGTERM) should exit 130, or 0 when the fit finished before it saw the signal (other
    exits are recorded in :data:`BAD_EXITS`; the trial goes on as after a kill).
    """
    proc.send_signal(SIGNAL["number"])
    _, err = proc.communicate()
    STOPS[name] = STOPS.get(name, 0) + (proc.returncode == EXIT_SIGNAL)
    if SIGNAL["number"] != signal.SIGKILL and proc.returncode not in (0, EXIT_SIGNAL):
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        key = f"{proc.returncode}: {last[:60]}"
        counts = BAD_EXITS.setdefault(name, {})
        counts[key] = counts.get(key, 0) + 1


def _kill_at_next_checkpoint(proc, checkpoint: Path, name: str = "") -> bool:
    """Interrupt ``proc`` right after it writes a new checkpoint; False if it ended first."""
    def stamp():
        try:
            return checkpoint.stat().st_mtime_ns
        except FileNotFoundError:
            return None
    start = stamp()
    while proc.poll() is None:
        if stamp() != start:
            _interrupt(proc, name)
            return True
        time.sleep(0.002)
    return False


def trial(name: str, data: Path, root: Path, seconds: float, rng: np.random.Generator,
          max_kills: int = 3, at_checkpoints: int = 0) -> tuple[np.ndarray, int]:
    """One killed-and-resumed run: ``(final θ, kills)``.

    Kills come after random fractions of the reference time ``seconds`` (or, with
    ``at_checkpoints=k``, right after each of the first ``k`` attempts writes a new
    checkpoint, which does not depend on the machine's load).
    """
    run = root / f"trial-{name}"
    shutil.rmtree(run, ignore_errors=True)
    kills, resume = 0, False
    while True:
        args = ["--resume"] if resume else [*CONFIGS[name], "--overwrite"]
        proc = subprocess.Popen(_cli("fit", data, "--out", run, *args, *_extent(name)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if at_checkpoints:
            if kills < at_checkpoints and _kill_at_next_checkpoint(
                    proc, run / "checkpoint.npz", name):
                kills += 1
                resume = (run / "checkpoint.npz").is_file()
                continue
            delay = None
        elif kills < max_kills and (kills == 0 or rng.random() < 0.5):
            delay = rng.uniform(0.05, 1.1)
        else:
            delay = None
        if delay is not None:
            try:
                proc.wait(timeout=delay * seconds)
            except subprocess.TimeoutExpired:
                _interrupt(proc, name)
                kills += 1
                resume = (run / "checkpoint.npz").is_file()
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: fit exited {proc.returncode}: {err.decode()}")
        return _theta(run), kills


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--signal", choices=("KILL", "INT", "TERM"), default="KILL",
                   help="the signal that interrupts the fits (default KILL)")
    args = p.parse_args(argv)
    SIGNAL["number"] = getattr(signal, f"SIG{args.signal}")
    # the fits must not inherit an ignored SIGINT (as under nohup or '&' in a script):
    # a handler here is reset to the default in each child
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(args.seed)
    report = {}
    with contextlib.ExitStack() as stack:
        if any(n.endswith("-dask") for n in args.configs.split(",")):
            import distributed

            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"))
            DASK["address"] = cluster.scheduler_address
        return _run(args, rng, report)


def _run(args, rng, report) -> int:
    with tempfile.TemporaryDirectory(prefix="natgrad-kill-") as tmp:
        root = Path(tmp)
        data = make_data(root)
        for name in args.configs.split(","):
            task = "softmax" if name.startswith("softmax") else "logistic"
            ref, seconds = reference(name, data[task], root, warm=True)
            same = kills = 0
            for _ in range(args.trials):
                theta, k = trial(name, data[task], root, seconds, rng)
                kills += k
                same += int(theta.tobytes() == ref.tobytes())
            report[name] = {"signal": args.signal, "trials": args.trials, "kills": kills,
                            "graceful_stops": STOPS.get(name, 0), "identical": same,
                            "bad_exits": BAD_EXITS.get(name, {}),
                            "reference_seconds": round(seconds, 2)}
            print(name, report[name], file=sys.stderr, flush=True)
    print(json.dumps(report))
    return 0 if all(r["identical"] == r["trials"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
