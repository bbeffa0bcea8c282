"""The one-pass step kernels (``optim/_step_kernels``) against their NumPy references, and
the learner's fused diagonal SGD step against the generic update it replaces.
"""

import numpy as np
import pytest

from natgrad_stream.models.penalty import L2Penalty
from natgrad_stream.optim._step_kernels import diagonal_sgd_step, penalized_mean_gradient
from natgrad_stream.optim.rules import SGD

P = 1_001


def _vectors(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(P) * 10.0, rng.standard_normal(P), rng.uniform(0.1, 3.0, P),
            rng.standard_normal(P))


@pytest.mark.parametrize("lam, a, b", [(0.0, 0, 0), (1e-3, 0, P - 1), (0.5, 10, 500)])
def test_penalized_mean_gradient_equals_numpy(lam, a, b):
    grad_sum, theta, _, _ = _vectors()
    wsum = 37.5
    out = np.empty(P)
    finite, gsq, tsq = penalized_mean_gradient(grad_sum, wsum, theta, lam, a, b, out)
    pen = np.zeros(P)
    pen[a:b] = lam * theta[a:b]
    want = (grad_sum + wsum * pen) / wsum
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-15)
    assert finite
    assert gsq == pytest.approx(want @ want, rel=1e-12)
    assert tsq == pytest.approx(theta[a:b] @ theta[a:b], rel=1e-12)


def test_penalized_mean_gradient_reports_a_non_finite_entry():
    grad_sum, theta, _, _ = _vectors()
    grad_sum[17] = np.inf
    finite, *_ = penalized_mean_gradient(grad_sum, 2.0, theta, 0.1, 0, P - 1, np.empty(P))
    assert not finite
    theta[3] = np.nan  # a non-finite penalized θ makes the gradient non-finite too
    grad_sum[17] = 0.0
    finite, *_ = penalized_mean_gradient(grad_sum, 2.0, theta, 0.1, 0, P - 1, np.empty(P))
    assert not finite


def test_diagonal_sgd_step_equals_numpy():
    phi, grad, inverse, _ = _vectors(1)
    eta = 0.37
    phi_out, theta_out = np.empty(P), np.empty(P)
    finite, sq = diagonal_sgd_step(phi, grad, inverse, eta, phi_out, theta_out)
    gphi = inverse * grad
    np.testing.assert_allclose(phi_out, phi - eta * gphi, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(theta_out, inverse * (phi - eta * gphi), rtol=1e-14,
                               atol=1e-15)
    assert finite and sq == pytest.approx(gphi @ gphi, rel=1e-12)
    grad[5] = np.inf
    finite, _ = diagonal_sgd_step(phi, grad, inverse, eta, phi_out, theta_out)
    assert not finite


def test_sgd_update_diagonal_is_update_through_the_whitener():
    phi, grad, inverse, _ = _vectors(2)
    opt = SGD()
    state = opt.init(P)
    factor = 0.25
    new_phi, new_theta, new_state, norm, finite = opt.update_diagonal(
        phi, grad, inverse, factor, state, rows=64, samples=640)
    want_phi, want_state = opt.update(phi, factor * inverse * grad, state, rows=64,
                                      samples=640)
    np.testing.assert_allclose(new_phi, want_phi, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(new_theta, inverse * want_phi, rtol=1e-13, atol=1e-14)
    assert new_state == want_state and state == {"steps": 0}
    assert norm == pytest.approx(np.linalg.norm(inverse * grad), rel=1e-12) and finite


@pytest.mark.parametrize("indices", [np.arange(P - 1), np.array([0, 5, 9, 700])])
def test_penalty_mean_gradient_contiguous_or_not(indices):
    grad_sum, theta, _, _ = _vectors(3)
    pen = L2Penalty(0.01, indices)
    grad, finite, norm, value = pen.mean_gradient(grad_sum, 8.0, theta)
    want = (grad_sum + 8.0 * pen.gradient(theta)) / 8.0
    np.testing.assert_allclose(grad, want, rtol=1e-14, atol=1e-15)
    assert finite and norm == pytest.approx(np.linalg.norm(want), rel=1e-12)
    assert value == pytest.approx(pen.value(theta), rel=1e-12)


def test_learner_fused_diagonal_step_equals_the_generic_one(monkeypatch):
    import scipy.sparse as sp

    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    rng = np.random.default_rng(4)
    X = sp.random(2_048, 300, density=0.05, format="csr", random_state=5)
    y = (rng.random(2_048) < 0.4).astype(float)
    runs = []
    for generic in (False, True):
        lr = NaturalGradientLearner(make_model("logistic", 300), structure="diagonal",
                                    l2=1e-3, seed=0)
        if generic:
            monkeypatch.setattr(lr, "_fused_step", lambda: False)
        infos = [lr.step(X[a:a + 256], y[a:a + 256]) for a in range(0, 2_048, 256)]
        runs.append((lr.state.theta.copy(), infos))
    (fast, fast_infos), (slow, slow_infos) = runs
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-13)
    for f, s in zip(fast_infos, slow_infos, strict=True):
        assert f.loss == pytest.approx(s.loss, rel=1e-12)
        assert f.grad_norm == pytest.approx(s.grad_norm, rel=1e-12)
        assert f.natural_grad_norm == pytest.approx(s.natural_grad_norm, rel=1e-10)
