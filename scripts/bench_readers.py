"""Measure whether the direct zstd reader still wins over zarr's public read path.

Streams one local zstd store (the layout ``make-data`` writes) through ``BatchStream`` with
the direct reader on and off, alternating, in one process, and reports rows/s and CPU
seconds per million rows for each, with their ratios. zarr's codec threads are configured
as the command line configures them (one per core).

    python scripts/bench_readers.py [--rows 1000000] [--features 100] [--repeats 5]

Writes ``scripts/results/readers-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from natgrad_stream.data import configure_zarr_threads, open_zarr
from natgrad_stream.data import stream as stream_mod
from natgrad_stream.data.datasets import make_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def one_pass(path, direct: bool) -> tuple[float, float]:
    """(rows/s, CPU seconds per million rows) of one unshuffled pass."""
    stream_mod._DIRECT_ENABLED = direct
    source = open_zarr(path)
    rows = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with source.batches(batch_size=65536, shuffle=False) as stream:
        for batch in stream:
            rows += batch.X.shape[0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return rows / wall, cpu / rows * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    configure_zarr_threads()
    with tempfile.TemporaryDirectory(prefix="natgrad-readers-") as tmp:
        path = Path(tmp) / "data.zarr"
        make_dataset(path, task="logistic", rows=args.rows, features=args.features, seed=0)
        one_pass(path, True), one_pass(path, False)  # warm-up: page cache, JIT
        runs = {"direct": [], "zarr": []}
        for _ in range(args.repeats):
            for name in ("direct", "zarr"):
                runs[name].append(one_pass(path, name == "direct"))
    med = {k: np.median(np.array(v), axis=0) for k, v in runs.items()}
    result = {
        "rows": args.rows, "features": args.features, "repeats": args.repeats,
        "direct_rows_per_s": float(med["direct"][0]), "zarr_rows_per_s": float(med["zarr"][0]),
        "direct_cpu_s_per_mrow": float(med["direct"][1]),
        "zarr_cpu_s_per_mrow": float(med["zarr"][1]),
        "speed_ratio_direct_over_zarr": float(med["direct"][0] / med["zarr"][0]),
        "cpu_ratio_direct_over_zarr": float(med["direct"][1] / med["zarr"][1]),
        "runs": {k: [list(map(float, r)) for r in v] for k, v in runs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "readers-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"direct zstd: {result['direct_rows_per_s']:,.0f} rows/s, "
          f"{result['direct_cpu_s_per_mrow']:.3f} CPU s per M rows")
    print(f"zarr public: {result['zarr_rows_per_s']:,.0f} rows/s, "
          f"{result['zarr_cpu_s_per_mrow']:.3f} CPU s per M rows")
    print(f"direct / zarr: speed ×{result['speed_ratio_direct_over_zarr']:.2f}, "
          f"CPU ×{result['cpu_ratio_direct_over_zarr']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
