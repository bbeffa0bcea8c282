"""Poisson task: counts ``y ~ Poisson(exp(x·β + b))`` on raw features.

Features come from :class:`natgrad_stream.data.datasets.FeatureModel` (correlated, scales
over three decades, offsets far from zero). The log-rate has standard deviation
:data:`LOG_RATE_STD` and the mean rate is :data:`MEAN_RATE`, so rates stay moderate (the
log-rate is Gaussian: beyond 6 standard deviations a rate exceeds 2·e³ ≈ 40 with
probability below 1e-9) and ``exp`` never overflows. Counts are stored as float32.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

#: Standard deviation of the log-rate ``x·β + b`` over the feature distribution.
LOG_RATE_STD = 0.5
#: Mean rate ``E[exp(x·β + b)]``.
MEAN_RATE = 2.0
#: Counts, stored as floats (the model reads float64 targets).
Y_DTYPE = "float32"


@functools.lru_cache(maxsize=8)
def _feature_model(features: int, seed: int):
    from natgrad_stream.data.datasets import FeatureModel

    return FeatureModel(features, seed)


def true_params(features: int, seed: int) -> dict:
    """The true model: ``coef`` (d), ``intercept``; ``feature_seed`` seeds the features."""
    fm = _feature_model(int(features), int(seed))
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["poisson"]])
    beta = rng.standard_normal(features) / fm.scales
    beta *= LOG_RATE_STD / math.sqrt(beta @ fm.covariance() @ beta)
    # E[exp(N(m, s²))] = exp(m + s²/2) = MEAN_RATE
    intercept = math.log(MEAN_RATE) - 0.5 * LOG_RATE_STD**2 - float(fm.offsets @ beta)
    return {"coef": beta.tolist(), "intercept": intercept, "feature_seed": int(seed)}


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows ``(X (n, d) float64, y (n,) float32 counts)`` from the true model."""
    beta = np.asarray(params["coef"], dtype=np.float64)
    fm = _feature_model(beta.shape[0], int(params["feature_seed"]))
    X = fm.sample(rng, n)
    mu = np.exp(X @ beta + params["intercept"])
    return X, rng.poisson(mu).astype(np.float32)
