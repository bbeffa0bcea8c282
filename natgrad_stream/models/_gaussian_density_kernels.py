"""Numba kernels for the full Gaussian density ``x ~ N(μ, Σ)``.

Parameter layout (see :mod:`natgrad_stream.models.gaussian`):
``θ = [μ_0 … μ_{d-1}, vech(Σ)]`` with ``vech`` the lower triangle row by row,
``(0,0), (1,0), (1,1), (2,0), …``; entry ``(i, j)``, ``j <= i``, sits at
``d + i(i+1)/2 + j``.

For a row ``x`` with ``r = x − μ`` and ``u = Σ⁻¹ r``:

- energy ``E = ½ rᵀu`` (eq. 32 without ``log Z``), loss ``E + ½ log det(2πΣ)``;
- ``∂E/∂μ = −u``, ``∂E/∂Σ = −½ u uᵀ`` (as a symmetric matrix);
- ``∂loss/∂μ = −u``, ``∂loss/∂Σ = ½ (Σ⁻¹ − u uᵀ)``.

A symmetric-matrix gradient ``M`` becomes the ``vech`` gradient ``Dᵀ vec(M)`` (``D`` the
duplication matrix): ``M_ii`` on the diagonal and ``2 M_ij`` off it, because the
parameter ``Σ_ij`` (i > j) moves both ``Σ_ij`` and ``Σ_ji``.
"""

from __future__ import annotations

from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import thread_ranges


@jit
def _row_terms(X, mu, prec, const, i, want_energy, loss, grad, energy, u):  # pragma: no cover
    """Loss, loss gradient and (optionally) energy gradient of row ``i``; ``u`` is scratch."""
    d = X.shape[1]
    q = 0.0
    for a in range(d):
        acc = 0.0
        for b in range(d):
            acc += prec[a, b] * (X[i, b] - mu[b])
        u[a] = acc
        q += (X[i, a] - mu[a]) * acc
    loss[i] = 0.5 * q + const
    for a in range(d):
        grad[i, a] = -u[a]
    k = d
    for a in range(d):
        for b in range(a + 1):
            f = 1.0 if a == b else 2.0
            uu = u[a] * u[b]
            grad[i, k] = 0.5 * f * (prec[a, b] - uu)
            if want_energy:
                energy[i, 0, k] = -0.5 * f * uu
            k += 1
    if want_energy:
        for a in range(d):
            energy[i, 0, a] = -u[a]


@jit
def gaussian_row_terms(X, mu, prec, const, want_energy, loss, grad, energy, u):  # pragma: no cover
    """Per-row terms of a batch, serially.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    mu : ndarray, shape (d,), float64
    prec : ndarray, shape (d, d), float64
        ``Σ⁻¹`` (symmetric).
    const : float
        ``½ log det(2πΣ)``, added to every row's loss.
    want_energy : bool
        Also write the energy gradients (eq. 33 factors) into ``energy``.
    loss : ndarray, shape (n,), float64
        Output: per-row negative log-likelihood.
    grad : ndarray, shape (n, P), float64
        Output: per-row ``∂loss/∂θ``, ``P = d + d(d+1)/2``.
    energy : ndarray, shape (n, 1, P) or (1, 1, 1), float64
        Output: per-row ``∂E/∂θ`` when ``want_energy`` (a dummy otherwise).
    u : ndarray, shape (1, d), float64
        Scratch.
    """
    for i in range(X.shape[0]):
        _row_terms(X, mu, prec, const, i, want_energy, loss, grad, energy, u[0])


@jit(parallel=True)
def gaussian_row_terms_parallel(X, mu, prec, const, want_energy, loss, grad, energy,
                                u):  # pragma: no cover - compiled
    """:func:`gaussian_row_terms` with rows split over threads; ``u`` is (T, d) scratch.

    Every row is written by exactly one thread, so the result equals the serial one.
    """
    T = u.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    for t in prange(T):
        for i in range(ranges[t, 0], ranges[t, 1]):
            _row_terms(X, mu, prec, const, i, want_energy, loss, grad, energy, u[t])


@jit
def gaussian_fisher(prec, G):  # pragma: no cover - compiled
    """The closed-form model Fisher (eq. 30) of ``N(μ, Σ)`` in the ``[μ, vech Σ]`` layout.

    Parameters
    ----------
    prec : ndarray, shape (d, d), float64
        ``Λ = Σ⁻¹``.
    G : ndarray, shape (P, P), float64
        Output, overwritten: the mean block ``Λ``, the covariance block
        ``½ Dᵀ (Λ ⊗ Λ) D`` and zero cross blocks (the Fisher is exactly block-diagonal).

    Notes
    -----
    ``G[(ij),(kl)] = ½ tr(Λ A_ij Λ A_kl)`` with ``A_ij = ∂Σ/∂Σ_ij`` (``E_ij + E_ji`` off the
    diagonal, ``E_ii`` on it) and ``tr(Λ E_ab Λ E_ce) = Λ_ea Λ_bc``.
    """
    d = prec.shape[0]
    G[:, :] = 0.0
    for a in range(d):
        for b in range(d):
            G[a, b] = prec[a, b]
    p = d
    for i in range(d):
        for j in range(i + 1):
            q = d
            for k in range(d):
                for m in range(k + 1):
                    # pairs (a, b) of A_ij and (c, e) of A_km
                    v = prec[m, i] * prec[j, k]
                    if i != j:
                        v += prec[m, j] * prec[i, k]
                    if k != m:
                        v += prec[k, i] * prec[j, m]
                    if i != j and k != m:
                        v += prec[k, j] * prec[i, m]
                    G[p, q] = 0.5 * v
                    q += 1
            p += 1


@jit
def gaussian_evaluate(X, mu, prec, const):  # pragma: no cover - compiled
    """Sum over rows of the negative log-likelihood ``½ rᵀΣ⁻¹r + const``, float64."""
    n, d = X.shape
    total = 0.0
    for i in range(n):
        q = 0.0
        for a in range(d):
            acc = 0.0
            for b in range(d):
                acc += prec[a, b] * (X[i, b] - mu[b])
            q += (X[i, a] - mu[a]) * acc
        total += 0.5 * q + const
    return total
