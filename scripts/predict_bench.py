#!/usr/bin/env python
"""Prediction throughput: ``natgrad-stream predict`` against the raw read rate of its store.

Usage::

    python scripts/predict_bench.py                  # 4M x 100 logistic store, 3 repeats
    python scripts/predict_bench.py --rows 1000000   # smaller

The store is written once with ``natgrad-stream make-data`` (float32, 65,536-row chunks,
checksummed zstd) under ``--data``, and a run fitted on it with one streaming pass
(``fit --epochs 1``). Each repeat times, in one process and in alternation (this machine
is shared and noisy: compare the ratios), in wall and in CPU time, the raw read (every
chunk of ``X`` read and decompressed by zarr, nothing else: the data ``predict`` needs)
and ``predict`` writing each output format (probabilities and classes). Writes
``scripts/results/predict-latest.json`` and ``.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from natgrad_stream.app.predict import predict_run
from natgrad_stream.data import as_source, configure_zarr_threads

HERE = Path(__file__).resolve().parent
FORMATS = (".zarr", ".parquet", ".csv")


def cli(*args) -> dict:
    """Run ``natgrad-stream ARGS`` in a subprocess; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run([sys.executable, "-m", "natgrad_stream", *map(str, args)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"natgrad-stream {args[0]} failed: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(root: Path, rows: int, features: int) -> tuple[Path, Path]:
    """The store (make-data) and a run fitted on it (fit --epochs 1), made once."""
    data = root / f"predict-logistic-{rows}x{features}.zarr"
    run = root / f"predict-run-{rows}x{features}"
    if not data.exists():
        print(f"make-data {data}...", file=sys.stderr)
        cli("make-data", data, "--task", "logistic", "--rows", rows, "--features", features,
            "--chunk-rows", 65536)
    if not (run / "checkpoint.npz").exists():
        print(f"fit {run}...", file=sys.stderr)
        cli("fit", data, "--model", "logistic", "--out", run, "--epochs", 1, "--overwrite",
            "--progress", "never")
    return data, run


def raw_read(path: Path) -> tuple[float, float]:
    """Rows/s reading and decompressing every chunk of X with zarr, nothing else: per
    second of wall time and per second of CPU time (all threads).
    """
    X = zarr.open_group(str(path), mode="r")["X"]
    R, n = X.chunks[0], X.shape[0]
    t0, c0 = time.perf_counter(), time.process_time()
    for a in range(0, n, R):
        X[a:a + R]
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def reader_only(path: Path) -> tuple[float, float]:
    """Rows/s of predict's reads alone: natgrad_stream's reader over X in row order, with
    its checks (finiteness, manifests, checksums), nothing computed or written.
    """
    source = as_source(str(path), y=None)
    t0, c0 = time.perf_counter(), time.process_time()
    with source.batches(batch_size=source.n_rows, shuffle=False) as stream:
        for _ in stream:
            pass
    n = source.n_rows
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def predict_rate(run: Path, data: Path, out: Path) -> tuple[float, float]:
    """Rows/s of one ``predict`` (probabilities and classes) to ``out``, end to end: per
    second of wall time and of CPU time.
    """
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    t0, c0 = time.perf_counter(), time.process_time()
    record = predict_run(run, data, out)
    return (record["rows"] / (time.perf_counter() - t0),
            record["rows"] / (time.process_time() - c0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    configure_zarr_threads()  # as the command line does
    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    data, run = prepare(root, args.rows, args.features)
    formats = [f for f in args.formats.split(",") if f]
    rates: dict[str, list[float]] = {"raw": [], "reader": [], **{f: [] for f in formats}}
    cpu: dict[str, list[float]] = {"raw": [], "reader": [], **{f: [] for f in formats}}
    predict_run(run, data, root / "warm.parquet")  # compile and import once
    (root / "warm.parquet").unlink()
    for k in range(args.repeats):
        for fmt in formats:
            for key, (wall, per_cpu) in (("raw", raw_read(data)),
                                         (fmt, predict_rate(run, data, root / f"pred{fmt}"))):
                rates[key].append(wall)
                cpu[key].append(per_cpu)
        for key, (wall, per_cpu) in (("raw", raw_read(data)), ("reader", reader_only(data))):
            rates[key].append(wall)
            cpu[key].append(per_cpu)
        print(f"repeat {k + 1}: raw {rates['raw'][-1]:,.0f}, reader "
              f"{rates['reader'][-1]:,.0f}, " + ", ".join(
                  f"predict{f} {rates[f][-1]:,.0f}" for f in formats) + " rows/s",
              file=sys.stderr)
    raw, raw_cpu = float(np.median(rates["raw"])), float(np.median(cpu["raw"]))
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load": os.getloadavg()[0],
              "command": "python scripts/predict_bench.py " + " ".join(argv or sys.argv[1:]),
              "rows": args.rows, "features": args.features, "repeats": args.repeats,
              "raw_read_rows_per_s": raw, "raw_read_all": rates["raw"],
              "raw_read_rows_per_cpu_s": raw_cpu,
              "reader": {"rows_per_s": float(np.median(rates["reader"])),
                         "ratio": float(np.median(rates["reader"])) / raw,
                         "rows_per_cpu_s": float(np.median(cpu["reader"])),
                         "cpu_ratio": float(np.median(cpu["reader"])) / raw_cpu},
              "predict": {f: {"rows_per_s": float(np.median(rates[f])), "all": rates[f],
                              "ratio": float(np.median(rates[f])) / raw,
                              "rows_per_cpu_s": float(np.median(cpu[f])),
                              "cpu_ratio": float(np.median(cpu[f])) / raw_cpu}
                          for f in formats}}
    for fmt in formats:
        out = root / f"pred{fmt}"
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    lines = [f"Store: {args.rows:,} × {args.features} float32 logistic (make-data, 65,536-row "
             f"chunks); medians of {args.repeats} alternating runs in one process; load "
             f"{report['load']:.1f} on {report['machine']}. Rows per second of wall time, "
             "and per second of CPU time (all threads: the rate when the cores are the "
             "limit, steadier on a shared machine).", "",
             "| what | rows/s | × raw read | rows/CPU-s | × raw read (CPU) |",
             "|---|---|---|---|---|",
             f"| raw read (zarr, X, sequential) | {raw:,.0f} | 1.00 | {raw_cpu:,.0f} | 1.00 |"]
    r = report["reader"]
    lines.append(f"| natgrad_stream reader only (X in row order, checks) | "
                 f"{r['rows_per_s']:,.0f} | {r['ratio']:.2f} | {r['rows_per_cpu_s']:,.0f} | "
                 f"{r['cpu_ratio']:.2f} |")
    for fmt, r in report["predict"].items():
        lines.append(f"| predict → {fmt} (proba, class) | {r['rows_per_s']:,.0f} | "
                     f"{r['ratio']:.2f} | {r['rows_per_cpu_s']:,.0f} | {r['cpu_ratio']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict-latest.json").write_text(json.dumps(report, indent=2))
    (out / "predict-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
