"""Numba kernels for maximum-likelihood ICA with a hyperbolic-secant-power source prior.

Sources ``s = W x`` with ``W`` the square unmixing matrix, ``θ = vec(W)`` row-major
(``W[a, b]`` at ``a·d + b``). Prior per source, with sharpness ``β > 0``:
``p(s) = cosh(βs)^{−1/β} / Z_β``, so

``−log p(s) = (1/β) log cosh(βs) + log Z_β = |s| + (log(1 + e^{−2β|s|}) − log 2)/β + log Z_β``

(the right-hand form cannot overflow) with score function ``ψ(s) = tanh(βs)``. ``β = ½`` is
the logistic density ``1/(4 cosh²(s/2))`` (``Z = 4``); ``β → ∞`` tends to the Laplace one.

Per row: ``loss = −log|det W| + Σ_a −log p(s_a)`` and ``∂loss/∂W = ψ(s) xᵀ − W⁻ᵀ``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import thread_ranges


@jit
def _neg_log_prior(z, beta, log_z):  # pragma: no cover - compiled
    """``−log p(z)`` of one source, overflow-free."""
    az = abs(z)
    return az + (np.log1p(np.exp(-2.0 * beta * az)) - np.log(2.0)) / beta + log_z


@jit
def _row(X, W, WinvT, logabsdet, beta, log_z, i, loss, grad, s):  # pragma: no cover
    """Loss and loss gradient of row ``i``; ``s`` is (d,) scratch."""
    d = X.shape[1]
    for a in range(d):
        z = 0.0
        for b in range(d):
            z += W[a, b] * X[i, b]
        s[a] = z
    total = -logabsdet
    for a in range(d):
        z = s[a]
        total += _neg_log_prior(z, beta, log_z)
        psi = np.tanh(beta * z)
        for b in range(d):
            grad[i, a * d + b] = psi * X[i, b] - WinvT[a, b]
    loss[i] = total


@jit
def ica_row_terms(X, W, WinvT, logabsdet, beta, log_z, loss, grad, s):  # pragma: no cover
    """Per-row loss and gradient of a batch, serially.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    W : ndarray, shape (d, d), float64
        Unmixing matrix.
    WinvT : ndarray, shape (d, d), float64
        ``W⁻ᵀ``.
    logabsdet : float
        ``log|det W|``.
    beta, log_z : float
        Prior sharpness ``β`` and log normalizer ``log Z_β``.
    loss : ndarray, shape (n,), float64
        Output: per-row negative log-likelihood.
    grad : ndarray, shape (n, d²), float64
        Output: per-row ``vec(∂loss/∂W)``, row-major.
    s : ndarray, shape (1, d), float64
        Scratch.
    """
    for i in range(X.shape[0]):
        _row(X, W, WinvT, logabsdet, beta, log_z, i, loss, grad, s[0])


@jit(parallel=True)
def ica_row_terms_parallel(X, W, WinvT, logabsdet, beta, log_z, loss, grad,
                           s):  # pragma: no cover - compiled
    """:func:`ica_row_terms` with rows split over threads; ``s`` is (T, d) scratch.

    Every row is written by exactly one thread, so the result equals the serial one.
    """
    T = s.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    for t in prange(T):
        for i in range(ranges[t, 0], ranges[t, 1]):
            _row(X, W, WinvT, logabsdet, beta, log_z, i, loss, grad, s[t])


@jit
def ica_evaluate(X, W, logabsdet, beta, log_z):  # pragma: no cover - compiled
    """Sum over rows of the negative log-likelihood, float64."""
    n, d = X.shape
    total = 0.0
    for i in range(n):
        total -= logabsdet
        for a in range(d):
            z = 0.0
            for b in range(d):
                z += W[a, b] * X[i, b]
            total += _neg_log_prior(z, beta, log_z)
    return total
