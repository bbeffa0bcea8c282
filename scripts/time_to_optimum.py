"""Time to 1e-6 of the training optimum on 1M × 100 float32, three solvers in one run.

- natgrad_stream, streamed from Zarr: ``fit --epochs 30 --tol 1e-7`` (one streaming pass,
  then Fisher scoring passes until the Newton decrement is at most 1e-7·|J|);
- statsmodels ``Logit(...).fit(method="newton")`` on the same data already in memory
  (float64), the reference optimum;
- scikit-learn ``LogisticRegression(solver="lbfgs", C=inf)`` in memory, at most
  ``--sk-iters`` iterations (on raw, ill-conditioned features it needs thousands).

    python scripts/time_to_optimum.py [--rows 1000000] [--features 100]

Prints one JSON report and writes ``scripts/results/time-to-optimum-latest.{json,md}``.
Each solver's gap is its training log-loss against statsmodels' optimum.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _log_loss(theta, X, y):
    z = X @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-7)
    p.add_argument("--sk-iters", type=int, default=300,
                   help="iterations allowed to scikit-learn's lbfgs (it crawls on raw features)")
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"
                                        / "time-to-optimum-latest"))
    args = p.parse_args(argv)
    import statsmodels.api as sm
    import zarr
    from sklearn.linear_model import LogisticRegression

    from natgrad_stream.checkpoint import load_checkpoint
    from natgrad_stream.data.datasets import make_dataset

    tmp = Path(tempfile.mkdtemp(prefix="natgrad-t2o-"))
    data = Path(args.data) if args.data else tmp / "data.zarr"
    if not data.exists():
        make_dataset(data, task="logistic", rows=args.rows, features=args.features, seed=7)
    g = zarr.open_group(str(data), mode="r")
    X = np.asarray(g["X"][...], dtype=np.float64)
    y = np.asarray(g["y"][...], dtype=np.float64)

    t0 = time.perf_counter()
    ref = sm.Logit(y, sm.add_constant(X, prepend=False)).fit(method="newton", disp=0,
                                                             maxiter=100)  # default tol
    t_sm = time.perf_counter() - t0
    optimum = _log_loss(np.asarray(ref.params), X, y)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=np.inf, solver="lbfgs", tol=1e-10, max_iter=args.sk_iters)
        sk.fit(X, y)
    t_sk = time.perf_counter() - t0
    sk_gap = (_log_loss(np.r_[sk.coef_[0], sk.intercept_], X, y) - optimum) / optimum

    run = tmp / "run"
    cmd = [sys.executable, "-m", "natgrad_stream", "fit", str(data), "--model", "logistic",
           "--out", str(run), "--epochs", "30", "--tol", str(args.tol)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    t_ours = time.perf_counter() - t0
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    theta = load_checkpoint(run / "checkpoint.npz")["theta"]
    ours_gap = (_log_loss(theta, X, y) - optimum) / optimum

    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 2 cores",
        "rows": args.rows, "features": args.features, "optimum_log_loss": optimum,
        "natgrad_stream": {"seconds": round(t_ours, 2), "fit_seconds": summary["seconds"],
                           "passes": summary["epochs"], "converged": summary["converged"],
                           "gap": ours_gap},
        "statsmodels_newton": {"seconds": round(t_sm, 2),
                               "iterations": int(ref.mle_retvals["iterations"]),
                               "converged": bool(ref.mle_retvals["converged"]), "gap": 0.0},
        "sklearn_lbfgs": {"seconds": round(t_sk, 2), "iterations": int(sk.n_iter_[0]),
                          "gap": sk_gap},
    }
    report["ratio_to_statsmodels"] = round(t_ours / t_sm, 3)
    outp = Path(args.out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"### Time to the optimum ({report['date']}, {report['machine']})",
          f"{args.rows:,} × {args.features} float32 logistic; gaps are relative training "
          "log-loss against statsmodels' Newton optimum.", "",
          "| solver | data | seconds | passes / iterations | gap |", "|---|---|---|---|---|",
          f"| natgrad_stream `fit --tol {args.tol:g}` (process, import included) | streamed "
          f"from Zarr | {t_ours:.2f} (fit {summary['seconds']:.2f}) | {summary['epochs']} "
          f"passes | {ours_gap:.1e} |",
          f"| statsmodels `Logit.fit(method='newton')` | in memory, float64 | {t_sm:.2f} | "
          f"{report['statsmodels_newton']['iterations']} | 0 (reference) |",
          f"| scikit-learn `LogisticRegression(solver='lbfgs')` | in memory, float64 | "
          f"{t_sk:.2f} | {report['sklearn_lbfgs']['iterations']} | {sk_gap:.1e} |"]
    outp.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
