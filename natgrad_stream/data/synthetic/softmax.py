"""Softmax task: ``K`` classes drawn from a multinomial logistic model on raw features.

Features come from :class:`natgrad_stream.data.datasets.FeatureModel` (correlated, scales
over three decades, offsets far from zero). For each class ``c = 1 … K−1`` the logit is
``z_c = x·β_c + b_c`` with standard deviation :data:`LOGIT_STD` over the features; class 0
is the reference (``z_0 = 0``), the layout of :class:`~natgrad_stream.models.softmax.
SoftmaxRegression`. Labels ``y ~ Categorical(softmax(z))`` are stored as uint8.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

#: Number of classes.
N_CLASSES = 3
#: Standard deviation of each non-reference class logit over the feature distribution.
LOGIT_STD = 2.0
#: Labels are class indices 0 … K−1.
Y_DTYPE = "uint8"


@functools.lru_cache(maxsize=8)
def _feature_model(features: int, seed: int):
    from natgrad_stream.data.datasets import FeatureModel

    return FeatureModel(features, seed)


def true_params(features: int, seed: int) -> dict:
    """The true model: ``coef`` (K × d, row 0 zeros), ``intercept`` (K), ``n_classes``.

    ``feature_seed`` records the seed of the feature distribution.
    """
    fm = _feature_model(int(features), int(seed))
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["softmax"]])
    C = fm.covariance()
    coef = np.zeros((N_CLASSES, features))
    intercept = np.zeros(N_CLASSES)
    for c in range(1, N_CLASSES):
        beta = rng.standard_normal(features) / fm.scales
        beta *= LOGIT_STD / math.sqrt(beta @ C @ beta)
        coef[c] = beta
        intercept[c] = -fm.offsets @ beta + rng.uniform(-0.5, 0.5)
    return {"coef": coef.tolist(), "intercept": intercept.tolist(), "n_classes": N_CLASSES,
            "feature_seed": int(seed)}


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows ``(X (n, d) float64, y (n,) uint8)`` from the true model."""
    coef = np.asarray(params["coef"], dtype=np.float64)
    fm = _feature_model(coef.shape[1], int(params["feature_seed"]))
    X = fm.sample(rng, n)
    Z = X @ coef.T + np.asarray(params["intercept"])
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    cdf = np.cumsum(P, axis=1) / P.sum(axis=1, keepdims=True)
    u = rng.random(n)
    y = np.minimum((u[:, None] >= cdf).sum(axis=1), coef.shape[0] - 1)
    return X, y.astype(np.uint8)
