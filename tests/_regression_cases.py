"""Fixed-seed fits whose final θ is pinned, to roundoff, by ``tests/test_regression.py``.

The expected values in ``tests/data/regression_thetas.json`` were recorded from the code
*before* the learner was restructured (one options table, one loop), so the test proves
that restructuring changed no result; the two ``mlp`` cases were re-recorded (on an AMD
EPYC, Zen 4) when the network gained its data-informed start, and ``mlp-lbfgs`` again when
its L-BFGS rounds took the ``kfac`` metric (issue 17): deliberate changes.
Re-record (``python -m tests._regression_cases``) only for a deliberate change of
numerics, and say so in the commit.

Each case is ``name -> (make_data, fit)``: ``make_data(tmp)`` writes the data and returns
its path; ``fit(path)`` returns a dict of float64 arrays to pin.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

EXPECTED = Path(__file__).parent / "data" / "regression_thetas.json"


def _data(task, rows, features, seed, chunk_rows=1024, **kw):
    from natgrad_stream.data.datasets import make_dataset

    def make(tmp: Path) -> Path:
        path = tmp / f"{task}-{rows}-{features}-{seed}.zarr"
        if not path.exists():
            make_dataset(path, task=task, rows=rows, features=features, chunk_rows=chunk_rows,
                         seed=seed, **kw)
        return path
    return make


def _streaming(model_name, n_features, model_kw=None, epochs=2, **options):
    def fit(path):
        from natgrad_stream.learner import NaturalGradientLearner
        from natgrad_stream.models import make_model

        model = make_model(model_name, n_features, **(model_kw or {}))
        # refine="stream": the streaming path these values pin (passes after the first
        # became Fisher scoring by default later, deliberately)
        learner = NaturalGradientLearner(model, refine="stream", **options)
        learner.fit(str(path), epochs=epochs)
        out = {"theta": learner.theta}
        if options.get("average"):
            out["theta_average"] = learner.theta_average
        return out
    return fit


def _lbfgs(model_name, n_features, model_kw=None, **options):
    def fit(path):
        from natgrad_stream.lbfgs import NaturalLBFGS
        from natgrad_stream.models import make_model

        model = make_model(model_name, n_features, **(model_kw or {}))
        return {"theta": NaturalLBFGS(model, **options).fit(str(path)).theta}
    return fit


LOGISTIC = _data("logistic", 12_000, 5, seed=4)
SOFTMAX = _data("softmax", 9_000, 4, seed=5)
GAUSSIAN = _data("gaussian", 8_000, 3, seed=6)
MLP = _data("mlp", 6_000, 3, seed=7)

CASES = {
    "logistic-sgd-full": (LOGISTIC, _streaming("logistic", 5, seed=1)),
    "logistic-sgd-diagonal": (LOGISTIC, _streaming("logistic", 5, structure="diagonal")),
    "logistic-momentum-block-average": (
        LOGISTIC, _streaming("logistic", 5, structure="block", optimizer="momentum",
                             lr=0.5, average=True, seed=2)),
    "logistic-adam-ridge": (
        LOGISTIC, _streaming("logistic", 5, optimizer="adam", whitening="ridge",
                             rewhiten="every:3000", batch_size=500)),
    "softmax-sgd-block-mc": (
        SOFTMAX, _streaming("softmax", 4, {"n_classes": 3}, structure="block",
                            metric="monte-carlo", mc_samples=2, whitening="robust")),
    "gaussian-sgd-full": (GAUSSIAN, _streaming("gaussian", 3, batch_size=256)),
    "mlp-defaults": (MLP, _streaming("mlp", 3, {"hidden": 4}, epochs=1)),
    "logistic-lbfgs-full": (LOGISTIC, _lbfgs("logistic", 5, lbfgs_rounds=3, batch_size=4096)),
    "softmax-lbfgs-block-window": (
        SOFTMAX, _lbfgs("softmax", 4, {"n_classes": 3}, structure="block", window=4,
                        lbfgs_rounds=3, lbfgs_iters=10)),
    "mlp-lbfgs": (MLP, _lbfgs("mlp", 3, {"hidden": 4}, lbfgs_rounds=2, lbfgs_iters=10,
                              damping=1e-2)),
}


def run_case(name: str, tmp: Path) -> dict[str, np.ndarray]:
    """Make the data of case ``name`` in ``tmp`` and fit it."""
    make, fit = CASES[name]
    return {k: np.asarray(v, dtype=np.float64) for k, v in fit(make(tmp)).items()}


def record() -> None:  # pragma: no cover - run by hand
    """Write :data:`EXPECTED` from the current code (exact, as float.hex strings)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            out[name] = {k: [float(x).hex() for x in v]
                         for k, v in run_case(name, Path(tmp)).items()}
            print(name, file=sys.stderr)
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":  # pragma: no cover
    record()
