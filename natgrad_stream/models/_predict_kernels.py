"""Linear predictors of the GLMs and softmax for predictions: ``z = X̃ θ_c`` per block.

``theta`` holds ``m`` blocks of ``D = d + 1`` parameters ``[coef_c (d), intercept_c]``
(a GLM: ``m = 1``; softmax: the ``K − 1`` non-reference classes); ``out`` is ``(n, m)``
float64: each row is the float64 sum of :func:`~natgrad_stream.models._glm_kernels.
linear_predictor`, term for term, so predictions agree with the training and evaluation
kernels to round-off.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import jit
from natgrad_stream.models._softmax_kernels import softmax_of_logits


@jit
def dense_linear_predictors(X, theta, out):  # pragma: no cover - compiled
    """``out[i, c] = X[i]·θ_c[:d] + θ_c[d]`` for dense rows ``X`` (n, d)."""
    n, d = X.shape
    D = d + 1
    for i in range(n):
        for c in range(out.shape[1]):
            o = c * D
            z = theta[o + d]
            for j in range(d):
                z += X[i, j] * theta[o + j]
            out[i, c] = z


@jit
def sparse_linear_predictors(data, indices, indptr, theta, out):  # pragma: no cover
    """:func:`dense_linear_predictors` for CSR rows (``d = len(theta) / m − 1``)."""
    m = out.shape[1]
    D = theta.shape[0] // m
    d = D - 1
    for i in range(out.shape[0]):
        for c in range(m):
            o = c * D
            z = theta[o + d]
            for k in range(indptr[i], indptr[i + 1]):
                z += data[k] * theta[o + indices[k]]
            out[i, c] = z


@jit
def logistic_probabilities(z, out):  # pragma: no cover - compiled
    """``out[i] = [1 − p_i, p_i]``, ``p = sigmoid(z)``, both from one ``exp(−|z|)`` (each
    accurate, the smaller one too), and the class ``z > 0``; ``out`` (n, 2).
    """
    for i in range(z.shape[0]):
        e = np.exp(-abs(z[i]))
        big = 1.0 / (1.0 + e)
        small = e * big
        if z[i] >= 0.0:
            out[i, 0], out[i, 1] = small, big
        else:
            out[i, 0], out[i, 1] = big, small


@jit
def softmax_probabilities(Z, out):  # pragma: no cover - compiled
    """Rows of ``out`` (n, K): the softmax of the logits ``Z`` (n, K)."""
    for i in range(Z.shape[0]):
        softmax_of_logits(Z[i], out[i])
