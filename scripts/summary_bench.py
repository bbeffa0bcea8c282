#!/usr/bin/env python
"""``summary``'s one pass against the raw read rate of its store, and its peak memory.

Usage::

    python scripts/summary_bench.py                        # 4M x 100 and 4M x 10 logistic
    python scripts/summary_bench.py --rows 1000000 --features 100 --repeats 1
    python scripts/summary_bench.py --large 100000000x10   # and one pass on 100M x 10

For each width, a logistic store (float32, zstd, 65,536-row chunks, ``make-data``'s
generator; kept under ``--root`` between runs) is read raw (zarr, X and y chunk by chunk,
nothing else, as ``scripts/bench.py`` measures it) and summarized
(:func:`natgrad_stream.inference.summary`: the model Fisher and the score outer product of
every row, at θ of a one-pass fit), alternately, ``--repeats`` times in one process: the
machine is shared, compare the ratio. The peak RSS of a summary in a fresh process is
measured on the store and on one 8 times smaller (bounded memory: the same peak).
``--large ROWSxFEATURES`` adds stores measured the same way, once (``--large-repeats``).
Writes ``scripts/results/summary-bench-latest.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from natgrad_stream.data import configure_zarr_threads
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.inference import summary
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import raw_read  # noqa: E402  (the same raw-read measure as the main benchmark)


def dataset(root: Path, rows: int, features: int) -> Path:
    """The benchmark store (generated once)."""
    path = root / f"summary-logistic-{rows}x{features}.zarr"
    if not path.exists():
        make_dataset(path, task="logistic", rows=rows, features=features, chunk_rows=65536,
                     seed=0)
    return path


def summary_rate(path: Path, model, theta) -> float:
    """Rows/s of one summary pass."""
    t0 = time.perf_counter()
    s = summary(model, theta, path)
    return s.rows / (time.perf_counter() - t0)


_RSS_CHILD = r"""
import sys
import numpy as np
from natgrad_stream.data import configure_zarr_threads
from natgrad_stream.inference import summary
from natgrad_stream.models import make_model
configure_zarr_threads()
d = int(sys.argv[2])
model = make_model("logistic", d)
summary(model, np.zeros(d + 1), sys.argv[1])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def peak_rss(path: Path, features: int) -> int:
    """Peak RSS (bytes) of a summary of ``path`` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(features)],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[-1])


def bench(root: Path, rows: int, features: int, repeats: int) -> dict:
    path = dataset(root, rows, features)
    model = make_model("logistic", features)
    learner = NaturalGradientLearner(model).fit(path, epochs=1)
    theta = learner.theta
    summary(model, theta, dataset(root, max(rows // 8, 65536), features))  # warm-up (JIT)
    raw, rate = [], []
    for _ in range(repeats):
        raw.append(raw_read(path))
        rate.append(summary_rate(path, model, theta))
        raw.append(raw_read(path))
    small = dataset(root, max(rows // 8, 65536), features)
    rss = [peak_rss(small, features), peak_rss(path, features)]
    load = os.getloadavg()[0]
    return {"rows": rows, "features": features, "repeats": repeats,
            "raw_read_rows_per_s": float(np.median(raw)), "raw_read_all": raw,
            "summary_rows_per_s": float(np.median(rate)), "summary_all": rate,
            "ratio": float(np.median(rate) / np.median(raw)),
            "peak_rss_rows": [int(zarr.open_group(str(small))["X"].shape[0]), rows],
            "peak_rss_bytes": rss, "load_after": load}


def markdown(report: dict) -> str:
    load = " to ".join(f"{v:.1f}" for v in report["load_average"])
    lines = [f"### summary benchmark ({report['date']}, {report['machine']}, load average "
             f"{load})", "",
             "One `summary` pass (model Fisher and HC0 meat of every row) against the raw "
             "zarr read of the same store, alternating in one process (medians). Logistic, "
             "float32, zstd, 65,536-row chunks.", "",
             "| rows × features | raw read rows/s | summary rows/s | × raw read | "
             "peak RSS (rows: MiB) | load after |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        rss = ", ".join(f"{n:,}: {b / 2**20:.0f}"
                        for n, b in zip(r["peak_rss_rows"], r["peak_rss_bytes"], strict=True))
        load = f"{r['load_after']:.1f}" if "load_after" in r else ""
        lines.append(f"| {r['rows']:,} × {r['features']} | "
                     f"{r['raw_read_rows_per_s']:,.0f} | "
                     f"{r['summary_rows_per_s']:,.0f} | {r['ratio']:.2f} | {rss} | {load} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--features", type=int, nargs="+", default=[100, 10])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large", nargs="*", default=[], metavar="ROWSxFEATURES",
                   help="further stores, e.g. 100000000x10 (generated once: minutes, ~4 GB)")
    p.add_argument("--large-repeats", type=int, default=1)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ngs-bench")
    p.add_argument("--out", type=Path, default=HERE / "results" / "summary-bench-latest")
    args = p.parse_args(argv)
    configure_zarr_threads()
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    load = [os.getloadavg()[0]]
    sizes = [(args.rows, d, args.repeats) for d in args.features]
    for size in args.large:
        rows, _, d = size.lower().partition("x")
        sizes.append((int(rows), int(d), args.large_repeats))
    for rows, d, repeats in sizes:
        results.append(bench(args.root, rows, d, repeats))
        print(json.dumps(results[-1]), file=sys.stderr)
    load.append(os.getloadavg()[0])
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
              "load_average": load, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
