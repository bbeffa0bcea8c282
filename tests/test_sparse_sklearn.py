"""Sparse input through the scikit-learn estimators, against scikit-learn's own fits."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from natgrad_stream.sklearn import (
    NaturalGradientClassifier,
    NaturalGradientPoissonRegressor,
    NaturalGradientRegressor,
)


def _categories(n=3000, levels=(7, 30, 120), seed=0):
    """A table of integer categories and a label drawn from per-level effects."""
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, k, n) for k in levels]
    effects = [rng.normal(0, 1, k) for k in levels]
    z = sum(e[c] for e, c in zip(effects, cols, strict=True)) - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return np.column_stack(cols), y


def _objective(est, X, y, C):
    """Mean log-loss + λ/2·‖coef‖² with λ = 1/(C·n), from the fitted coefficients."""
    p = np.clip(est.predict_proba(X)[:, 1], 1e-300, 1 - 1e-16)
    n = X.shape[0]
    coef = est.coef_.ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
                 + 0.5 / (C * n) * coef @ coef)


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_one_hot_pipeline_matches_logistic_regression(C):
    X, y = _categories()
    ours = make_pipeline(OneHotEncoder(), NaturalGradientClassifier(C=C)).fit(X, y)
    ref = make_pipeline(OneHotEncoder(), LogisticRegression(C=C, tol=1e-12, max_iter=10_000)
                        ).fit(X, y)
    Xt = OneHotEncoder().fit_transform(X)
    assert sp.issparse(Xt)
    j_ours = _objective(ours[-1], Xt, y, C)
    j_ref = _objective(ref[-1], Xt, y, C)
    assert j_ours <= j_ref * (1 + 1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert ours[-1].converged_


def test_wide_one_hot_uses_the_diagonal_and_reaches_the_optimum():
    # 2,500 levels: P > 2,048, so structure auto picks the diagonal with L-BFGS passes
    X, y = _categories(n=20_000, levels=(2_500, 12), seed=1)
    C = 1.0
    Xt = OneHotEncoder().fit_transform(X)
    ours = NaturalGradientClassifier(C=C).fit(Xt, y)
    assert ours.learner_.structure == "diagonal"
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(Xt, y)
    assert _objective(ours, Xt, y, C) <= _objective(ref, Xt, y, C) * (1 + 1e-6)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_formats_fit_like_dense(fmt):
    rng = np.random.default_rng(2)
    D = sp.random(2000, 40, density=0.1, random_state=3, format="csr")
    y = (rng.random(2000) < 0.4).astype(int)
    sparse_fit = NaturalGradientClassifier().fit(D.asformat(fmt), y)
    dense_fit = NaturalGradientClassifier().fit(D.toarray(), y)
    np.testing.assert_allclose(sparse_fit.coef_, dense_fit.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse_fit.predict_proba(D.asformat(fmt)),
                               dense_fit.predict_proba(D.toarray()), atol=1e-12)


def test_regressors_take_sparse_input():
    rng = np.random.default_rng(4)
    D = sp.random(3000, 30, density=0.2, random_state=5, format="csr")
    beta = rng.normal(0, 0.5, 30)
    y = D @ beta + 0.1 * rng.standard_normal(3000)
    ours = NaturalGradientRegressor(alpha=1.0).fit(D, y)
    ref = Ridge(alpha=1.0, tol=1e-12).fit(D.toarray(), y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    counts = rng.poisson(np.exp(D @ (beta / 2)))
    ours = NaturalGradientPoissonRegressor(alpha=0.01).fit(D, counts)
    ref = PoissonRegressor(alpha=0.01, tol=1e-12, max_iter=10_000).fit(D, counts)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-5, atol=1e-7)


def test_partial_fit_on_sparse_batches():
    X, y = _categories(n=2000)
    Xt = OneHotEncoder().fit_transform(X).tocsr()
    est = NaturalGradientClassifier()
    for a in range(0, 2000, 500):
        est.partial_fit(Xt[a:a + 500], y[a:a + 500], classes=[0, 1])
    assert est.coef_.shape == (1, Xt.shape[1]) and np.isfinite(est.coef_).all()
    assert est.score(Xt, y) > 0.6
