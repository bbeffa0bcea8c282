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

from natgrad_stream.geometry.whitening import TILE_ROWS, symmetrize

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
    return oas_moments(float(np.trace(S)), float(np.vdot(S, S)), S.shape[0], rows)


def oas_moments(tr: float, tr2: float, p: int, rows: float) -> float:
    """:func:`oas_intensity` from ``tr(S)`` and ``tr(S²)`` (of a symmetric ``S``, p × p)."""
    if p < 2 or not rows > 0:
        return 0.0
    spread = tr2 - tr * tr / p
    if not spread > 1e-12 * tr2:
        return 0.0
    rho = ((1.0 - 2.0 / p) * tr2 + tr * tr) / ((rows + 1.0 - 2.0 / p) * spread)
    return float(min(1.0, max(0.0, rho)))


def taper(rows: float, n_params: int) -> float:
    """``max(0, 1 − rows / (TAPER_ROWS_PER_PARAM · P))``: the share of the OAS intensity
    applied. Shrinkage toward the diagonal is not invariant to a mixing of the features
    (the natural gradient is, paper section 2.3); once the estimate holds
    :data:`TAPER_ROWS_PER_PARAM` rows per parameter it is trusted as it is.
    """
    return max(0.0, 1.0 - float(rows) / (TAPER_ROWS_PER_PARAM * max(int(n_params), 1)))


def schur_complement(G: np.ndarray, centers) -> np.ndarray:
    """``G`` with the ``centers`` eliminated: ``G − G[:, C] G[C, C]⁺ G[C, :]``, shape (P, P)
    (rows and columns ``C`` become zero); centres with a zero diagonal are skipped. One new
    P × P array; the update runs a tile of rows at a time.
    """
    C = [int(c) for c in centers if G[int(c), int(c)] > 0]
    out = G.copy()
    if not C:
        return out
    K = G[:, C] @ np.linalg.pinv(G[np.ix_(C, C)], hermitian=True)
    GC = G[C, :]
    for i in range(0, out.shape[0], TILE_ROWS):
        out[i:i + TILE_ROWS] -= K[i:i + TILE_ROWS] @ GC
    out[C, :] = 0.0
    out[:, C] = 0.0
    symmetrize(out)
    return out


class _TiledSchur:
    """Tiles of the symmetrized Schur complement :func:`schur_complement` of ``G`` (its
    values to the bit), computed from ``G`` when asked for and never held whole: the shrinkage
    reads it three times, a tile at a time, instead of holding one more P × P array.

    Tile ``(I, J)`` of the complement before symmetrization is ``A_IJ = G_IJ − K_I GC_J``
    (rows and columns ``C`` zero), and :func:`symmetrize` makes it ``(A_IJ + A_JIᵀ) / 2``.
    """

    def __init__(self, G: np.ndarray, centers):
        self.G = G
        self.C = [int(c) for c in centers if G[int(c), int(c)] > 0]
        # (copies: a tile of G may be shrunk in place once it has been read)
        self.K = G[:, self.C] @ np.linalg.pinv(G[np.ix_(self.C, self.C)], hermitian=True) \
            if self.C else None
        self.GC = G[self.C, :] if self.C else None

    def raw(self, rows: slice, cols: slice) -> np.ndarray:
        """``A`` at ``rows × cols`` (a new array)."""
        A = self.G[rows, cols].copy()
        if self.C:
            A -= self.K[rows] @ self.GC[:, cols]
            for c in self.C:
                if rows.start <= c < rows.stop:
                    A[c - rows.start, :] = 0.0
                if cols.start <= c < cols.stop:
                    A[:, c - cols.start] = 0.0
        return A

    def tile(self, rows: slice, cols: slice) -> np.ndarray:
        """The symmetrized complement at ``rows × cols``."""
        t = self.raw(rows, cols)
        t += self.raw(cols, rows).T
        t *= 0.5
        return t

    def diagonal(self) -> np.ndarray:
        """Its diagonal, shape (P,)."""
        P = self.G.shape[0]
        return np.concatenate([np.diag(self.raw(*(slice(i, min(i + TILE_ROWS, P)),) * 2))
                               for i in range(0, P, TILE_ROWS)]) if P else np.zeros(0)


def _scaled_trace_of_square(Gc: _TiledSchur, r: np.ndarray) -> float:
    """``tr(S²) = Σᵢⱼ (rᵢ Gcᵢⱼ rⱼ)²`` of ``S = Diag(r) Gc Diag(r)`` (Gc symmetric), a
    tile of rows at a time.
    """
    total = 0.0
    P = r.shape[0]
    buf = np.empty((min(TILE_ROWS, P), P))  # a tile of rows, filled a square tile at a time
    for i in range(0, P, TILE_ROWS):
        rs = slice(i, min(i + TILE_ROWS, P))
        t = buf[:rs.stop - i]
        for j in range(0, P, TILE_ROWS):
            cs = slice(j, min(j + TILE_ROWS, P))
            t[:, cs] = Gc.tile(rs, cs)
        t *= r[rs, None]
        t *= r[None, :]
        total += float(np.vdot(t, t))
    return total


