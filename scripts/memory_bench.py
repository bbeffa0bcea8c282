#!/usr/bin/env python
"""Peak RSS of a default one-pass ``fit`` at d = 300 and d = 3,000 (issue 18: memory in
bytes): the read buffers are sized by ``--read-buffer-bytes``, so beyond the model's own
state the peak should not grow with the number of features.

Usage::

    python scripts/memory_bench.py [--dir bench-data/memory] [--budgets default,none]
                                   [--structures full,diagonal] [--out scripts/results/memory]

Data: synthetic logistic data from ``make-data`` with the **same bytes per chunk** and the
same bytes in all at both widths: d = 300 in 65,536-row chunks (600,000 rows), d = 3,000 in
6,553-row chunks (60,000 rows), float32, about 720 MB each. (With the same *rows* per chunk
one chunk at d = 3,000 is 786 MB, larger than the default budget: the reader must hold at
least three whole chunks, see ``natgrad_stream.data.budget``, so such data is rechunked.)

Each ``natgrad-stream fit DATA --model logistic --epochs E [--structure S]
[--read-buffer-bytes B]`` (E = 1 by default, ``--epochs``) runs in its own subprocess; its
peak RSS is the ``ru_maxrss`` of ``os.wait4`` on that child. ``none`` is the row-sized plan
of earlier releases (4 buffers of 2 chunks in the stream, 4 reads of 65,536 rows in a pass
after the first). Also printed: the stream's planned read-buffer bytes and the model's P×P
metric (one float64 matrix; the learner keeps a few). Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (features, rows, rows per chunk): the same bytes per chunk and in all at both widths.
SHAPES = ((300, 600_000, 65_536), (3000, 60_000, 6_553))


def make_data(root: Path, d: int, rows: int, chunk_rows: int) -> Path:
    """The dataset of one width (written once, by ``make-data``)."""
    path = root / f"logistic-d{d}.zarr"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "natgrad_stream", "make-data", str(path),
                        "--task", "logistic", "--rows", str(rows), "--features", str(d),
                        "--chunk-rows", str(chunk_rows), "--seed", "1"], check=True)
    return path


def peak_rss_of(cmd: list[str]) -> tuple[int, float, int, str]:
    """``(peak RSS in bytes, seconds, exit status, last stderr line)`` of running ``cmd``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    tail = [line for line in err.splitlines() if line.strip()][-1:] or [""]
    return usage.ru_maxrss * 1024, time.perf_counter() - t0, proc.returncode, tail[0]


def planned_read_bytes(path: Path, budget) -> int:
    """Bytes of the training stream's buffers under ``budget`` (the learner's batch size)."""
    from natgrad_stream.data import open_zarr

    return open_zarr(path).read_plan(read_buffer_bytes=budget).nbytes


def run_one(path: Path, out: Path, structure: str, budget: str, epochs: int) -> dict:
    """One fit in a subprocess, and what it measured."""
    from natgrad_stream.training.options import byte_size

    cmd = [sys.executable, "-m", "natgrad_stream", "fit", str(path), "--model", "logistic",
           "--epochs", str(epochs), "--structure", structure, "--out", str(out), "--overwrite",
           "--progress", "never"]
    if budget != "default":
        cmd += ["--read-buffer-bytes", budget]
    rss, seconds, status, tail = peak_rss_of(cmd)
    from natgrad_stream._constants import DEFAULT_READ_BUFFER_BYTES

    value = DEFAULT_READ_BUFFER_BYTES if budget == "default" else byte_size("b", budget)
    return {"rss": rss, "seconds": seconds, "exit": status, "stderr": tail,
            "read_plan_bytes": planned_read_bytes(path, value)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="bench-data/memory")
    ap.add_argument("--budgets", default="default,none",
                    help="read budgets, comma-separated: default, none or a size (512M)")
    ap.add_argument("--structures", default="diagonal,full")
    ap.add_argument("--epochs", type=int, default=1, help="passes of each fit (the "
                    "passes after the first read 65,536-row evaluation batches)")
    ap.add_argument("--out", default=None, help="also write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for d, n, chunk_rows in SHAPES:
        path = make_data(root, d, n, chunk_rows)
        for structure in args.structures.split(","):
            for budget in args.budgets.split(","):
                got = run_one(path, root / f"run-d{d}-{structure}-{budget}", structure, budget,
                              args.epochs)
                metric = (d + 1) ** 2 * 8 if structure == "full" else (d + 1) * 8
                rows.append({"d": d, "rows": n, "chunk_rows": chunk_rows,
                             "structure": structure, "budget": budget, "epochs": args.epochs,
                             "metric_bytes": metric, **got})
                print(f"d={d} {structure} budget={budget}: {got['rss'] / 2**20:.0f} MiB "
                      f"peak RSS, exit {got['exit']}, {got['seconds']:.0f} s", flush=True)
    lines = ["| d | rows × chunk rows | structure | read budget | stream plan | P×P metric "
             "| peak RSS | ratio to d=300 | exit | s |", "|---" * 10 + "|"]
    for r in rows:
        base = next(b for b in rows if b["d"] == 300 and b["structure"] == r["structure"]
                    and b["budget"] == r["budget"])
        r["ratio_to_d300"] = r["rss"] / base["rss"]
        lines.append(f"| {r['d']:,} | {r['rows']:,} × {r['chunk_rows']:,} | {r['structure']} "
                     f"| {r['budget']} | {r['read_plan_bytes'] / 2**20:.0f} MiB "
                     f"| {r['metric_bytes'] / 2**20:.1f} MiB | {r['rss'] / 2**20:.0f} MiB "
                     f"| {r['ratio_to_d300']:.2f} | {r['exit']} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(rows))
    if args.out:
        Path(args.out + ".md").write_text(table + "\n")
        Path(args.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
