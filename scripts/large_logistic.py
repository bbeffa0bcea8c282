#!/usr/bin/env python
"""One default pass over a large, ill-conditioned logistic dataset in Zarr, checked against
the full-batch optimum of an independent solver (scikit-learn), with the learner's rows/s
printed next to the raw read rate of the same store, measured in the same run.

Usage::

    python scripts/large_logistic.py [--rows 1000000] [--features 100] [--dir bench-data]

Prints a Markdown table and, last, one JSON line. Needs scikit-learn (``pip install
-e .[test]``). The dataset is generated on first use (about 400 MB for 1M x 100 float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import zarr


def log_loss(theta, X, y):
    z = X @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--test-rows", type=int, default=200_000)
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--dir", default="bench-data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from bench import raw_read  # same folder: python puts scripts/ on sys.path
    from sklearn.linear_model import LogisticRegression

    from natgrad_stream.app.runs import evaluate_run, fit_run
    from natgrad_stream.data.datasets import make_dataset

    path = Path(args.dir) / f"logistic-{args.rows}x{args.features}-s{args.seed}.zarr"
    if not path.exists():
        t = time.perf_counter()
        make_dataset(path, task="logistic", rows=args.rows, features=args.features,
                     chunk_rows=args.chunk_rows, test_rows=args.test_rows, seed=args.seed)
        print(f"generated {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    # warm-up: load the Numba cache and fault in the reader's buffers, as a long run would
    fit_run(path, Path(args.dir) / "runs" / f"warmup-{os.getpid()}", model="logistic",
            max_samples=200_000)
    read_rate = raw_read(path)
    run = Path(args.dir) / "runs" / f"{path.stem}-{os.getpid()}"
    summary = fit_run(path, run, model="logistic", epochs=1)
    read_rate_after = raw_read(path)
    ours = evaluate_run(run, path, x="X_test", y="y_test")

    g = zarr.open_group(str(path), mode="r")
    X = g["X"][...].astype(np.float64)
    y = g["y"][...].astype(np.float64)
    t = time.perf_counter()
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=500).fit(X, y)
    sk_seconds = time.perf_counter() - t
    theta_opt = np.r_[sk.coef_[0], sk.intercept_[0]]
    del X
    Xt = g["X_test"][...].astype(np.float64)
    yt = g["y_test"][...].astype(np.float64)
    opt_test = log_loss(theta_opt, Xt, yt)
    gap = 100.0 * (ours["log_loss"] / opt_test - 1.0)
    cond = float(np.linalg.cond(np.cov(Xt[:100_000].T)))

    report = {
        "rows": args.rows, "features": args.features, "feature_cov_condition": cond,
        "raw_read_rows_per_s": (read_rate + read_rate_after) / 2,
        "learner_rows_per_s": summary["rows_per_s"],
        "ratio_to_read": summary["rows_per_s"] / ((read_rate + read_rate_after) / 2),
        "seconds": summary["seconds"], "rewhitens": summary["rewhitens"],
        "test_log_loss": ours["log_loss"], "optimum_test_log_loss": opt_test,
        "gap_percent": gap, "within_0.1_percent": gap <= 0.1,
        "sklearn_seconds": sk_seconds,
    }
    print(f"\n| rows | features | cond(cov X) | raw read rows/s | learner rows/s (warm) | ratio | "
          f"held-out log-loss | optimum (sklearn) | gap |\n|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.rows:,} | {args.features} | {cond:.2e} | "
          f"{report['raw_read_rows_per_s']:,.0f} | "
          f"{summary['rows_per_s']:,.0f} | {report['ratio_to_read']:.2f} | "
          f"{ours['log_loss']:.6f} | {opt_test:.6f} | {gap:+.4f}% |\n")
    print(json.dumps(report))
    return 0 if gap <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