def _subtract_off_diagonal(out: np.ndarray, Gc: _TiledSchur, rho: float) -> None:
    """``out −= ρ (G_c − Diag(G_c))`` in place, tile pair by tile pair (each pair's tiles
    of ``G`` read before either is written, so ``out`` may be ``G`` itself).
    """
    P = out.shape[0]
    for i in range(0, P, TILE_ROWS):
        rs = slice(i, min(i + TILE_ROWS, P))
        for j in range(i, P, TILE_ROWS):
            cs = slice(j, min(j + TILE_ROWS, P))
            t = Gc.tile(rs, cs)
            t *= rho
            if i == j:
                np.fill_diagonal(t, 0.0)
                out[rs, rs] -= t
            else:
                out[rs, cs] -= t
                out[cs, rs] -= t.T


def shrink(G: np.ndarray, rows: float | None, *, centers=(), blocks=None,
           overwrite: bool = False) -> tuple[np.ndarray, float]:
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
    overwrite : bool
        Shrink ``G`` in place (else a copy, when ``ρ > 0``). Either way no other P × P
        array is made: the block's Schur complement is computed a tile at a time
        (:class:`_TiledSchur`), the same values as :func:`schur_complement`'s.

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
        Gc = _TiledSchur(G[a:b, a:b], [c - a for c in centers if a <= c < b])
        d = Gc.diagonal()
        moved = d > 0
        p = int(moved.sum())
        if p < 2:
            continue
        # S = Jacobi-scaled Gc on the moved parameters: unit diagonal, so tr(S) = p
        r = np.where(moved, 1.0 / np.sqrt(np.where(moved, d, 1.0)), 0.0)
        rho = oas_moments(float(p), _scaled_trace_of_square(Gc, r), p, rows) \
            * taper(rows, b - a)
        if rho > 0:
            if out is G and not overwrite:
                out = G.copy()
                Gc.G = out[a:b, a:b]  # (the same values: read, then shrunk, a pair at a time)
            _subtract_off_diagonal(out[a:b, a:b], Gc, rho)
            top = max(top, rho)
    return out, top


#: Pseudo-rows of the diagonal's evidence prior (:func:`add_evidence_prior`).
PRIOR_PSEUDO_ROWS = 1.0
#: Coordinates (at least) whose median sets the prior.
_PRIOR_SAMPLE = 4096


def add_evidence_prior(g: np.ndarray, rows: float, density: float, coords,
                       pseudo_rows: float = PRIOR_PSEUDO_ROWS) -> float:
    """Add to a running diagonal estimate of sparse rows, in place, what ``pseudo_rows``
    typical rows contribute to one coordinate: ``ν = pseudo_rows · median(g_S > 0) /
    (rows · density)`` (the median over the features seen) on the coordinates ``S``
    (``coords``; the intercepts, seen by every row, are left alone). The median, unlike
    the mean, ignores a few columns of another scale, so rescaling one feature leaves the
    others' prior as it was.

    A diagonal entry is estimated only from the rows where its feature is non-zero. On
    sparse data (one-hot columns, hashed text) most features are absent from the first
    batches: their entry is 0 or one row's ``c x²/rows``, and a natural step divides by
    it, a Newton step on one observation (unbounded: one row separates its own feature).
    The prior bounds it by an average row's worth; a feature seen ``n_j`` times is moved
    by ``pseudo_rows/n_j`` of its curvature, so a well-sampled one keeps its own. Dense
    rows (``density`` 1) inform every coordinate: nothing is added.

    Parameters
    ----------
    g : ndarray, shape (P,)
        Mean metric diagonal over ``rows`` rows.
    rows : float
        Rows behind the estimate (> 0).
    density : float
        Fraction of the features a row holds (non-zeros / features; 1 for dense rows).
    coords : ndarray of int, or slice
        The coordinates the prior applies to (a slice when they are contiguous: a GLM's
        coefficients; the drift checks add the prior every few batches, and a slice adds
        it in place of a gather and scatter of P indices).

    Returns
    -------
    float
        ``ν`` (0 when nothing applies).
    """
    if not isinstance(coords, slice):
        coords = np.asarray(coords, dtype=np.int64)
    size = len(range(*coords.indices(g.shape[0]))) if isinstance(coords, slice) \
        else coords.size
    if size == 0 or not rows > 0 or not 0 < density < 1:
        return 0.0  # dense rows inform every coordinate: no prior
    # the median of a fixed stride of at least 4,096 coordinates (O(4,096), not O(P): the
    # drift checks recompute it every few batches)
    stride = max(1, size // _PRIOR_SAMPLE)
    seen = g[coords][::stride] if isinstance(coords, slice) else g[coords[::stride]]
    seen = seen[seen > 0]  # (in the first batches most features were never seen)
    if not seen.size:
        return 0.0
    nu = pseudo_rows * float(np.median(seen)) / (float(rows) * float(density))
    if not (np.isfinite(nu) and nu > 0):
        return 0.0
    g[coords] += nu
    return nu
