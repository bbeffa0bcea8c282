"""Fused Numba kernels for the fully visible Boltzmann machine learned by minimum
probability flow (MPF).

Conventions (see :mod:`natgrad_stream.models.ising`): binary rows ``x ∈ {0, 1}^d``, energy
``E(x) = −Σ_{p<q} J_pq x_p x_q − Σ_p h_p x_p``, parameters
``θ = [J_01, J_02, …, J_0(d−1), J_12, …, J_(d−2)(d−1), h_0, …, h_(d−1)]`` (the strict upper
triangle row-major, then the fields), ``P = d(d−1)/2 + d``.

Flipping bit ``j`` changes the energy by ``E(x) − E(x^(j)) = δ_j a_j`` with the local field
``a_j = h_j + Σ_{p≠j} J_pj x_p`` and ``δ_j = 1 − 2 x_j ∈ {+1, −1}``. Per row, with
``e_j = exp(½ δ_j a_j)``:

- MPF loss ``l(x) = ε Σ_j e_j`` (``ε``: the flow time, a positive scale);
- ``∂l/∂h_j = ½ ε δ_j e_j`` and ``∂l/∂J_pq = ½ ε (δ_q e_q x_p + δ_p e_p x_q)``;
- energy-metric factor ``∂E/∂θ = −[x_p x_q (p<q), x_p]`` (eq. 33; independent of θ);
- pseudo-log-likelihood ``Σ_j log p(x_j | x_−j) = −Σ_j softplus(δ_j a_j)``.

The row kernels write per-row outputs (rows are independent, so the parallel variant needs
no reduction); the evaluation kernels return sums.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import thread_ranges


@jit
def first_nonbinary(X):  # pragma: no cover - compiled
    """Flat index (row-major) of the first entry of ``X`` that is neither 0 nor 1, or -1.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    """
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            v = X[i, j]
            if v != 0.0 and v != 1.0:
                return i * d + j
    return -1


@jit
def softplus(z):  # pragma: no cover - compiled
    """``log(1 + e^z)`` without overflow."""
    if z > 0.0:
        return z + np.log1p(np.exp(-z))
    return np.log1p(np.exp(z))


@jit
def local_fields(X, i, theta, a):  # pragma: no cover - compiled
    """``a_j = h_j + Σ_{p≠j} J_pj x_ip`` for row ``i`` into ``a`` (shape (d,), float64)."""
    d = X.shape[1]
    off = d * (d - 1) // 2
    for j in range(d):
        a[j] = theta[off + j]
    k = 0
    for p in range(d):
        xp = np.float64(X[i, p])
        s = 0.0
        for q in range(p + 1, d):
            Jk = theta[k]
            s += Jk * X[i, q]
            a[q] += Jk * xp
            k += 1
        a[p] += s


@jit
def flip_terms(X, i, a, eps):  # pragma: no cover - compiled
    """MPF loss (flow time ``eps``) and pseudo-log-likelihood of row ``i`` from its local
    fields ``a``.

    ``a`` is overwritten with ``∂l/∂h_j = ½ ε δ_j e_j``. Returns ``(mpf, pll)``.
    """
    d = X.shape[1]
    mpf = 0.0
    pll = 0.0
    for j in range(d):
        delta = 1.0 - 2.0 * X[i, j]
        z = delta * a[j]
        e = eps * np.exp(0.5 * z)
        mpf += e
        pll -= softplus(z)
        a[j] = 0.5 * delta * e
    return mpf, pll


@jit
def ising_row(X, i, theta, eps, energy, loss, grad, factors):  # pragma: no cover - compiled
    """Loss, gradient and (when ``energy``) the energy-metric factor of row ``i``."""
    d = X.shape[1]
    off = d * (d - 1) // 2
    g = grad[i]
    gh = g[off:]
    local_fields(X, i, theta, gh)
    mpf, _ = flip_terms(X, i, gh, eps)
    loss[i] = mpf
    k = 0
    for p in range(d):
        xp = X[i, p]
        for q in range(p + 1, d):
            g[k] = gh[q] * xp + gh[p] * X[i, q]
            k += 1
    if energy:
        f = factors[i, 0]
        k = 0
        for p in range(d):
            xp = X[i, p]
            for q in range(p + 1, d):
                f[k] = -(xp * X[i, q])
                k += 1
            f[off + p] = -xp


@jit
def ising_row_terms(X, theta, eps, energy, loss, grad, factors):  # pragma: no cover - compiled
    """Per-row MPF loss, gradient and energy-metric factors, serially.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
        Binary rows (0/1; not checked here, see :func:`first_nonbinary`).
    theta : ndarray, shape (P,), float64
    eps : float
        Flow time ε (scale of the loss).
    energy : bool
        Also write the energy-metric factors.
    loss : ndarray, shape (n,), float64
        Output: ``ε Σ_j exp(½ (E(x_i) − E(x_i^(j))))``.
    grad : ndarray, shape (n, P), float64
        Output: per-row ``∂l/∂θ``.
    factors : ndarray, shape (n, 1, P), float64
        Output when ``energy``: ``∂E(x_i)/∂θ`` (a ``(1, 1, 1)`` dummy otherwise).
    """
    for i in range(X.shape[0]):
        ising_row(X, i, theta, eps, energy, loss, grad, factors)


@jit(parallel=True)
def ising_row_terms_parallel(X, theta, eps, energy, loss, grad,
                             factors):  # pragma: no cover - compiled
    """:func:`ising_row_terms` with rows split over threads (outputs are per row)."""
    for i in prange(X.shape[0]):
        ising_row(X, i, theta, eps, energy, loss, grad, factors)


@jit
def ising_evaluate_range(X, theta, eps, start, stop, a):  # pragma: no cover - compiled
    """``(Σ mpf, Σ pll)`` over rows ``start:stop``; ``a`` is (d,) float64 scratch."""
    mpf_sum = 0.0
    pll_sum = 0.0
    for i in range(start, stop):
        local_fields(X, i, theta, a)
        mpf, pll = flip_terms(X, i, a, eps)
        mpf_sum += mpf
        pll_sum += pll
    return mpf_sum, pll_sum


@jit
def ising_evaluate(X, theta, eps, a):  # pragma: no cover - compiled
    """Sums over all rows of the MPF loss and of the pseudo-log-likelihood.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    theta : ndarray, shape (P,), float64
    eps : float
        Flow time ε (scale of the MPF loss).
    a : ndarray, shape (d,), float64
        Scratch.

    Returns
    -------
    mpf_sum, pll_sum : float
    """
    return ising_evaluate_range(X, theta, eps, 0, X.shape[0], a)


@jit(parallel=True)
def ising_evaluate_parallel(X, theta, eps, a_t):  # pragma: no cover - compiled
    """:func:`ising_evaluate` over ``T = a_t.shape[0]`` threads (``a_t``: (T, d) scratch)."""
    T = a_t.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    mpf_t = np.zeros(T)
    pll_t = np.zeros(T)
    for t in prange(T):
        mpf_t[t], pll_t[t] = ising_evaluate_range(X, theta, eps, ranges[t, 0], ranges[t, 1],
                                                  a_t[t])
    mpf_sum = 0.0
    pll_sum = 0.0
    for t in range(T):
        mpf_sum += mpf_t[t]
        pll_sum += pll_t[t]
    return mpf_sum, pll_sum
