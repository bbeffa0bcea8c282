"""Regression by a true one-hidden-layer tanh network plus Gaussian noise.

``y = w2 · tanh(W1 x + b1) + b2 + N(0, NOISE_STD²)`` with ``HIDDEN`` units, on the raw,
correlated, badly scaled features of :class:`natgrad_stream.data.datasets.FeatureModel`
(scales over three decades, offsets far from zero), so that steepest descent in θ is slow.
The true first layer is drawn on the *standardized* latent features ``u`` (unit variance)
with pre-activations of standard deviation ``PREACT_STD`` (units are nonlinear but not
saturated), then expressed on the raw features: ``W1 = V / scales``,
``b1 = c − W1 · offsets``. The parameter names match :class:`MLPRegressor`'s
``params_to_dict``; ``feature_seed`` rebuilds the feature distribution.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

Y_DTYPE = "float32"
#: Hidden units of the true network.
HIDDEN = 8
#: Standard deviation of the additive Gaussian noise on ``y`` (the Bayes MSE is its square).
NOISE_STD = 0.1
#: Standard deviation of each true pre-activation over the data.
PREACT_STD = 1.5


@lru_cache(maxsize=8)
def _features(features: int, seed: int):
    from natgrad_stream.data.datasets import FeatureModel

    return FeatureModel(features, seed)


def true_params(features: int, seed: int) -> dict:
    """The true network, JSON-ready: ``W1`` (H × d), ``b1``, ``W2`` (1 × H), ``b2`` (1,)."""
    fm = _features(int(features), int(seed))
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["mlp"]])
    d = int(features)
    C = fm.factor @ fm.factor.T  # correlation of the standardized features
    V = rng.standard_normal((HIDDEN, d))
    V *= PREACT_STD / np.sqrt(np.einsum("jk,kl,jl->j", V, C, V))[:, None]
    c = rng.uniform(-1.0, 1.0, HIDDEN)
    W1 = V / fm.scales
    b1 = c - W1 @ fm.offsets
    w2 = rng.standard_normal(HIDDEN)
    b2 = rng.uniform(-0.5, 0.5)
    return {"W1": W1.tolist(), "b1": b1.tolist(), "W2": [w2.tolist()], "b2": [float(b2)],
            "noise_std": NOISE_STD, "hidden": HIDDEN, "features": d, "feature_seed": int(seed)}


def network(params: dict, X: np.ndarray) -> np.ndarray:
    """The noiseless true output ``w2 · tanh(W1 x + b1) + b2``, shape (n,)."""
    W1 = np.asarray(params["W1"])
    w2 = np.asarray(params["W2"])[0]
    return np.tanh(X @ W1.T + np.asarray(params["b1"])) @ w2 + params["b2"][0]


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows: raw features (float64) and noisy targets (float32)."""
    fm = _features(int(params["features"]), int(params["feature_seed"]))
    X = fm.sample(rng, n)
    y = network(params, X) + params["noise_std"] * rng.standard_normal(n)
    return X, y.astype(np.float32)
