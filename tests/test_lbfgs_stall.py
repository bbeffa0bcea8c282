"""An L-BFGS round that found no point below its start is a stall, not convergence.

Measured (issue 17, the mlp part): on standardized diabetes the default mlp fit (seed 2;
seeds 3 and 4 since the streaming metric is shrunk for few rows) reaches a state where
units' first-layer weights have run off to ~1e22; the round's first trial (a unit step in
φ) is ~1e12 above ``J`` and the line search's next trial, a step of ~1e-16, is as high
(``θ = W⁻¹φ`` loses the huge weights to round-off). L-BFGS-B then stops with
"CONVERGENCE: RELATIVE REDUCTION OF F", the round improved ``J`` by exactly 0, and the
improvement rule (``rel ≤ lbfgs_tol``) reported ``converged: true`` with the natural
gradient at 0.03. Repeating the round repeats it exactly, so the fit stops, not converged,
and says why in one line.
"""

import logging

import numpy as np
import pytest

from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.training.learner import UNCONVERGED


@pytest.fixture(scope="module")
def diabetes_standardized():
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    X = (d.data - d.data.mean(axis=0)) / d.data.std(axis=0)
    y = (d.target - d.target.mean()) / d.target.std()
    return X, y


class _Records(logging.Handler):
    """The records of the ``natgrad_stream`` logger while attached (independent of how
    other tests configured its propagation).
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def unconverged(self) -> list[str]:
        return [r.getMessage() for r in self.records
                if getattr(r, "natgrad_event", None) == UNCONVERGED]


def test_a_round_that_did_not_descend_is_a_stall_not_convergence(diabetes_standardized):
    X, y = diabetes_standardized
    logger, seen = logging.getLogger("natgrad_stream"), _Records()
    logger.addHandler(seen)
    try:
        # the seeds whose fits reach such a state (the path is non-convex and chaotic:
        # seed 2 before the streaming metric was shrunk, seeds 3 and 4 since; round-off
        # decides, so on another CPU the first stall may come at another seed)
        for seed in (4, 3, *range(3), *range(5, 12)):
            seen.records.clear()
            lr = NaturalGradientLearner(make_model("mlp", 10, seed=seed)).fit((X, y),
                                                                               epochs=300)
            if lr.state.last_round.get("stalled"):
                break
    finally:
        logger.removeHandler(seen)
    last = lr.state.last_round
    assert last["relative_improvement"] == 0.0 and last["max_natural_grad"] > 1e-3
    assert lr.result.converged is False and last["stalled"] is True
    assert lr.result.epochs < 300  # stopped at the stall, not by the cap
    (line,) = seen.unconverged()
    assert "stalled" in line and f"round {last['round']}" in line
    # the returned θ is the best point measured: its loss is the summary's
    mse = float(np.mean((y - lr.model.predict(X, lr.theta)) ** 2))
    assert abs(0.5 * mse - lr.result.train_loss) <= 1e-12 * lr.result.train_loss


def test_converged_rounds_descended_or_met_the_gradient_rule(diabetes_standardized):
    """Whenever a fit says converged, its last round either improved ``J`` (by at most
    ``lbfgs_tol``) or ended with ``max |∇φJ| ≤ lbfgs_gtol``.
    """
    X, y = diabetes_standardized
    for seed in range(3):
        lr = NaturalGradientLearner(make_model("mlp", 10, seed=seed)).fit((X, y), epochs=300)
        last = lr.state.last_round
        if lr.result.converged:
            assert last["relative_improvement"] > 0 or \
                last["max_natural_grad"] <= lr.lbfgs_gtol
