"""A full one-hot encoding (scikit-learn's default, no level dropped) with an intercept:
collinear, and a level missing from the rows behind the first metric breaks the
collinearity on the rows that follow. Once a divergence (θ at 5e6 on the second batch).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from natgrad_stream.models import make_model
from natgrad_stream.sklearn import NaturalGradientClassifier
from natgrad_stream.training.learner import NaturalGradientLearner

LEVELS = 200


@pytest.fixture(scope="module")
def one_hot():
    rng = np.random.default_rng(1)
    n = 6000
    level = rng.integers(0, LEVELS, n)
    level[:1024] = rng.integers(0, LEVELS - 1, 1024)  # the last level comes later
    effect = rng.normal(0.0, 0.3, LEVELS)
    y = (rng.random(n) < 1 / (1 + np.exp(-effect[level]))).astype(np.float64)
    positives = np.bincount(level, weights=y, minlength=LEVELS)
    counts = np.bincount(level, minlength=LEVELS)
    assert np.all((positives > 0) & (positives < counts))  # no level separated
    assert np.bincount(level[:1024], minlength=LEVELS).min() == 0  # a level the first
    X = np.zeros((n, LEVELS))                                       # batch lacks
    X[np.arange(n), level] = 1.0
    return X, y


def test_a_pass_over_a_full_one_hot_encoding_does_not_diverge(one_hot):
    X, y = one_hot
    learner = NaturalGradientLearner(make_model("logistic", n_features=LEVELS))
    learner.fit((X, y), epochs=1)
    assert np.abs(learner.theta).max() < 10
    assert learner.model.loss(X, y, learner.theta) < np.log(2)


def test_the_default_fit_reaches_the_unpenalized_optimum(one_hot):
    X, y = one_hot
    with pytest.warns(UserWarning, match=r"1 direction\(s\) of the parameters are not "
                      r"identified .* moving θ indices \[0, 1, 2"):
        est = NaturalGradientClassifier(C=np.inf).fit(X, y)
    with warnings.catch_warnings():  # Newton–Cholesky meets the collinearity, takes lbfgs
        warnings.simplefilter("ignore")
        ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12,
                                 max_iter=1000).fit(X, y)
    # the coefficients are not identified (any shift between the levels and the intercept),
    # the probabilities and the loss are: the loss within the fit's tolerance 1e-10
    J, J_ref = log_loss(y, est.predict_proba(X)), log_loss(y, ref.predict_proba(X))
    assert est.converged_
    assert abs(J - J_ref) <= 1e-8 * J_ref
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-4)
