"""``natgrad-stream demo``: one pass over the embedded dataset, checked against the
full-batch optimum found by an independent solver (SciPy L-BFGS on the in-memory data).
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.optimize
import zarr

from natgrad_stream.app.runs import evaluate_run, fit_run


def demo_dataset_path() -> Path:
    """Path of the embedded demo dataset (installed package data, or the source tree)."""
    installed = resources.files("natgrad_stream") / "_embedded" / "demo.zarr"
    if installed.is_dir():
        return Path(str(installed))
    in_tree = Path(__file__).resolve().parents[2] / "data" / "demo.zarr"
    if in_tree.is_dir():
        return in_tree
    raise FileNotFoundError("the embedded demo dataset is missing from this installation")


def logistic_optimum(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unpenalized logistic-regression MLE by L-BFGS on standardized features.

    Returns θ = [coef, intercept] in the original feature units.
    """
    X = np.asarray(X, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = np.hstack([(X - mu) / sd, np.ones((X.shape[0], 1))])

    def f(t):
        z = Z @ t
        p = 0.5 * (1 + np.tanh(0.5 * z))
        return np.mean(np.logaddexp(0.0, z) - y * z), Z.T @ (p - y) / len(y)

    res = scipy.optimize.minimize(f, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 10_000, "gtol": 1e-12, "ftol": 1e-15})
    coef = res.x[:-1] / sd
    return np.r_[coef, res.x[-1] - mu @ coef]


def run_demo(out: Path, *, log=sys.stderr) -> dict:
    """Fit the demo data in ``out`` and return a JSON-ready report."""
    data = demo_dataset_path()
    print(f"natgrad-stream demo: data {data}\n  run directory {out}", file=log)
    t0 = time.perf_counter()
    summary = fit_run(data, out, model="logistic", overwrite=True)
    fit_seconds = time.perf_counter() - t0
    test = evaluate_run(out, data, x="X_test", y="y_test")
    group = zarr.open_group(str(data), mode="r")
    theta_opt = logistic_optimum(group["X"][...], group["y"][...].astype(np.float64))
    Xt = group["X_test"][...].astype(np.float64)
    yt = group["y_test"][...].astype(np.float64)
    zt = Xt @ theta_opt[:-1] + theta_opt[-1]
    opt_loss = float(np.mean(np.logaddexp(0.0, zt) - yt * zt))
    gap = 100.0 * (test["log_loss"] / opt_loss - 1.0)
    print(f"  one pass: {summary['samples']:,} rows in {fit_seconds:.2f} s "
          f"({summary['rewhitens']} re-whitenings)\n"
          f"  held-out log-loss {test['log_loss']:.6f} vs full-batch optimum {opt_loss:.6f} "
          f"(gap {gap:+.4f}%), accuracy {test['accuracy']:.4f}", file=log)
    return {**summary, "run": str(out), "test_log_loss": test["log_loss"],
            "test_accuracy": test["accuracy"], "optimum_test_log_loss": opt_loss,
            "gap_percent": gap}
