"""Drifting streams (issue 21): a follow run over rows whose true coefficients change
halfway, with and without ``--forget``, against the second half's own optimum.

Usage::

    python scripts/forget_bench.py                    # 2 × 50,000 rows, seconds
    python scripts/forget_bench.py --rows 200000 --half-lives 2000 5000 20000

Two streams of ``2 × rows`` rows, committed with ``append_rows`` and read by
``FollowSource`` (the batches of ``fit --follow``): *logistic* (5 standard normal features;
coefficients ``[1, −1, 0.5, 0, 0.5]``, intercept 0.3, then ``[−1, 1, 0.5, 1, −0.5]``, −0.3)
and *linear* (the same coefficients, noise 0.5, the targets of the second half shifted by
20, which trips the divergence guard without forgetting). For each half-life (and none)
it prints the gap of the final θ's mean loss over the second half's optimum (maximum
likelihood / least squares on those rows), the largest coefficient error, the drift lines
and rollbacks logged, and how the run ended.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import zarr

from natgrad_stream.data import FollowSource, append_rows
from natgrad_stream.errors import NumericalError
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

D = 5
B1 = np.array([1.0, -1.0, 0.5, 0.0, 0.5])
B2 = np.array([-1.0, 1.0, 0.5, 1.0, -0.5])


def _store(path: Path, X, y) -> Path:
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("X", shape=(0, D), chunks=(8192, D), dtype="float64")
    g.create_array("y", shape=(0,), chunks=(8192,), dtype=y.dtype)
    append_rows(path, X=X, y=y)
    return path


def _streams(n: int, tmp: Path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2 * n, D))
    z = np.r_[X[:n] @ B1 + 0.3, X[n:] @ B2 - 0.3]
    y = (rng.random(2 * n) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    A = np.c_[X[n:], np.ones(n)]
    y2 = y[n:].astype(float)
    best = NaturalGradientLearner(make_model("logistic", D), tol=1e-12).fit((X[n:], y2)).theta

    def logistic_loss(theta):
        t = A @ theta
        return float(np.mean(np.logaddexp(0.0, t) - y2 * t))

    yield "logistic", _store(tmp / "logistic.zarr", X, y), logistic_loss, best
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2 * n, D))
    y = np.r_[X[:n] @ B1, X[n:] @ B2 + 20.0] + 0.5 * rng.standard_normal(2 * n)
    A = np.c_[X[n:], np.ones(n)]
    best = np.linalg.lstsq(A, y[n:], rcond=None)[0]
    yield "linear", _store(tmp / "linear.zarr", X, y), \
        (lambda theta: float(np.mean((A @ theta - y[n:]) ** 2) / 2)), best


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.drift = 0

    def emit(self, record):
        self.drift += getattr(record, "natgrad_event", None) == "drift"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=50_000, help="rows of each half")
    ap.add_argument("--half-lives", type=float, nargs="+", default=[5000.0, 10000.0])
    args = ap.parse_args(argv)
    log = logging.getLogger("natgrad_stream")
    print("| stream | --forget | gap to the 2nd half's optimum | max coefficient error "
          "| drift lines | rollbacks | end |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, loss, best in _streams(args.rows, Path(tmp)):
            for forget in [None, *args.half_lives]:
                learner = NaturalGradientLearner(
                    make_model(name, D), **({} if forget is None else {"forget": forget}))
                count = _Count()
                log.addHandler(count)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        learner.fit(FollowSource(path, poll_seconds=0.01, idle_timeout=0.2))
                        end = "done"
                    except NumericalError:
                        end = "failed (exit 1)"
                log.removeHandler(count)
                rollbacks = sum("rolled back" in str(w.message) for w in caught)
                gap = loss(learner.theta) / loss(best) - 1
                err = np.abs(learner.theta - best).max()
                print(f"| {name} | {forget or 'none'} | {100 * gap:.3g}% | {err:.3g} | "
                      f"{count.drift} | {rollbacks} | {end} |")


if __name__ == "__main__":
    main()
