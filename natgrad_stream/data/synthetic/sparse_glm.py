"""Sparse GLM tasks: ``k`` non-zero features a row, drawn from a known true model.

Each row holds ``k = max(1, round(density · d))`` non-zeros in distinct columns drawn
uniformly, with standard normal values. The true coefficients are ``N(0, σ²)`` with
``σ = STD / √k``, so the linear predictor ``z = x·β + b`` has standard deviation ``STD``
whatever ``d`` and ``k``: ``logistic`` (``STD`` 2, ``y ~ Bernoulli(sigmoid(z))``, uint8),
``linear`` (``y = z + N(0, 1)``, float32), ``poisson`` (log-rate ``STD`` 0.5 and mean rate
2, as the dense task; counts as float32) and ``softmax`` (3 classes, class 0 the
reference, uint8). The coefficients are stored as the array ``true_coef`` (shape ``(d,)``,
or ``(K, d)`` for softmax), not in the attributes: ``d`` may be 10⁶.
"""

from __future__ import annotations

import math

import numpy as np

from natgrad_stream._constants import RNG_TRUE_PARAMS

#: Tasks with a sparse generator.
SPARSE_TASKS = ("logistic", "linear", "poisson", "softmax")
#: Standard deviation of the linear predictor (per non-reference class for softmax).
PREDICTOR_STD = {"logistic": 2.0, "linear": 2.0, "poisson": 0.5, "softmax": 2.0}
#: Mean rate of the Poisson task.
MEAN_RATE = 2.0
#: Classes of the softmax task.
N_CLASSES = 3
Y_DTYPES = {"logistic": "uint8", "linear": "float32", "poisson": "float32",
            "softmax": "uint8"}


def nonzeros_per_row(density: float, features: int) -> int:
    """Non-zeros a row: ``round(density · features)``, at least 1."""
    return max(1, min(int(features), round(float(density) * int(features))))


def true_params(task: str, features: int, k: int, seed: int) -> tuple[dict, np.ndarray]:
    """``(attributes, coef)``: the intercept(s) (JSON-ready) and the coefficients array."""
    if task not in SPARSE_TASKS:
        raise ValueError(f"--density applies to the tasks {', '.join(SPARSE_TASKS)}, "
                         f"not {task!r}")
    rng = np.random.default_rng([seed, RNG_TRUE_PARAMS])
    sigma = PREDICTOR_STD[task] / math.sqrt(k)
    if task == "softmax":
        coef = rng.standard_normal((N_CLASSES, features)) * sigma
        coef[0] = 0.0
        intercept = np.concatenate([[0.0], rng.uniform(-0.5, 0.5, N_CLASSES - 1)])
        return {"intercept": intercept.tolist(), "n_classes": N_CLASSES}, coef
    coef = rng.standard_normal(features) * sigma
    if task == "poisson":  # E[exp(N(m, s²))] = exp(m + s²/2) = MEAN_RATE
        intercept = math.log(MEAN_RATE) - 0.5 * PREDICTOR_STD[task] ** 2
    else:
        intercept = float(rng.uniform(-0.5, 0.5))
    return {"intercept": intercept}, coef


def distinct_columns(rng: np.random.Generator, n: int, k: int, d: int) -> np.ndarray:
    """``(n, k)`` sorted column indices, distinct within each row, uniform over ``[0, d)``."""
    if 4 * k > d:  # dense rows: a random subset by sorting random keys
        return np.sort(np.argsort(rng.random((n, d)), axis=1)[:, :k], axis=1)
    cols = np.sort(rng.integers(0, d, (n, k)), axis=1)
    while True:
        dup = np.nonzero(cols[:, 1:] == cols[:, :-1])
        if not dup[0].size:
            return cols
        cols[dup[0], dup[1] + 1] = rng.integers(0, d, dup[0].size)
        cols.sort(axis=1)


def sample_chunk(task: str, params: dict, coef: np.ndarray, rng: np.random.Generator,
                 n: int, k: int):
    """``(columns (n, k) int64, values (n, k) float64, y (n,))`` from the true model."""
    d = coef.shape[-1]
    cols = distinct_columns(rng, n, k, d)
    vals = rng.standard_normal((n, k))
    if task == "softmax":
        Z = np.einsum("nk,cnk->nc", vals, coef[:, cols]) + np.asarray(params["intercept"])
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        cdf = np.cumsum(P, axis=1) / P.sum(axis=1, keepdims=True)
        y = np.minimum((rng.random(n)[:, None] >= cdf).sum(axis=1), coef.shape[0] - 1)
        return cols, vals, y.astype(np.uint8)
    z = (vals * coef[cols]).sum(axis=1) + params["intercept"]
    if task == "logistic":
        y = rng.random(n) < 0.5 * (1.0 + np.tanh(0.5 * z))
    elif task == "linear":
        y = z + rng.standard_normal(n)
    else:
        y = rng.poisson(np.exp(z))
    return cols, vals, y.astype(Y_DTYPES[task])
