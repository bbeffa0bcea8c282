"""``natgrad-stream demo``: one pass over the embedded dataset, checked against the
full-batch optimum found by an independent solver (SciPy L-BFGS on the in-memory data).
"""

from __future__ import annotations

import json
import sys
import tempfile
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


def _warm_up(data) -> float:
    """Compile (or load from Numba's cache) the kernels on a few rows, outside the timed
    pass; returns the seconds it took.
    """
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    group = zarr.open_group(str(data), mode="r")
    X = np.asarray(group["X"][:2048])
    y = np.asarray(group["y"][:2048]).astype(np.float64)
    t0 = time.perf_counter()
    NaturalGradientLearner(make_model("logistic", X.shape[1])).fit((X, y), epochs=1)
    return time.perf_counter() - t0


def _describe_refreshes(events: list) -> str:
    """One line on what re-whitening did."""
    ok = [e for e in events if e.get("ok")]
    if not ok:
        return "re-whitening: none succeeded"
    conds = [e.get("raw_condition_number") or e.get("condition_number") for e in ok]
    first, last = conds[0], conds[-1]
    where = ", ".join(f"{e['samples']:,}" for e in ok[:6]) + (" …" if len(ok) > 6 else "")
    text = f"re-whitened {len(ok)} times (at samples {where})"
    if first and last:
        text += (f"; the metric's condition number, {first:.3g} at the first, {last:.3g} at "
                 "the last, is 1 in the whitened coordinates the steps are taken in")
    return text


def run_demo(out: Path | None, *, log=sys.stderr) -> dict:
    """Fit the demo data in ``out`` (None: a temporary directory, removed at the end) and
    return a JSON-ready report.

    Each long step is announced on ``log`` before it runs; the rate printed is the
    summary's (``seconds``, ``rows_per_s``), as in the report. ``run`` is the run
    directory when it is kept, None otherwise (``run_kept`` says which).
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix="natgrad-demo-") as tmp:  # leaves nothing
            return _run_demo(Path(tmp) / "run", kept=False, log=log)
    return _run_demo(Path(out), kept=True, log=log)


def _say(log, text: str) -> None:
    print(text, file=log, flush=True)


def _run_demo(out: Path, *, kept: bool, log) -> dict:
    data = demo_dataset_path()
    group = zarr.open_group(str(data), mode="r")
    n, d = group["X"].shape
    _say(log, f"natgrad-stream demo: logistic regression on {n:,} rows × {d} features "
              f"({data})")
    _say(log, f"  run directory: {out} (kept)" if kept else
         "  run directory: temporary, removed at the end (pass --out RUN to keep it)")
    _say(log, "  compiling the kernels (or loading them from Numba's cache)...")
    from natgrad_stream.training.learner import pass_cap_notes_dropped

    with pass_cap_notes_dropped():  # the demo's one pass is the point; it reports its gap
        return _demo_steps(data, group, out, kept, log)


def _demo_steps(data, group, out: Path, kept: bool, log) -> dict:
    """The demo's fit and its comparison with the optimum (see :func:`_run_demo`)."""
    compile_seconds = _warm_up(data)
    _say(log, f"  kernels ready in {compile_seconds:.2f} s (not timed below)")
    _say(log, "  fitting one pass...")
    summary = fit_run(data, out, model="logistic", epochs=1, overwrite=True)
    _say(log, f"  one pass: {summary['samples']:,} rows in {summary['seconds']} s "
              f"({summary['rows_per_s'] / 1e6:.2f} M rows/s)")
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        refreshes = [r for r in map(json.loads, fh) if r.get("event") == "rewhiten"]
    _say(log, f"  {_describe_refreshes(refreshes)}")
    test = evaluate_run(out, data, x="X_test", y="y_test")
    _say(log, "  computing the full-batch optimum for reference (SciPy L-BFGS on the "
              "in-memory data)...")
    theta_opt = logistic_optimum(group["X"][...], group["y"][...].astype(np.float64))
    Xt = group["X_test"][...].astype(np.float64)
    yt = group["y_test"][...].astype(np.float64)
    zt = Xt @ theta_opt[:-1] + theta_opt[-1]
    opt_loss = float(np.mean(np.logaddexp(0.0, zt) - yt * zt))
    gap = 100.0 * (test["log_loss"] / opt_loss - 1.0)
    _say(log, f"  held-out log-loss {test['log_loss']:.6f} vs full-batch optimum "
              f"{opt_loss:.6f} (gap {gap:+.4f}%), accuracy {test['accuracy']:.4f}")
    if kept:
        _say(log, f"  the run is in {out}: 'natgrad-stream params {out}' prints its "
                  "parameters")
    return {**summary, "run": str(out) if kept else None, "run_kept": kept,
            "compile_seconds": round(compile_seconds, 3),
            "test_log_loss": test["log_loss"],
            "test_accuracy": test["accuracy"], "optimum_test_log_loss": opt_loss,
            "gap_percent": gap}
