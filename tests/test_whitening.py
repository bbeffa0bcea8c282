"""Whitening: WᵀW = G_reg, the paper's symmetric root, the regularizers of eq. 35/36."""

import numpy as np
import pytest
import scipy.linalg
from numpy.testing import assert_allclose

from natgrad_stream.geometry.whitening import Whitener, WhiteningError, whiten

PAPER_G = np.array([[9 + 1 / 9, 1.0], [1.0, 1 / 9]])


def _spd(P, cond, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    return (Q * np.geomspace(1, 1 / cond, P)) @ Q.T


def test_exact_symmetric_root_of_the_paper_metric():
    W = whiten(PAPER_G, damping=0, floor=0, scale=False)
    assert_allclose(W.matrix, scipy.linalg.sqrtm(PAPER_G).real, rtol=1e-12)
    assert_allclose(W.matrix @ W.inverse, np.eye(2), atol=1e-12)


@pytest.mark.parametrize("method", ["eigh", "ridge", "robust"])
@pytest.mark.parametrize("scale", [True, False])
def test_every_method_whitens(method, scale):
    G = _spd(6, 1e4) * np.outer(np.geomspace(1, 100, 6), np.geomspace(1, 100, 6))
    W = whiten(G, method=method, damping=0.0 if method != "robust" else 1e-20, floor=0,
               scale=scale)
    assert_allclose(W.matrix.T @ W.matrix, G, rtol=1e-6, atol=1e-8 * np.abs(G).max())
    assert_allclose(W.metric_in_phi(G), np.eye(6), atol=1e-6)
    g = np.arange(1.0, 7.0)
    assert_allclose(W.natural_gradient(g), np.linalg.solve(G, g), rtol=1e-6)


def test_ridge_is_the_scaled_ridge_solve_of_eq_36():
    G = _spd(5, 1e8, seed=1)
    eps = 1e-3
    W = whiten(G, method="ridge", damping=eps)
    g = np.ones(5)
    assert_allclose(W.natural_gradient(g), np.linalg.solve(G + eps * np.diag(np.diag(G)), g),
                    rtol=1e-8)


def test_robust_is_eq_35():
    G = _spd(4, 1e3, seed=2)
    eps = 0.01
    W = whiten(G, method="robust", damping=eps, floor=0, scale=False)
    g = np.array([1.0, -2.0, 0.5, 3.0])
    eps_abs = eps * (np.trace(G) / 4) ** 2
    assert_allclose(W.natural_gradient(g),
                    np.linalg.solve(G.T @ G + eps_abs * np.eye(4), G.T @ g), rtol=1e-9)


@pytest.mark.parametrize("method", ["eigh", "ridge", "robust"])
def test_singular_and_noisy_metrics_stay_finite(method):
    rng = np.random.default_rng(0)
    B = rng.standard_normal((8, 3))
    singular = B @ B.T
    noisy = _spd(8, 1e12) + 1e-13 * rng.standard_normal((8, 8))
    for G in (singular, 0.5 * (noisy + noisy.T)):
        W = whiten(G, method=method, damping=1e-3)
        assert np.all(np.isfinite(W.matrix)) and np.all(np.isfinite(W.inverse))
        assert np.isfinite(W.natural_gradient(np.ones(8))).all()


def test_floor_counts_and_condition_diagnostics():
    G = np.diag([1.0, 1e-20, 1e-30])
    W = whiten(G, damping=0.0, floor=1e-8, scale=False)
    assert W.diagnostics.floored == 2
    assert W.diagnostics.condition_number == pytest.approx(1e8)
    assert W.diagnostics.to_dict()["raw_condition_number"] == pytest.approx(1e30)


def test_zero_diagonal_parameter_is_handled():
    G = np.diag([2.0, 0.0, 3.0])
    W = whiten(G)
    assert W.diagnostics.zero_diagonal == 1
    assert np.all(np.isfinite(W.inverse))


def test_diagonal_whitener():
    g = np.array([4.0, 0.25, 100.0])
    W = whiten(g, damping=0, floor=0)
    assert W.diagonal
    assert_allclose(W.matrix, np.sqrt(g))
    assert_allclose(W.natural_gradient(np.ones(3)), 1 / g)


@pytest.mark.parametrize("bad", [np.full((2, 2), np.nan), np.zeros((2, 2)),
                                 np.array([[-1.0, 0], [0, 1]])])
def test_failures_raise_whitening_error(bad):
    with pytest.raises(WhiteningError):
        whiten(bad)


def test_ridge_failure_on_indefinite_metric():
    G = np.array([[1.0, 2.0], [2.0, 1.0]])  # indefinite, positive diagonal
    with pytest.raises(WhiteningError):
        whiten(G, method="ridge", damping=0.0)


def test_drift_is_zero_after_refresh_and_grows_with_change():
    G = _spd(10, 1e3)
    W = whiten(G, damping=0, floor=0)
    rng = np.random.default_rng(0)
    assert W.drift(G, rng, probes=8) < 1e-8
    assert 0.3 < W.drift(1.5 * G, rng, probes=64) < 0.7  # rms eigenvalue deviation 0.5


def test_state_transport_maps():
    A, B = whiten(_spd(4, 10, 1)), whiten(_spd(4, 100, 2))
    v = np.arange(4.0)
    theta_disp = A.theta(v)  # a φ_A-displacement seen in θ
    assert_allclose(B.theta(A.vector_map_to(B) @ v), theta_disp, rtol=1e-10)
    grad_theta = np.array([1.0, -1.0, 2.0, 0.5])
    assert_allclose(A.covector_map_to(B) @ A.grad_phi(grad_theta), B.grad_phi(grad_theta),
                    rtol=1e-10)


def test_identity_and_state_round_trip():
    W = Whitener.identity(3)
    assert_allclose(W.phi(np.ones(3)), np.ones(3))
    W2 = whiten(_spd(3, 10))
    W3 = Whitener.from_state(W2.state_dict())
    assert_allclose(W3.matrix, W2.matrix)


def test_intercept_elimination_is_exact_and_removes_offset_ill_conditioning():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 3)) * [1.0, 0.1, 10.0] + [300.0, -40.0, 2000.0]
    Xt = np.hstack([X, np.ones((5000, 1))])
    G = Xt.T @ Xt / 5000
    plain = whiten(G, damping=0, floor=0)
    centred = whiten(G, damping=0, floor=0, center=3)
    assert centred.diagnostics.raw_condition_number < 10
    assert plain.diagnostics.raw_condition_number > 1e5
    assert_allclose(centred.matrix.T @ centred.matrix, G, rtol=1e-9)
    assert_allclose(centred.matrix @ centred.inverse, np.eye(4), atol=1e-9)
    g = rng.standard_normal(4)
    assert_allclose(centred.natural_gradient(g), np.linalg.solve(G, g), rtol=1e-6)


