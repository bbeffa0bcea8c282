"""Shared pieces of the CSR kernels: row squares and outer products, touched-entry merges.

A CSR batch is three flat arrays (``data``, ``indices`` int32, ``indptr`` int64; row ``i``
is ``data[indptr[i]:indptr[i+1]]``, see :class:`~natgrad_stream.data.sparse.SparseRows`).
Column indices may repeat within a row; the repeats add. Linear terms (``x·θ``, ``g x``)
need nothing special; squares and outer products of a row with repeats need the row's
summed values: :func:`add_row_squares` gathers them, for a row whose columns do not
increase, in a scratch vector ``xrow`` that is all zeros before and after every call (so
it is never cleared per batch), and
:func:`add_row_outer_upper` sums over every pair of entries, which is ``x xᵀ`` by
bilinearity.

Parallel CSR kernels split the rows over threads, each adding into its own P-length
buffers. A buffer of a wide model (P = 100,001 at 10⁵ features) is mostly zeros after a
batch of 1,024 rows × 50 non-zeros, so clearing it and merging it densely would cost
O(T·P) per batch, more than the O(nnz) work itself: :func:`merge_touched` merges and
clears only the entries the thread's rows touched (O(nnz)), or the whole buffer when
the thread's non-zeros outnumber its columns (then the dense loop is the cheaper).
"""

from __future__ import annotations

from natgrad_stream._jit import jit


@jit
def first_bad_index(indices, start, stop, n_columns):  # pragma: no cover - compiled
    """Position of the first column index in ``indices[start:stop]`` outside
    ``[0, n_columns)``, or -1.
    """
    for k in range(start, stop):
        j = indices[k]
        if j < 0 or j >= n_columns:
            return k
    return -1


@jit
def first_decrease(indptr):  # pragma: no cover - compiled
    """The first row ``i`` with ``indptr[i + 1] < indptr[i]``, or -1."""
    for i in range(indptr.shape[0] - 1):
        if indptr[i + 1] < indptr[i]:
            return i
    return -1


@jit
def add_row_squares(data, indices, a, b, c, offset, out, xrow):  # pragma: no cover
    """Add ``c·x_j²`` into ``out[offset + j]`` for the columns ``j`` of the row
    ``data[a:b]``. A row whose columns increase (canonical CSR, as SciPy and AnnData
    write it) has no repeats and is read once; another has its repeated columns summed
    first, in ``xrow``, which comes back zero.
    """
    increasing = True
    for k in range(a + 1, b):
        if indices[k] <= indices[k - 1]:
            increasing = False
            break
    if increasing:
        for k in range(a, b):
            v = data[k]
            out[offset + indices[k]] += c * v * v
        return
    for k in range(a, b):
        xrow[indices[k]] += data[k]
    for k in range(a, b):
        j = indices[k]
        v = xrow[j]
        if v != 0.0:  # a repeated column's later entries find it cleared
            out[offset + j] += c * v * v
            xrow[j] = 0.0


@jit
def add_row_outer_upper(data, indices, a, b, c, G):  # pragma: no cover - compiled
    """Add ``c x̃ x̃ᵀ`` (``x̃ = [x, 1]``, the 1 in the last column) into the upper triangle
    of ``G`` (D, D) for the row ``data[a:b]``.

    Every pair of entries ``(k, l)`` with ``j_k <= j_l`` adds ``c x_k x_l`` at
    ``(j_k, j_l)``: a repeated column gets all its pairs, so the result is the outer
    product of the summed row. Cost: (entries)² per row.
    """
    last = G.shape[0] - 1
    for k in range(a, b):
        j = indices[k]
        ck = c * data[k]
        for m in range(a, b):
            jm = indices[m]
            if jm >= j:
                G[j, jm] += ck * data[m]
        G[j, last] += ck
    G[last, last] += c


@jit
def merge_touched(indices, indptr, r0, r1, D, src, dst):  # pragma: no cover - compiled
    """Add ``src`` into ``dst`` and leave ``src`` zero, for a buffer only rows
    ``r0:r1`` of the batch wrote into.

    ``src`` and ``dst`` have length ``m·D``: ``m`` blocks of ``D`` (features, then an
    intercept last); a row's entry in column ``j`` touched ``j`` of every block. When the
    rows hold fewer non-zeros than ``D``, only the touched entries (and the intercepts) are
    visited; else every entry.
    """
    P = src.shape[0]
    m = P // D
    a = indptr[r0]
    b = indptr[r1]
    if b - a >= D:
        for q in range(P):
            dst[q] += src[q]
            src[q] = 0.0
        return
    for k in range(a, b):
        j = indices[k]
        for blk in range(m):
            q = blk * D + j
            v = src[q]
            if v != 0.0:  # NaN too; a column met again finds it cleared
                dst[q] += v
                src[q] = 0.0
    for blk in range(m):
        q = blk * D + D - 1
        dst[q] += src[q]
        src[q] = 0.0
