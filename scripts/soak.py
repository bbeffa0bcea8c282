"""Soak benchmark: a long run with periodic checkpoints and injected kills.

    python scripts/soak.py                           # 50 passes over 8M × 100 (≈ 3.2 GB)
    python scripts/soak.py --rows 400000 --passes 5  # a quick look

Runs ``natgrad-stream fit --epochs P --checkpoint-seconds S`` over a multi-GB store,
SIGKILLs it ``--kills`` times at random moments and resumes it with ``--resume`` each time,
then reports:

- peak RSS of every process segment (``VmHWM``, polled), which must stay flat;
- rows/s of every pass (from the run's own log, one progress record per pass), first
  passes against last ones;
- checkpoint overhead: the final state's checkpoint write time, times the writes per
  second at ``--checkpoint-seconds``, as a fraction of the run.

Writes ``scripts/results/soak-latest.{json,md}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _segment(cmd: list[str], kill_after: float | None) -> dict:
    """Run one process segment; kill it after ``kill_after`` seconds if given."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0.0
    killed = False
    while proc.poll() is None:
        rss = _peak_rss_mib(proc.pid)
        peak = max(peak, rss or 0.0)
        if kill_after is not None and time.perf_counter() - t0 >= kill_after:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    out, err = proc.communicate()
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"fit exited {proc.returncode}: {err.decode()}")
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak, 1),
            "killed": killed, "exit": proc.returncode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8_000_000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--passes", type=int, default=50)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--checkpoint-seconds", type=float, default=10.0)
    p.add_argument("--data", default=None, help="store to reuse or create")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak-latest"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="natgrad-soak-"))
    data = Path(args.data) if args.data else tmp / "soak.zarr"
    if not data.exists():
        from natgrad_stream.data.datasets import make_dataset

        print(f"writing {args.rows:,} × {args.features} to {data} ...", file=sys.stderr)
        make_dataset(data, task="logistic", rows=args.rows, features=args.features, seed=1)
    store_bytes = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    run = tmp / "run"
    fit = [sys.executable, "-m", "natgrad_stream", "fit", str(data), "--out", str(run),
           "--checkpoint-seconds", str(args.checkpoint_seconds), "--log-every", str(args.rows)]
    # a short first segment sizes the kills: one pass's time
    segments = []
    t_start = time.perf_counter()
    probe = _segment([*fit, "--epochs", "1", "--model", "logistic"], None)
    per_pass = probe["seconds"]
    segments.append({**probe, "what": "first pass"})
    kill_times = sorted(rng.uniform(0.2, 0.8, args.kills) * per_pass * args.passes)
    elapsed = 0.0
    for k in range(args.kills + 1):
        after = None if k == args.kills else max(kill_times[k] - elapsed, per_pass)
        seg = _segment([*fit, "--epochs", str(args.passes), "--resume"], after)
        elapsed += seg["seconds"]
        segments.append({**seg, "what": "resume" + (" (killed)" if seg["killed"] else "")})
        print(segments[-1], file=sys.stderr, flush=True)
        if not seg["killed"]:
            break
    total_seconds = time.perf_counter() - t_start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["rows_per_s"] for r in records if r["event"] == "progress"]
    ends = [r for r in records if r["event"] == "end"]
    # checkpoint overhead: the write time of the final state
    from natgrad_stream.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "checkpoint.npz")
    writes = []
    for _ in range(10):
        t0 = time.perf_counter()
        save_checkpoint(tmp / "probe.npz", state)
        writes.append(time.perf_counter() - t0)
    write_s = float(np.median(writes))
    k = max(1, min(10, len(rates) // 3))
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores", "rows": args.rows, "features": args.features,
        "store_gib": round(store_bytes / 2**30, 2), "passes": args.passes,
        "kills": sum(s["killed"] for s in segments), "seconds": round(total_seconds, 1),
        "final_samples": ends[-1]["samples"] if ends else None,
        "segments": segments,
        "rows_per_s_per_pass": [round(r) for r in rates],
        "rows_per_s_first": round(float(np.median(rates[:k]))),
        "rows_per_s_last": round(float(np.median(rates[-k:]))),
        "peak_rss_mib_max": max(s["peak_rss_mib"] for s in segments),
        "peak_rss_mib_min": min(s["peak_rss_mib"] for s in segments),
        "checkpoint_write_s": round(write_s, 4),
        "checkpoint_bytes": (run / "checkpoint.npz").stat().st_size,
        "checkpoint_overhead": round(write_s / args.checkpoint_seconds, 5),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"### Soak ({report['date']}, {report['machine']})",
          f"{args.rows:,} × {args.features} float32 logistic, {report['store_gib']} GiB "
          f"zstd store; {args.passes} passes with checkpoints every "
          f"{args.checkpoint_seconds:g} s and {report['kills']} kill -9s, each resumed.",
          "",
          "| measure | value |", "|---|---|",
          f"| samples learned | {report['final_samples']:,} |" if ends else "",
          f"| rows/s, median of the first {k} passes | {report['rows_per_s_first']:,} |",
          f"| rows/s, median of the last {k} passes | {report['rows_per_s_last']:,} |",
          f"| peak RSS per process segment (MiB) | "
          f"{', '.join(str(s['peak_rss_mib']) for s in segments)} |",
          f"| checkpoint write (final state, {report['checkpoint_bytes']:,} bytes) | "
          f"{write_s * 1e3:.1f} ms = {100 * report['checkpoint_overhead']:.3f}% of the run "
          f"at one per {args.checkpoint_seconds:g} s |",
          f"| wall time | {report['seconds']} s |"]
    out.with_suffix(".md").write_text("\n".join(line for line in md if line) + "\n")
    print(json.dumps({k_: v for k_, v in report.items() if k_ not in
                      ("segments", "rows_per_s_per_pass")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
