"""Rows/s of the logistic CSR kernels (issue 20): ``LogisticRegression.accumulate`` on
batches of 100,000 features × 50 non-zeros a row, serial vs parallel, metric none and
diagonal, batches of 1,024 and 8,192 rows.

Usage::

    python scripts/sparse_kernel_bench.py                # 131,072 rows, 5 passes a case
    python scripts/sparse_kernel_bench.py --quick        # 16,384 rows, a few seconds
    python scripts/sparse_kernel_bench.py --features 1000000 --nnz 100 --json out.json

Data: uniform random columns (repeats allowed, as in hashed features), sorted within each
row as SciPy and AnnData store CSR (``--unsorted``: not, so the diagonal metric sums each
row's repeats in a scratch vector first), float32 values N(0, 1), labels Bernoulli(0.5);
θ random at scale 0.01. Each case passes over the batches of the whole matrix (views
through ``indptr``, as a reader yields them) ``--repeats`` times after one warm-up batch
(whose time, with the JIT compile or cache load, is reported apart); the best pass counts
(the machine may be shared).
``accumulate`` includes the model's per-batch work around the kernel: the batch's bounds
check and the clearing of the (P,) outputs. The whole learner must reach 1M rows/s on 2
cores on this data, so the kernel should be well above it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from natgrad_stream._jit import num_threads
from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.models import make_model


def make_rows(n: int, d: int, nnz: int, seed: int = 0, *,
              canonical: bool = True) -> tuple[SparseRows, np.ndarray]:
    """``n`` CSR rows of ``nnz`` random columns each, and Bernoulli(0.5) labels; columns
    sorted within each row when ``canonical`` (repeats then stay, adjacent).
    """
    rng = np.random.default_rng(seed)
    indptr = np.arange(n + 1, dtype=np.int64) * nnz
    indices = rng.integers(0, d, (n, nnz), dtype=np.int32)
    if canonical:
        indices.sort(axis=1)
    indices = indices.ravel()
    data = rng.standard_normal(n * nnz).astype(np.float32)
    return SparseRows(data, indices, indptr, d), (rng.random(n) < 0.5).astype(np.float64)


def time_case(model, rows, y, theta, *, batch, metric, parallel, repeats):
    """Best rows/s of ``accumulate`` over passes on the batches of ``rows``; and the first
    call's time.
    """
    structure = "diagonal"
    ws = model.new_workspace(structure)
    n = rows.shape[0]
    t0 = time.perf_counter()
    model.accumulate(rows.rows_slice(0, batch), y[:batch], None, theta, metric=metric,
                     structure=structure, ws=ws, parallel=parallel)
    first = time.perf_counter() - t0
    best = 0.0
    for _ in range(repeats):
        done = 0
        t0 = time.perf_counter()
        for a in range(0, n - batch + 1, batch):
            model.accumulate(rows.rows_slice(a, a + batch), y[a:a + batch], None, theta,
                             metric=metric, structure=structure, ws=ws, parallel=parallel)
            done += batch
        best = max(best, done / (time.perf_counter() - t0))
    return best, first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--nnz", type=int, default=50, help="non-zeros a row")
    parser.add_argument("--rows", type=int, default=131_072)
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--repeats", type=int, default=5, help="passes per case (best)")
    parser.add_argument("--unsorted", action="store_true", help="columns unsorted in rows")
    parser.add_argument("--quick", action="store_true", help="16,384 rows, 3 passes")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 16_384, 3
    rows, y = make_rows(args.rows, args.features, args.nnz, canonical=not args.unsorted)
    model = make_model("logistic", args.features)
    theta = np.random.default_rng(1).standard_normal(model.n_params) * 0.01
    results = []
    print(f"logistic accumulate, {args.features:,} features × {args.nnz} non-zeros a row, "
          f"{'unsorted' if args.unsorted else 'sorted'} columns, {args.rows:,} rows, "
          f"{num_threads()} threads, {platform.machine()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6} {'metric':>9} {'variant':>9} {'rows/s':>12} {'first call':>11}")
    for batch in args.batches:
        for metric in (None, "model"):
            for parallel in (False, True):
                rate, first = time_case(model, rows, y, theta, batch=batch, metric=metric,
                                        parallel=parallel, repeats=args.repeats)
                variant = "parallel" if parallel else "serial"
                label = "none" if metric is None else "diagonal"
                print(f"{batch:>6} {label:>9} {variant:>9} {rate:>12,.0f} {first:>10.2f}s")
                results.append({"batch": batch, "metric": label, "variant": variant,
                                "rows_per_s": rate, "first_call_s": first})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"features": args.features, "nnz": args.nnz, "rows": args.rows,
                       "sorted": not args.unsorted, "load": os.getloadavg()[0],
                       "threads": num_threads(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
