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
def _source(X, W, i, a):  # pragma: no cover - compiled
    """``s_a = w_a · x_i``, float64."""
    z = 0.0
    for b in range(X.shape[1]):
        z += W[a, b] * X[i, b]
    return z


@jit
def _row(X, W, WinvT, logabsdet, beta, log_z, i, loss, grad, s):  # pragma: no cover
    """Loss and loss gradient of row ``i``; ``s`` is (d,) scratch."""
    d = X.shape[1]
    for a in range(d):
        s[a] = _source(X, W, i, a)
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
            z = _source(X, W, i, a)
            total += _neg_log_prior(z, beta, log_z)
    return total


# -- the adaptive density: a smoothed exponential-power (generalized Gaussian) family ------
#
# Source a has shape α_a ∈ [1, α_max] (a function of κ_a, see ica_density), location μ_a
# and, with the fixed smoothing ε,
#
#     −log p(s) = g(s − μ; α) + log Z(α),    g(u; α) = (u² + ε²)^{α/2} / α,
#
# ψ(s) = ∂g/∂s = s (s² + ε²)^{α/2 − 1} and ∂g/∂α = g (½ log(s² + ε²) − 1/α); α = 2 is the
# Gaussian, α < 2 super-Gaussian (α → 1 a smoothed Laplace), α > 2 sub-Gaussian (α → ∞
# uniform). θ = [vec(W) (d², row-major), κ (d), μ (d)] (μ absent from θ, and 0, in runs
# recorded before it existed); the loss gradient in κ_a is (∂g/∂α + ∂log Z/∂α) dα/dκ, in
# μ_a −ψ(s_a − μ_a). log Z, its derivative and dα/dκ come from the caller.

#: ``g`` above this is treated as an infinite energy (``e^{−g}`` underflows to zero).
POWER_ENERGY_LIMIT = 700.0


@jit
def _power_terms(z, alpha, eps2):  # pragma: no cover - compiled
    """``(g, ψ, ∂g/∂α)`` of one source value; ``g = +inf`` (ψ, ∂g/∂α = ±inf) past the limit."""
    r2 = z * z + eps2
    lr = np.log(r2)
    log_g = 0.5 * alpha * lr - np.log(alpha)
    if log_g > POWER_ENERGY_LIMIT:
        return np.inf, np.copysign(np.inf, z), np.inf
    g = np.exp(log_g)
    psi = z * alpha * g / r2
    return g, psi, g * (0.5 * lr - 1.0 / alpha)


@jit
def _power_row(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope, eps2, i, loss, grad,
               s):  # pragma: no cover - compiled
    """Loss and loss gradient (d² + d, or d² + 2d with the locations in θ) of row ``i``;
    ``s`` is (d,) scratch.
    """
    d = X.shape[1]
    located = grad.shape[1] > d * d + d
    for a in range(d):
        s[a] = _source(X, W, i, a) - mu[a]
    total = -logabsdet
    for a in range(d):
        g, psi, g_alpha = _power_terms(s[a], alpha[a], eps2)
        total += g + log_z[a]
        for b in range(d):
            grad[i, a * d + b] = psi * X[i, b] - WinvT[a, b]
        grad[i, d * d + a] = (g_alpha + dlog_z[a]) * slope[a]
        if located:
            grad[i, d * d + d + a] = -psi
    loss[i] = total


@jit
def ica_power_row_terms(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope, eps2, loss,
                        grad, s):  # pragma: no cover - compiled
    """Per-row loss and gradient of a batch under the adaptive density, serially.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    W, WinvT : ndarray, shape (d, d), float64
        Unmixing matrix and ``W⁻ᵀ``.
    logabsdet : float
        ``log|det W|``.
    alpha, mu, log_z, dlog_z, slope : ndarray, shape (d,), float64
        Shapes ``α_a``, locations ``μ_a``, ``log Z(α_a)``, ``∂log Z/∂α`` at ``α_a`` and
        ``dα_a/dκ_a``.
    eps2 : float
        ``ε²``.
    loss : ndarray, shape (n,), float64
        Output: per-row negative log-likelihood.
    grad : ndarray, shape (n, d² + 2d) or (n, d² + d), float64
        Output: per-row gradient in ``θ = [vec(W), κ, μ]`` (or ``[vec(W), κ]``, μ fixed).
    s : ndarray, shape (1, d), float64
        Scratch.
    """
    for i in range(X.shape[0]):
        _power_row(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope, eps2, i, loss,
                   grad, s[0])


@jit(parallel=True)
def ica_power_row_terms_parallel(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope,
                                 eps2, loss, grad, s):  # pragma: no cover - compiled
    """:func:`ica_power_row_terms` with rows split over threads; ``s`` is (T, d) scratch."""
    T = s.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    for t in prange(T):
        for i in range(ranges[t, 0], ranges[t, 1]):
            _power_row(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope, eps2, i,
                       loss, grad, s[t])


@jit
def ica_power_evaluate(X, W, logabsdet, alpha, mu, log_z, eps2):  # pragma: no cover
    """Sum over rows of the negative log-likelihood under the adaptive density, float64."""
    n, d = X.shape
    total = 0.0
    for i in range(n):
        total -= logabsdet
        for a in range(d):
            z = _source(X, W, i, a) - mu[a]
            g, _, _ = _power_terms(z, alpha[a], eps2)
            total += g + log_z[a]
    return total