def test_a_centre_with_a_round_off_diagonal_is_not_eliminated():
    """A saturated unit's bias has a metric diagonal of ~1e-85: dividing by it would
    wreck the whitener (|W W⁻¹ − I| was 1e25); such a centre is skipped.
    """
    rng = np.random.default_rng(0)
    B = rng.standard_normal((4, 40))
    B[2] *= 1e-43
    G = B @ B.T / 40
    W = whiten(G, center=(2, 3))
    assert_allclose(W.matrix @ W.inverse, np.eye(4), atol=1e-9)
    assert np.all(np.isfinite(W.natural_gradient(np.ones(4))))


def test_round_off_negative_diagonal_reads_as_zero_but_real_negatives_fail():
    G = np.diag([1.0, 2.0, -1e-17])
    W = whiten(G)
    assert np.all(np.isfinite(W.matrix)) and W.diagnostics.zero_diagonal == 1
    with pytest.raises(WhiteningError, match="negative diagonal"):
        whiten(np.diag([1.0, 2.0, -1e-3]))


def test_several_centres_whiten_a_rank_deficient_batch_metric():
    """Fewer rows than parameters, 3 intercept-like columns: each elimination step leaves
    round-off on zero diagonals; the factorization still succeeds and stays exact where
    the metric is informative.
    """
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((6, 12))
    rows[:, [3, 7, 11]] = 1.0 + 0.1 * rng.standard_normal((6, 3))
    G = rows.T @ rows / 6
    W = whiten(G, center=(3, 7, 11))
    assert np.all(np.isfinite(W.matrix)) and np.all(np.isfinite(W.inverse))
    assert_allclose(W.matrix @ W.inverse, np.eye(12), atol=1e-6)


