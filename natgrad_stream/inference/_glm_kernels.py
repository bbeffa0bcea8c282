"""Fused inference kernel of the dense GLMs: one sweep over the rows for both Grams.

The model's own kernel (``models/_glm_kernels.py``) sums one metric kind per call, so the
inference pass would compute every row's ``z``, loss and gradient twice and read ``X``
twice. Here each row is read once and scaled into two transposed blocks, ``√(wᵢcᵢ) x̃ᵢ``
(the model Fisher's weight) and ``√wᵢ |rᵢ| x̃ᵢ`` (the score outer product's), each added by
the shared blocked Gram update; the per-row quantities are the model's (``glm_row``).
For wider models (see ``sums.INFERENCE_BLAS_MIN_PARAMS``) :func:`glm_scale_range` only
writes the scaled rows, whose two Grams BLAS's ``dsyrk`` computes at about twice the
speed of the Numba update.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._glm_kernels import glm_row, linear_predictor
from natgrad_stream.models._gram_kernels import (
    BLOCK_ROWS,
    symmetrize_from_upper,
    syrk_upper,
    thread_ranges,
    zero_columns,
)


@jit
def glm_inference_range(X, y, w, theta, family, start, stop, grad, fisher, meat, SA,
                        SB):  # pragma: no cover - compiled
    """Add rows ``start:stop``'s sums: ``Σ wℓ`` and ``Σ w`` (returned), ``Σ w∇ℓ`` into
    ``grad`` (P,), the model Fisher ``Σ w c x̃x̃ᵀ`` and the score outer product
    ``Σ w r² x̃x̃ᵀ`` into the upper triangles of ``fisher`` and ``meat`` (P, P); ``SA`` and
    ``SB`` (P, BLOCK_ROWS) are scratch. ``w`` of shape (0,) means unit weights.
    """
    loss_sum = 0.0
    weight_sum = 0.0
    for b0 in range(start, stop, BLOCK_ROWS):
        b1 = min(b0 + BLOCK_ROWS, stop)
        # the scaled rows written as the columns of SA and SB (their transposes' rows)
        loss, weight = glm_scale_range(X, y, w, theta, family, b0, b1, b0, grad, SA.T,
                                       SB.T)
        loss_sum += loss
        weight_sum += weight
        if b1 - b0 < BLOCK_ROWS:
            zero_columns(SA, b1 - b0)
            zero_columns(SB, b1 - b0)
        syrk_upper(SA, fisher)
        syrk_upper(SB, meat)
    return loss_sum, weight_sum


@jit
def glm_inference(X, y, w, theta, family, grad, fisher, meat, SA, SB):  # pragma: no cover
    """Serial pass over all rows (outputs added to; ``fisher`` and ``meat`` zeroed by the
    caller come back symmetric). Returns ``(loss_sum, weight_sum)``.
    """
    out = glm_inference_range(X, y, w, theta, family, 0, X.shape[0], grad, fisher, meat,
                              SA, SB)
    symmetrize_from_upper(fisher)
    symmetrize_from_upper(meat)
    return out


@jit(parallel=True)
def glm_inference_parallel(X, y, w, theta, family, grad, fisher, meat, grad_t, fisher_t,
                           meat_t, SA_t, SB_t):  # pragma: no cover - compiled
    """:func:`glm_inference` with the rows split over ``T`` threads (per-thread buffers of
    shapes (T, P), (T, P, P), (T, P, P), (T, P, BLOCK_ROWS) twice), merged serially in
    thread order.
    """
    T = grad_t.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    loss_t = np.zeros(T)
    wsum_t = np.zeros(T)
    for t in prange(T):
        grad_t[t, :] = 0.0
        fisher_t[t] = 0.0
        meat_t[t] = 0.0
        loss_t[t], wsum_t[t] = glm_inference_range(
            X, y, w, theta, family, ranges[t, 0], ranges[t, 1], grad_t[t], fisher_t[t],
            meat_t[t], SA_t[t], SB_t[t])
    loss = 0.0
    wsum = 0.0
    for t in range(T):
        loss += loss_t[t]
        wsum += wsum_t[t]
        grad += grad_t[t]
        fisher += fisher_t[t]
        meat += meat_t[t]
    symmetrize_from_upper(fisher)
    symmetrize_from_upper(meat)
    return loss, wsum


@jit
def glm_scale_range(X, y, w, theta, family, start, stop, offset, grad, SA,
                    SB):  # pragma: no cover - compiled
    """Rows ``start:stop``'s ``Σ wℓ`` and ``Σ w`` (returned) and ``Σ w∇ℓ`` (added into
    ``grad``, (P,)), and their scaled rows written into rows ``i − offset`` of ``SA`` and
    ``SB`` (R, P): ``√(wᵢcᵢ) x̃ᵢ`` and ``√wᵢ |rᵢ| x̃ᵢ``, whose Grams (by BLAS) are the model
    Fisher and the score outer product.
    """
    d = X.shape[1]
    weighted = w.shape[0] > 0
    loss_sum = 0.0
    weight_sum = 0.0
    for i in range(start, stop):
        wi = w[i] if weighted else 1.0
        z = linear_predictor(X, theta, i)
        loss, dz, c_model, c_emp = glm_row(family, z, y[i])
        loss_sum += wi * loss
        weight_sum += wi
        g = wi * dz
        a = np.sqrt(wi * c_model)
        b = np.sqrt(wi * c_emp)
        r = i - offset
        for j in range(d):
            x = X[i, j]
            grad[j] += g * x
            SA[r, j] = a * x
            SB[r, j] = b * x
        grad[d] += g
        SA[r, d] = a
        SB[r, d] = b
    return loss_sum, weight_sum
