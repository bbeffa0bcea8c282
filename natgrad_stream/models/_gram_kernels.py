"""Shared kernel pieces: the blocked, float64 weighted Gram update.

A block of rows is first written, scaled by ``sqrt(c_i)``, into a transposed float64
scratch ``ST`` of shape ``(P, BLOCK_ROWS)``; :func:`syrk_upper` then adds
``ST @ ST.T`` into the upper triangle of a ``(P, P)`` accumulator with 2×2 register
blocking (measured ~3× faster than calling BLAS per block from Numba at P≈100).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit

#: Rows per scratch block of the Gram update. 64 float64 rows × P fit in L2 for P ≲ 500.
BLOCK_ROWS = 64


@jit
def gram_upper(A, B, nb, G):  # pragma: no cover - compiled
    """Add ``Σ_{r<nb} A[:, r] B[:, r]ᵀ`` to the upper triangle of ``G``.

    For a symmetric result (``B = A``, or ``A = B·diag(w)``); 2×2 register blocking.

    Parameters
    ----------
    A, B : ndarray, shape (P, R), float64
        Transposed rows; only the first ``nb`` columns are read.
    nb : int
    G : ndarray, shape (P, P), float64
        Accumulator; only entries ``G[j, k]`` with ``k >= j`` are written.
    """
    for j in range(0, A.shape[0], 2):
        gram_row_pair(A, B, nb, G, j)


@jit
def gram_row_pair(A, B, nb, G, j):  # pragma: no cover - compiled
    """:func:`gram_upper` for rows ``j`` and ``j + 1`` of ``G`` (``j`` even): every entry
    is summed in the same order whichever rows a thread is given.
    """
    P = A.shape[0]
    j1 = min(j + 1, P - 1)
    for k in range(j, P, 2):
        k1 = min(k + 1, P - 1)
        a00 = 0.0
        a01 = 0.0
        a10 = 0.0
        a11 = 0.0
        for r in range(nb):
            x0 = A[j, r]
            x1 = A[j1, r]
            y0 = B[k, r]
            y1 = B[k1, r]
            a00 += x0 * y0
            a01 += x0 * y1
            a10 += x1 * y0
            a11 += x1 * y1
        G[j, k] += a00
        if k1 != k:
            G[j, k1] += a01
        if j1 != j:
            if k >= j1:
                G[j1, k] += a10
            if k1 != k and k1 >= j1:
                G[j1, k1] += a11


@jit
def syrk_upper(ST, G):  # pragma: no cover - compiled
    """Add ``ST @ ST.T`` to the upper triangle of ``G``.

    Parameters
    ----------
    ST : ndarray, shape (P, BLOCK_ROWS), float64
        Transposed, pre-scaled rows; unused columns must be zero.
    G : ndarray, shape (P, P), float64
        Accumulator; only entries ``G[j, k]`` with ``k >= j`` are written.
    """
    gram_upper(ST, ST, ST.shape[1], G)


@jit(parallel=True)
def syrk_upper_parallel(ST, G):  # pragma: no cover - compiled
    """:func:`syrk_upper` with the rows of ``G`` split over threads: no per-thread copy of
    ``G`` (for wide models, where T copies of a P × P accumulator are the memory's largest
    item), and the same sums, in the same order, as the serial kernel.

    Row pair ``q`` (rows ``2q, 2q + 1``) costs about ``P − 2q``: each iteration takes pair
    ``q`` and pair ``n − 1 − q``, so the iterations cost the same and a static split of
    them balances the threads.
    """
    n_pairs = (ST.shape[0] + 1) // 2
    for q in prange((n_pairs + 1) // 2):
        gram_row_pair(ST, ST, ST.shape[1], G, 2 * q)
        q2 = n_pairs - 1 - q
        if q2 != q:
            gram_row_pair(ST, ST, ST.shape[1], G, 2 * q2)


@jit
def zero_columns(ST, start):  # pragma: no cover - compiled
    """Zero ``ST[:, start:]`` (the unused tail of a partial block)."""
    for j in range(ST.shape[0]):
        for r in range(start, ST.shape[1]):
            ST[j, r] = 0.0


@jit
def symmetrize_from_upper(G):  # pragma: no cover - compiled
    """Copy the upper triangle of square ``G`` onto its lower triangle, in place."""
    P = G.shape[0]
    for j in range(P):
        for k in range(j + 1, P):
            G[k, j] = G[j, k]


@jit
def thread_ranges(n, n_threads):  # pragma: no cover - compiled
    """Split ``range(n)`` into ``n_threads`` contiguous parts; returns (n_threads, 2) int64."""
    out = np.empty((n_threads, 2), dtype=np.int64)
    step = (n + n_threads - 1) // n_threads
    for t in range(n_threads):
        a = min(n, t * step)
        out[t, 0] = a
        out[t, 1] = min(n, a + step)
    return out
