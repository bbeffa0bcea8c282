"""Shrinking the running metric toward its diagonal (issue 18): the OAS intensity against
scikit-learn's, the G-space form against the scaled, centred definition, and wide logistic
data that diverged with the unshrunk one-batch metric.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.geometry.fisher import RunningFisher
from natgrad_stream.geometry.shrinkage import (
    TAPER_ROWS_PER_PARAM,
    oas_intensity,
    schur_complement,
    shrink,
    taper,
)
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.training.events import Callback


def _correlation(C):
    d = np.sqrt(np.diag(C))
    return C / np.outer(d, d)


@pytest.mark.parametrize("n, p", [(50, 200), (400, 200), (5000, 200), (2000, 40)])
def test_oas_intensity_matches_scikit_learn(n, p):
    """Our intensity is the paper's (Chen et al. 2010, eq. 23); scikit-learn's ``oas``
    drops its 2/p terms, so the two agree to O(2/p) relative on a unit-diagonal matrix.
    """
    from sklearn.covariance import oas

    rng = np.random.default_rng(n + p)
    L = rng.standard_normal((p, p)) / np.sqrt(p) + np.eye(p)
    X = rng.standard_normal((n, p)) @ L.T
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    S = X.T @ X / n
    _, rho_sklearn = oas(X, assume_centered=True)
    assert oas_intensity(S, n) == pytest.approx(rho_sklearn, rel=3.0 / p, abs=1e-12)


def test_intensity_follows_the_evidence():
    """Independent features: the diagonal is the truth, every n shrinks fully; correlated
    ones (a random factor structure): few rows shrink much, many rows little; a strongly
    correlated metric from many rows keeps its correlations; diagonal input and p < 2: 0.
    """
    rng = np.random.default_rng(0)
    p = 100
    for n in (p, 100 * p):
        X = rng.standard_normal((n, p))
        assert oas_intensity(_correlation(X.T @ X / n), n) > 0.9
    L = rng.standard_normal((p, 5))
    rhos = []
    for n in (p // 2, p, 100 * p):
        X = rng.standard_normal((n, 5)) @ L.T + rng.standard_normal((n, p))
        rhos.append(oas_intensity(_correlation(X.T @ X / n), n))
    assert rhos[0] > rhos[1] > rhos[2] and rhos[0] > 0.1 and rhos[2] < 0.002
    C = 0.9 * np.ones((p, p)) + 0.1 * np.eye(p)
    assert oas_intensity(C, 10_000) < 1e-3
    assert oas_intensity(np.eye(p), 10) == 0.0
    assert oas_intensity(np.ones((1, 1)), 10) == 0.0


def test_shrink_is_the_scaled_centred_shrinkage():
    """G_ρ = G − ρ (G_c − Diag G_c): in the Jacobi-scaled coordinates of the centred metric
    G_c (the intercept eliminated) it is (1 − ρ) S + ρ Diag S, and it keeps the intercept's
    coupling to the features (the means), which few rows estimate well.
    """
    rng = np.random.default_rng(1)
    n, d = 100, 40
    Z = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + rng.standard_normal((n, d))
    X = np.c_[Z * rng.uniform(0.1, 10, d) + 5.0, np.ones(n)]
    G = X.T @ X / n
    Gr, rho = shrink(G, n, centers=[d])
    assert 0 < rho < 1
    Gc = schur_complement(G, [d])
    # the Schur complement is the covariance of the features (biased), zero on the intercept
    assert_allclose(Gc[:d, :d], np.cov(X[:, :d].T, bias=True), rtol=1e-9, atol=1e-9)
    assert not Gc[d].any() and not Gc[:, d].any()
    Gc_r = schur_complement(Gr, [d])
    S, Sr = _correlation(Gc[:d, :d]), _correlation(Gc_r[:d, :d])
    assert_allclose(Sr, (1 - rho) * S + rho * np.diag(np.diag(S)), rtol=1e-9, atol=1e-12)
    # tapered: 100 rows for 41 parameters
    assert rho == pytest.approx(oas_intensity(S, n) * (1 - n / (TAPER_ROWS_PER_PARAM * 41)),
                                rel=1e-12)
    assert_allclose(Gr[:, d], G[:, d], rtol=1e-12)  # intercept row untouched
    assert shrink(G, None, centers=[d]) == (G, 0.0)
    assert shrink(np.diag(G), n)[1] == 0.0  # a diagonal metric has nothing to shrink


def test_blocks_shrink_on_their_own():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((20, 5)), rng.standard_normal((20, 7))
    G = np.zeros((12, 12))
    G[:5, :5], G[5:, 5:] = A.T @ A / 20, B.T @ B / 20
    Gr, rho = shrink(G, 20, blocks=np.array([0, 5, 12]))
    assert not Gr[:5, 5:].any()
    for a, b, M in ((0, 5, A), (5, 12, B)):
        r = oas_intensity(_correlation(M.T @ M / 20), 20) * (1 - 20 / (TAPER_ROWS_PER_PARAM
                                                                     * (b - a)))
        off = G[a:b, a:b] - np.diag(np.diag(G[a:b, a:b]))
        assert_allclose(Gr[a:b, a:b], G[a:b, a:b] - r * off, rtol=1e-12)
        assert rho >= r


def test_taper_trusts_an_estimate_with_enough_rows():
    """Full OAS with no rows, none from TAPER_ROWS_PER_PARAM rows per parameter (where the
    natural gradient's invariance to feature maps is kept exactly), linear between.
    """
    P = 40
    assert taper(0, P) == 1.0
    assert taper(TAPER_ROWS_PER_PARAM * P / 2, P) == pytest.approx(0.5)
    assert taper(TAPER_ROWS_PER_PARAM * P, P) == 0.0 == taper(1e9, P)
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((2000, 3)) @ rng.standard_normal((3, 10))
    X = Z + rng.standard_normal((2000, 10))
    G = X.T @ X / 2000
    assert shrink(G, 20)[1] > 0 and shrink(G, TAPER_ROWS_PER_PARAM * 10)[1] == 0.0


def test_running_fisher_counts_decayed_rows_and_restores_them():
    f = RunningFisher(2, half_life=100.0)
    f.add(np.eye(2), weight=1.0, rows=100)
    f.add(np.eye(2), weight=1.0, rows=100)
    assert f.rows == pytest.approx(150.0)  # 100 · ½ + 100
    g = RunningFisher.from_state(f.state_dict())
    assert g.rows == f.rows
    old = f.state_dict()
    del old["rows"]  # a checkpoint written before the count existed
    assert RunningFisher.from_state(old).rows == f.samples
    assert f.merge(g).rows == 2 * f.rows


class _Refreshes(Callback):
    """Collects a fit's re-whitening events."""

    def __init__(self, events):
        self.events = events

    def on_refresh(self, learner, event):
        self.events.append(event)


@pytest.mark.slow
def test_wide_logistic_one_pass_no_longer_diverges(tmp_path):
    """1,000 raw, ill-conditioned features, 20,000 rows: the first whitening came from one
    batch of 1,024 rows for 1,001 parameters (condition 1e6, refreshed from that one batch
    for 63 batches) and the pass rolled back twice, ending 52% above the optimum. Shrunk
    and warmed up (every batch folds into the metric until it holds 4 rows per parameter,
    now 32), it makes no rollback and ends within 3% (measured 1.4% with 4; 20 rows per
    parameter); the first re-whitenings are shrunk.
    """
    import zarr
    from sklearn.linear_model import LogisticRegression

    from natgrad_stream.data.datasets import make_dataset

    make_dataset(tmp_path / "d.zarr", task="logistic", rows=20_000, features=1000, seed=3)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    X, y = np.asarray(g["X"][:], np.float64), np.asarray(g["y"][:], np.float64)
    model = make_model("logistic", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rollback warns
        learner = NaturalGradientLearner(model).fit((X, y), epochs=1,
                                                     callbacks=[_Refreshes(events := [])])
    assert all(e["ok"] for e in events) and 0 < events[0]["shrinkage"] < 1
    mu, sd = X.mean(axis=0), X.std(axis=0)
    ref = LogisticRegression(C=np.inf, tol=1e-8, max_iter=10_000).fit((X - mu) / sd, y)
    z = (X - mu) / sd @ ref.coef_[0] + ref.intercept_[0]
    J_star = float(np.mean(np.logaddexp(0, z) - y * z))
    assert model.loss(X, y, learner.theta) <= 1.03 * J_star


def test_a_wide_one_pass_folds_every_batch_into_its_metric(tmp_path):
    """300 raw features, 10,000 rows (33 per parameter): the metric folded every batch only
    until it held 4 rows per parameter, then one batch in round(P/16) = 19, so one pass's
    whitener rested on 2 of its 10 batches. It now folds every batch while the estimate
    holds fewer than ``METRIC_WARMUP_ROWS_PER_PARAM`` (32) rows per parameter.
    """
    from natgrad_stream.data.datasets import make_dataset

    make_dataset(tmp_path / "d.zarr", task="logistic", rows=10_000, features=300, seed=3)
    import zarr

    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    X, y = np.asarray(g["X"][:], np.float64), np.asarray(g["y"][:], np.float64)
    learner = NaturalGradientLearner(make_model("logistic", 300)).fit((X, y), epochs=1)
    assert learner.fisher_every == 19
    assert learner.state.fisher.samples == 10_000


@pytest.mark.slow
def test_a_wide_one_pass_at_33_rows_per_parameter_ends_near_the_optimum(tmp_path):
    """1,000 raw, ill-conditioned features, 33,000 rows: one default pass ended 0.70% above
    the optimum when its metric stopped folding batches at 4 rows per parameter; folding
    every batch up to 32 rows per parameter, 0.39% (measured; the bound 0.5% is the issue's
    target for one pass).
    """
    import zarr
    from sklearn.linear_model import LogisticRegression

    from natgrad_stream.data.datasets import make_dataset

    make_dataset(tmp_path / "d.zarr", task="logistic", rows=33_000, features=1000, seed=3)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    X, y = np.asarray(g["X"][:], np.float64), np.asarray(g["y"][:], np.float64)
    model = make_model("logistic", 1000)
    learner = NaturalGradientLearner(model).fit((X, y), epochs=1)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    ref = LogisticRegression(C=np.inf, tol=1e-8, max_iter=10_000).fit((X - mu) / sd, y)
    z = (X - mu) / sd @ ref.coef_[0] + ref.intercept_[0]
    J_star = float(np.mean(np.logaddexp(0, z) - y * z))
    assert model.loss(X, y, learner.theta) <= 1.005 * J_star
