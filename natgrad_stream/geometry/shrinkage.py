"""Shrinking a metric estimated from few rows toward its diagonal (issue 18; paper §2.6).

A metric estimated from ``n`` rows has at most ``n`` directions of evidence: with ``n``
comparable to or below the parameter count ``P``, most of its small eigenvalues are noise
and its inverse sends steps far along directions the data never measured. Before
factoring, the learner therefore shrinks the running estimate toward its diagonal. The
intercept-like parameters (``center``) are first eliminated (the Schur complement
``G_c``, the metric of centred features), because their coupling to the others reflects
feature means, which few rows estimate well; then, with ``S`` the Jacobi-scaled ``G_c``
(unit diagonal),

    S_ρ = (1 − ρ) S + ρ Diag(S),   i.e.   G_ρ = G − ρ (G_c − Diag(G_c)),

with the **oracle approximating shrinkage** intensity of Chen, Wiesel, Eldar & Hero (2010,
"Shrinkage algorithms for MMSE covariance estimation", eq. 23), which for a target of a
scaled identity — here the diagonal, since ``diag S = 1`` — is

    ρ = min(1, ((1 − 2/p) tr(S²) + tr(S)²) / ((n + 1 − 2/p)(tr(S²) − tr(S)²/p))),

``p`` the parameters the data move. ``ρ → 1`` when the off-diagonal mass is what ``n``
rows of noise would give (``tr S² − p ≈ p²/n``), and ``ρ → 0`` as ``n/p`` grows; it is
tapered to exactly 0 at :data:`TAPER_ROWS_PER_PARAM` rows per parameter, where the
estimate is trusted and the natural gradient keeps its invariance to feature maps. The formula
assumes Gaussian rows; a Fisher metric is a weighted sum of per-row outer products, for
which it is an approximation, measured on wide logistic data in ``scripts/wide_bench.py``.
"""

from __future__ import annotations

import numpy as np

#: Rows per parameter beyond which the estimate is not shrunk (:func:`taper`). Measured on
#: 200k × 1000 logistic (one default pass, gap to the optimum): 2 0.236%, 3 0.123%,
#: 5 0.113%, 10 0.156%, 20 0.196%, 50 0.219%, no taper 0.235%; no shrinkage at all 22%
#: with a rollback. The first refreshes (about one row per parameter) need it; a
#: well-sampled estimate is better trusted. (Those runs read two chunks at a time; with
#: the byte-budgeted reader, one, so another row order: 5 gives 0.127% there,
#: ``scripts/results/wide-latest.md``.)
TAPER_ROWS_PER_PARAM = 5.0


def oas_intensity(S: np.ndarray, rows: float) -> float:
    """The OAS shrinkage intensity ``ρ ∈ [0, 1]`` of a unit-diagonal metric.

    Parameters
    ----------
    S : ndarray, shape (p, p)
        Symmetric, Jacobi-scaled metric restricted to the parameters the data move.
    rows : float
        Effective number of rows the estimate was averaged over (> 0).

    Returns
    -------
    float
        0 when ``p < 2`` or ``S`` is already diagonal to round-off relative to its trace.
    """
    p = S.shape[0]
    if p < 2 or not rows > 0:
        return 0.0
    tr = float(np.trace(S))
    tr2 = float(np.sum(S * S))  # tr(S²) of a symmetric S
    spread = tr2 - tr * tr / p
    if not spread > 1e-12 * tr2:
        return 0.0
    rho = ((1.0 - 2.0 / p) * tr2 + tr * tr) / ((rows + 1.0 - 2.0 / p) * spread)
    return float(min(1.0, max(0.0, rho)))


def shrink_to_diagonal(S: np.ndarray, rho: float) -> np.ndarray:
    """``(1 − ρ) S + ρ Diag(S)``, a new array (shape of ``S``)."""
    if rho <= 0.0:
        return S
    out = (1.0 - rho) * S
    idx = np.arange(S.shape[0])
    out[idx, idx] = np.diag(S)
    return out


def taper(rows: float, n_params: int) -> float:
    """``max(0, 1 − rows / (TAPER_ROWS_PER_PARAM · P))``: the share of the OAS intensity
    applied. Shrinkage toward the diagonal is not invariant to a mixing of the features
    (the natural gradient is, paper section 2.3); once the estimate holds
    :data:`TAPER_ROWS_PER_PARAM` rows per parameter it is trusted as it is.
    """
    return max(0.0, 1.0 - float(rows) / (TAPER_ROWS_PER_PARAM * max(int(n_params), 1)))


def schur_complement(G: np.ndarray, centers) -> np.ndarray:
    """``G`` with the ``centers`` eliminated: ``G − G[:, C] G[C, C]⁺ G[C, :]``, shape (P, P)
    (rows and columns ``C`` become zero); centres with a zero diagonal are skipped.
    """
    C = [int(c) for c in centers if G[int(c), int(c)] > 0]
    if not C:
        return G
    GCC = G[np.ix_(C, C)]
    K = G[:, C] @ np.linalg.pinv(GCC, hermitian=True)
    out = G - K @ G[C, :]
    out[C, :] = 0.0
    out[:, C] = 0.0
    return 0.5 * (out + out.T)


def shrink(G: np.ndarray, rows: float | None, *, centers=(), blocks=None
           ) -> tuple[np.ndarray, float]:
    """Shrink a running metric estimate toward its (centred) diagonal; see the module
    docstring.

    Parameters
    ----------
    G : ndarray, shape (P, P) or (P,)
        The estimate (a diagonal one is returned as it is).
    rows : float or None
        Rows behind the estimate; None: no shrinkage.
    centers : sequence of int
        Intercept-like parameters, eliminated before the intensity is estimated.
    blocks : ndarray, shape (B + 1,), optional
        Group boundaries of a block-diagonal metric: each block is shrunk on its own.

    Returns
    -------
    G_rho : ndarray
        ``G − ρ (G_c − Diag(G_c))`` (``G`` itself when ``ρ = 0``).
    rho : float
        The intensity (the largest over blocks).
    """
    if rows is None or G.ndim != 2 or taper(rows, G.shape[0]) == 0.0:
        return G, 0.0  # (a block is smaller than G, so no block's taper is positive)
    bounds = [0, G.shape[0]] if blocks is None else [int(b) for b in blocks]
    out, top = G, 0.0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        block = G[a:b, a:b]
        Gc = schur_complement(block, [c - a for c in centers if a <= c < b])
        d = np.diag(Gc).copy()
        moved = np.flatnonzero(d > 0)
        if moved.size < 2:
            continue
        root = np.sqrt(d[moved])
        S = Gc[np.ix_(moved, moved)] / np.outer(root, root)
        rho = oas_intensity(0.5 * (S + S.T), rows) * taper(rows, b - a)
        if rho > 0:
            if out is G:
                out = G.copy()
            off = Gc - np.diag(d)
            out[a:b, a:b] -= rho * off
            top = max(top, rho)
    return out, top
