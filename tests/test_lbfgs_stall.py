"""An L-BFGS round that found no point below its start is a stall, not convergence; and a
parameter run off to a huge value no longer makes one.

Measured (issue 17, the mlp part): on standardized diabetes the default mlp fit reached
states where a dead unit's weights had run off to 1e22 … 1e37; the round's first trial was
far above ``J`` (``θ = W⁻¹φ`` lost the huge weights' round-off into every coordinate),
L-BFGS-B stopped with "CONVERGENCE: RELATIVE REDUCTION OF F", and the improvement rule
reported ``converged: true`` with the natural gradient at 0.03. Such a round is now a stall
(the fit stops, not converged, and says why in one line), and rounds run on the
displacement from their start, so the huge coordinate no longer wrecks them.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.geometry.whitening import whiten
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.optim.lbfgs import lbfgs_round
from natgrad_stream.training.learner import _round_verdict, _stall_note


@pytest.fixture(scope="module")
def diabetes_standardized():
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    X = (d.data - d.data.mean(axis=0)) / d.data.std(axis=0)
    y = (d.target - d.target.mean()) / d.target.std()
    return X, y


def test_a_round_that_did_not_descend_is_a_stall_not_convergence():
    """The verdict of a complete round: the improvement rule certifies convergence only for
    a round that descended; one whose best point is its start is a stall (the next round
    would re-whiten at the same θ and repeat it); the gradient rule always certifies.
    """
    lr = SimpleNamespace(lbfgs_tol=1e-12, lbfgs_gtol=1e-7)
    g = np.array([0.03, -1e-3])
    assert _round_verdict(False, 0.0, g, lr, full=True) == (False, True)
    assert _round_verdict(True, 0.0, g, lr, full=True) == (True, False)
    assert _round_verdict(True, 1e-3, g, lr, full=True) == (False, False)
    assert _round_verdict(False, 0.0, np.array([1e-8]), lr, full=True) == (True, False)
    assert _round_verdict(False, 0.0, g, lr, full=False) == (False, False)  # a window round
    line = _stall_note({"round": 5, "status": "CONVERGENCE: RELATIVE REDUCTION OF F",
                        "max_natural_grad": 0.0373})
    assert line.startswith("not converged: L-BFGS round 5 stalled") and "0.0373" in line


def test_a_parameter_run_off_to_1e37_does_not_stall_the_round():
    """Measured (issue 17): the mlp on standardized diabetes (seed 2) ran a dead unit's bias
    to 8.9e37; L-BFGS on φ = Wθ then started at |φ₀| = 8.5e37, and θ = W⁻¹φ carried
    1e37 · (round-off of W⁻¹, 1e-17) into every other coordinate: the first trial was 1e44
    above J and the round stalled with the natural gradient at 0.037. The round now runs on
    the displacement δ = φ − φ₀, θ = θ₀ + W⁻¹δ, and descends to the optimum.
    """
    rng = np.random.default_rng(0)
    P = 6
    B = rng.standard_normal((P, 3 * P))
    G = B @ B.T / (3 * P)
    W = whiten(G, damping=0.0)
    H = np.diag(np.r_[np.linspace(1.0, 3.0, P - 1), 0.0])  # the last parameter: no effect
    target = np.r_[rng.standard_normal(P - 1), 0.0]

    def evaluate(theta):
        d = theta - target
        d[-1] = 0.0
        return 0.5 * float(d @ H @ d), H @ d

    theta0 = np.r_[np.zeros(P - 1), 8.9e37]
    J0, g0 = evaluate(theta0)
    res = lbfgs_round(evaluate, W, theta0, J0, g0, iters=50, memory=10, tol=1e-12,
                      gtol=1e-10, in_domain=lambda t: True, should_stop=lambda: False,
                      on_evaluation=lambda J, g: None, on_iteration=lambda: None)
    assert res.J < 1e-12 * J0
    assert_allclose(res.theta[:-1], target[:-1], atol=1e-5)
    assert res.theta[-1] == theta0[-1]  # untouched by the round-off of the others


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