def test_an_all_zero_block_gets_the_floor_instead_of_failing_the_refresh():
    G = np.zeros((4, 4))
    G[:2, :2] = [[2.0, 1.0], [1.0, 2.0]]
    W = whiten(G, blocks=np.array([0, 2, 4]), damping=0.0, floor=0.0)
    assert_allclose(W.matrix[:2, :2].T @ W.matrix[:2, :2], G[:2, :2], rtol=1e-10)
    assert W.diagnostics.zero_diagonal == 2
    assert np.all(np.isfinite(W.inverse))
    with pytest.raises(WhiteningError, match="zero"):
        whiten(np.zeros((4, 4)), blocks=np.array([0, 2, 4]))


def test_elimination_keeps_the_sign_on_parameters_of_tiny_scale():
    """A saturated unit's parameters have metric entries near 1e-220: squaring them
    underflows, and an elimination step computed as (g ⊗ g)/g_kk turned their Schur
    complements negative (-4e-209 against a diagonal of 1e-204), which failed the refresh
    (the mlp on raw diabetes features). Every other scale of the same metric whitens.
    """
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 40))
    A = A @ A.T / 40
    for tiny in (1.0, 1e-60, 1e-110):
        d = np.array([1.0, tiny, tiny, tiny, 1.0, 1.0])
        G = A * np.outer(d, d)
        w = whiten(G, center=[1, 2])
        WtW = w.matrix.T @ w.matrix
        assert np.allclose(WtW / np.outer(d, d), A, rtol=1e-8, atol=1e-10)


def _one_hot_fisher(levels, rows, seen):
    """Fisher of a logistic model at θ = 0 (weights ¼) on ``rows`` rows of a full one-hot
    encoding with an intercept (θ[0]), whose levels are drawn from ``seen`` only.
    """
    rng = np.random.default_rng(0)
    X = np.zeros((rows, levels + 1))
    X[:, 0] = 1.0
    X[np.arange(rows), 1 + rng.choice(seen, rows)] = 1.0
    return 0.25 * X.T @ X / rows


def test_a_direction_no_row_has_moved_gets_the_mean_curvature_not_the_floor():
    # 20 levels, level 19 absent from the rows the metric saw: after the intercept's
    # elimination the 19 seen levels' sum is a null direction of the metric, which a row of
    # level 19 does move (it breaks the collinearity)
    G = _one_hot_fisher(20, 400, np.arange(19))
    W = whiten(G, center=0)
    assert W.diagnostics.unidentified == 1
    x = np.zeros(21)
    x[0], x[20] = 1.0, 1.0  # the gradient of one row of level 19 (residual ½)
    step = W.inverse @ (W.inverse.T @ (0.5 * x))
    # the step is the size a seen level's row gets (the floor gave about 1e9 times it)
    seen = np.zeros(21)
    seen[0], seen[1] = 1.0, 1.0
    reference = W.inverse @ (W.inverse.T @ (0.5 * seen))
    assert np.abs(step).max() < 10 * np.abs(reference).max()
    # every level seen: the null direction is the encoding's own collinearity, which no
    # row moves (zero gradient, so a zero step either way); drop a level and none is left
    full = _one_hot_fisher(20, 400, np.arange(20))
    assert whiten(full, center=0).diagnostics.unidentified == 1
    dropped = np.delete(np.delete(full, 1, axis=0), 1, axis=1)
    assert whiten(dropped, center=0).diagnostics.unidentified == 0


def test_soft_but_identified_directions_keep_the_floor():
    G = np.array([[1.0, 1.0 - 1e-9], [1.0 - 1e-9, 1.0]])  # condition about 2e9, identified
    W = whiten(G, damping=0.0, floor=0.0)
    assert W.diagnostics.unidentified == 0
    assert_allclose(W.matrix.T @ W.matrix, G, atol=1e-12)
