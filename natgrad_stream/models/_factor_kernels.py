"""Metric sums from per-row *factors*: ``G = Σ_i w_i Σ_k u_ik u_ikᵀ``.

Every metric of the paper's section 2 is a sum of outer products of per-row vectors:

=====================  =========================================================
metric                 factors ``u_ik`` of row ``i``
=====================  =========================================================
empirical (eq. 31)     the score ``∂ log q(x_i)/∂θ`` (K = 1)
loss-gradient (39)     ``∂ l(x_i)/∂θ`` (K = 1)
energy (eq. 33)        ``∂ E(x_i)/∂θ`` (K = 1)
Monte Carlo (30, 41)   scores at K targets sampled from the model, each ``/ √K``
Gauss–Newton (40–41)   rows of the Jacobian ``∂f(x_i)/∂θ`` (K = outputs)
closed-form model      e.g. softmax: ``√p_c (e_c − p) ⊗ x̃`` over classes c
=====================  =========================================================

so one kernel accumulates all of them, in float64, for the three structures: full,
diagonal (eq. 34) and block-diagonal over contiguous parameter groups (only the blocks are
computed: cost ``Σ_b P_b²`` per factor instead of ``P²``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import (
    BLOCK_ROWS,
    symmetrize_from_upper,
    syrk_upper,
    thread_ranges,
    zero_columns,
)

STRUCTURE_FULL = 0
STRUCTURE_DIAGONAL = 1
STRUCTURE_BLOCK = 2

STRUCTURE_CODES = {"full": STRUCTURE_FULL, "diagonal": STRUCTURE_DIAGONAL,
                   "block": STRUCTURE_BLOCK}


@jit
def _flush(ST, structure, bounds, G):  # pragma: no cover - compiled
    """Add the scratch block's outer products into ``G`` (full or per group)."""
    if structure == STRUCTURE_FULL:
        syrk_upper(ST, G)
    else:
        for g in range(bounds.shape[0] - 1):
            a = bounds[g]
            b = bounds[g + 1]
            syrk_upper(ST[a:b], G[a:b, a:b])


@jit
def factor_gram_range(U, w, structure, bounds, start, stop, G, gdiag, ST):  # pragma: no cover
    """Accumulate ``Σ_{i in start:stop} w_i Σ_k u_ik u_ikᵀ``.

    Parameters
    ----------
    U : ndarray, shape (n, K, P), float64
        Per-row metric factors.
    w : ndarray, shape (n,) or (0,), float64
        Sample weights (empty: unit weights), non-negative.
    structure : int
        ``STRUCTURE_FULL``, ``STRUCTURE_DIAGONAL`` or ``STRUCTURE_BLOCK``.
    bounds : ndarray, shape (B + 1,), int64
        Group boundaries ``0 = b_0 < … < b_B = P`` (block structure only).
    start, stop : int
        Row range.
    G : ndarray, shape (P, P), float64
        Full/block accumulator; the upper triangle is written (a dummy for diagonal).
    gdiag : ndarray, shape (P,), float64
        Diagonal accumulator (a dummy otherwise).
    ST : ndarray, shape (P, BLOCK_ROWS), float64
        Scratch.
    """
    K = U.shape[1]
    P = U.shape[2]
    weighted = w.shape[0] > 0
    r = 0
    for i in range(start, stop):
        wi = w[i] if weighted else 1.0
        if structure == STRUCTURE_DIAGONAL:
            for k in range(K):
                for j in range(P):
                    u = U[i, k, j]
                    gdiag[j] += wi * u * u
            continue
        s = np.sqrt(wi)
        for k in range(K):
            for j in range(P):
                ST[j, r] = s * U[i, k, j]
            r += 1
            if r == ST.shape[1]:
                _flush(ST, structure, bounds, G)
                r = 0
    if r > 0:
        zero_columns(ST, r)
        _flush(ST, structure, bounds, G)


@jit
def factor_gram(U, w, structure, bounds, G, gdiag, ST):  # pragma: no cover - compiled
    """Serial :func:`factor_gram_range` over all rows; ``G`` comes back symmetric."""
    factor_gram_range(U, w, structure, bounds, 0, U.shape[0], G, gdiag, ST)
    if structure != STRUCTURE_DIAGONAL:
        symmetrize_from_upper(G)


@jit(parallel=True)
def factor_gram_parallel(U, w, structure, bounds, G, gdiag, G_t, gdiag_t,
                         ST_t):  # pragma: no cover - compiled
    """Rows split over threads with per-thread accumulators, merged serially.

    ``G_t`` (T, P, P) or a (T, 1, 1) dummy, ``gdiag_t`` (T, P) or (T, 1), ``ST_t``
    (T, P, BLOCK_ROWS); ``T`` fixes the split and so the summation order.
    """
    T = ST_t.shape[0]
    ranges = thread_ranges(U.shape[0], T)
    for t in prange(T):
        G_t[t] = 0.0
        gdiag_t[t] = 0.0
        factor_gram_range(U, w, structure, bounds, ranges[t, 0], ranges[t, 1], G_t[t],
                          gdiag_t[t], ST_t[t])
    for t in range(T):
        if structure == STRUCTURE_DIAGONAL:
            gdiag += gdiag_t[t]
        else:
            G += G_t[t]
    if structure != STRUCTURE_DIAGONAL:
        symmetrize_from_upper(G)


def new_factor_scratch(n_params: int, structure: str, n_threads: int) -> dict:
    """Scratch arrays for :func:`factor_gram` and :func:`factor_gram_parallel`."""
    P = n_params
    diag = structure == "diagonal"
    return {
        "ST": np.zeros((P, BLOCK_ROWS)),
        "ST_t": np.zeros((n_threads, P, BLOCK_ROWS)),
        "G_t": np.zeros((n_threads, 1, 1) if diag else (n_threads, P, P)),
        "gdiag_t": np.zeros((n_threads, P) if diag else (n_threads, 1)),
        "dummy_full": np.zeros((1, 1)),
        "dummy_diag": np.zeros(1),
    }


def accumulate_factors(U, w, structure: str, bounds: np.ndarray, out: np.ndarray,
                       scratch: dict, parallel: bool) -> None:
    """Add ``Σ_i w_i Σ_k u_ik u_ikᵀ`` (restricted to ``structure``) into ``out``.

    Parameters
    ----------
    U : ndarray, shape (n, K, P), float64
    w : ndarray, shape (n,) or (0,), float64
    structure : {"full", "diagonal", "block"}
    bounds : ndarray, shape (B + 1,), int64
    out : ndarray, shape (P, P) or (P,), float64
        Added to (zero it first for a batch sum).
    scratch : dict
        From :func:`new_factor_scratch`.
    parallel : bool
    """
    s = STRUCTURE_CODES[structure]
    U = np.ascontiguousarray(U, dtype=np.float64)
    diag = structure == "diagonal"
    G, gd = (scratch["dummy_full"], out) if diag else (out, scratch["dummy_diag"])
    if parallel:
        factor_gram_parallel(U, w, s, bounds, G, gd, scratch["G_t"], scratch["gdiag_t"],
                             scratch["ST_t"])
    else:
        factor_gram(U, w, s, bounds, G, gd, scratch["ST"])
