"""Numba kernels for the linear-Gaussian mean model ``x ~ N(A θ, I)`` (paper, section 1.1)."""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import (
    BLOCK_ROWS,
    symmetrize_from_upper,
    syrk_upper,
    zero_columns,
)


@jit
def residual_accumulate(X, w, mu, with_outer, rsum, rr, ST):  # pragma: no cover - compiled
    """Accumulate residual statistics of ``r_i = x_i − μ``.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    w : ndarray, shape (n,) or (0,), float64
        Sample weights; empty means unit weights.
    mu : ndarray, shape (d,), float64
        Model mean ``A θ``.
    with_outer : bool
        Also accumulate ``Σ w_i r_i r_iᵀ`` into ``rr`` (empirical metric).
    rsum : ndarray, shape (d,), float64
        ``Σ w_i r_i`` accumulator.
    rr : ndarray, shape (d, d), float64
        ``Σ w_i r_i r_iᵀ`` accumulator, returned symmetric.
    ST : ndarray, shape (d, BLOCK_ROWS), float64
        Scratch.

    Returns
    -------
    half_sq_sum, weight_sum : float
        ``Σ w_i ½‖r_i‖²`` and ``Σ w_i``.
    """
    n, d = X.shape
    weighted = w.shape[0] > 0
    half_sq = 0.0
    wsum = 0.0
    for b0 in range(0, n, BLOCK_ROWS):
        b1 = min(b0 + BLOCK_ROWS, n)
        for i in range(b0, b1):
            wi = w[i] if weighted else 1.0
            s = np.sqrt(wi)
            sq = 0.0
            for j in range(d):
                r = X[i, j] - mu[j]
                sq += r * r
                rsum[j] += wi * r
                if with_outer:
                    ST[j, i - b0] = s * r
            half_sq += 0.5 * wi * sq
            wsum += wi
        if with_outer:
            if b1 - b0 < BLOCK_ROWS:
                zero_columns(ST, b1 - b0)
            syrk_upper(ST, rr)
    if with_outer:
        symmetrize_from_upper(rr)
    return half_sq, wsum


@jit
def residual_scores(X, mu, A, out):  # pragma: no cover - compiled
    """Per-sample scores ``Aᵀ (x_i − μ)`` into ``out`` of shape (n, k); ``A`` is (d, k)."""
    n, d = X.shape
    k = A.shape[1]
    for i in range(n):
        for m in range(k):
            acc = 0.0
            for j in range(d):
                acc += A[j, m] * (X[i, j] - mu[j])
            out[i, m] = acc
