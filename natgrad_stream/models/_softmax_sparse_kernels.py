"""Fused Numba kernels for softmax regression on CSR batches: cost linear in non-zeros.

The sums are those of :mod:`natgrad_stream.models._softmax_kernels` on the dense rows (same
layout, class weights ``A_i`` from its :func:`~natgrad_stream.models._softmax_kernels.class_weight`,
pair blocks ``S_ab`` expanded by its ``expand_pairs``), read from ``data``, ``indices``,
``indptr`` (see :mod:`natgrad_stream.models._sparse_kernels`); ``D = d + 1`` and
``K = P // D + 1``. Per row: (K − 1)·(non-zeros) for the logits, gradient and diagonal
metric; Q·(non-zeros)² for the Q class-pair blocks of the full or block metric.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import thread_ranges
from natgrad_stream.models._softmax_kernels import (
    METRIC_NONE,
    STRUCTURE_DIAGONAL,
    class_weight,
    expand_pairs,
    softmax_of_logits,
)
from natgrad_stream.models._sparse_kernels import (
    add_row_outer_upper,
    add_row_squares,
    merge_touched,
)


@jit
def sparse_row_probabilities(data, indices, indptr, theta, i, z, p):  # pragma: no cover
    """Logits ``z`` (K,) and probabilities ``p`` (K,) of CSR row ``i``; returns
    logsumexp(z).
    """
    K = z.shape[0]
    D = theta.shape[0] // (K - 1)
    z[0] = 0.0
    for c in range(1, K):
        z[c] = theta[(c - 1) * D + D - 1]
    for k in range(indptr[i], indptr[i + 1]):
        v = data[k]
        j = indices[k]
        for c in range(1, K):
            z[c] += v * theta[(c - 1) * D + j]
    return softmax_of_logits(z, p)


@jit
def softmax_sparse_range(data, indices, indptr, y, w, theta, metric, structure, U, pa, pb,
                         start, stop, grad, S, gdiag, xrow):  # pragma: no cover - compiled
    """Add loss, gradient and metric sums of rows ``start:stop`` (batch-relative).

    Arguments as in :func:`~natgrad_stream.models._softmax_kernels.softmax_accumulate_range`
    with the CSR arrays for ``X``; ``xrow`` (D,) zeros (left zero) is the diagonal
    metric's scratch and fixes ``D``. Returns ``(loss_sum, weight_sum)``.
    """
    D = xrow.shape[0]
    d = D - 1
    K = theta.shape[0] // D + 1
    m = K - 1
    Q = pa.shape[0]
    weighted = w.shape[0] > 0
    has_metric = metric != METRIC_NONE
    diag = has_metric and structure == STRUCTURE_DIAGONAL
    z = np.empty(K)
    p = np.empty(K)
    r = np.empty(max(m, 1))
    A = np.empty((m, m))
    loss_sum = 0.0
    weight_sum = 0.0
    for i in range(start, stop):
        wi = w[i] if weighted else 1.0
        a = indptr[i]
        b = indptr[i + 1]
        lse = sparse_row_probabilities(data, indices, indptr, theta, i, z, p)
        label = int(y[i])
        loss_sum += wi * (lse - z[label])
        weight_sum += wi
        for c in range(1, K):
            g = p[c]
            if c == label:
                g -= 1.0
            g *= wi
            o = (c - 1) * D
            for k in range(a, b):
                grad[o + indices[k]] += g * data[k]
            grad[o + d] += g
        if not has_metric:
            continue
        class_weight(metric, p, label, U, i, A, r)
        if diag:
            for c in range(m):
                cw = wi * A[c, c]
                o = c * D
                add_row_squares(data, indices, a, b, cw, o, gdiag, xrow)
                gdiag[o + d] += cw
        else:
            for q in range(Q):
                add_row_outer_upper(data, indices, a, b, wi * A[pa[q], pb[q]], S[q])
    return loss_sum, weight_sum


@jit
def softmax_sparse_accumulate(data, indices, indptr, y, w, theta, metric, structure, U, pa,
                              pb, grad, G, gdiag, S, xrow):  # pragma: no cover - compiled
    """Serial pass over all rows. Overwrites ``grad`` (P,), ``G`` (P, P; full/block, zero
    off the blocks) or ``gdiag`` (P,; diagonal) and ``S`` (Q, D, D) with the batch sums;
    ``xrow`` (D,) zeros. Returns ``(loss_sum, weight_sum)``.
    """
    grad[:] = 0.0
    gdiag[:] = 0.0
    S[:] = 0.0
    loss, wsum = softmax_sparse_range(data, indices, indptr, y, w, theta, metric, structure,
                                      U, pa, pb, 0, indptr.shape[0] - 1, grad, S, gdiag, xrow)
    if metric != METRIC_NONE and structure != STRUCTURE_DIAGONAL:
        G[:] = 0.0
        expand_pairs(S, pa, pb, G)
    return loss, wsum


@jit(parallel=True)
def softmax_sparse_accumulate_parallel(data, indices, indptr, y, w, theta, metric, structure,
                                       U, pa, pb, grad, G, gdiag, S, grad_t, S_t, gdiag_t,
                                       xrow_t):  # pragma: no cover - compiled
    """Parallel pass: rows split over threads, per-thread buffers, serial merge.

    Thread 0 adds into ``grad`` and ``gdiag``; thread ``t > 0`` into its buffers:
    ``grad_t``, ``gdiag_t`` (T, P) (``gdiag_t`` (T, 1) unless diagonal) and ``xrow_t``
    (T, D) must be zeros and are left zero (merged and cleared by touched entries:
    O(nnz·(K − 1)) per batch, not O(T·P)); ``S_t`` (T, Q, D, D) is cleared here. Other
    arguments and the result as in :func:`softmax_sparse_accumulate`.
    """
    T = grad_t.shape[0]
    D = xrow_t.shape[1]
    ranges = thread_ranges(indptr.shape[0] - 1, T)
    diag = structure == STRUCTURE_DIAGONAL
    pairs = metric != METRIC_NONE and not diag
    loss_t = np.zeros(T)
    wsum_t = np.zeros(T)
    grad[:] = 0.0
    gdiag[:] = 0.0
    for t in prange(T):
        if pairs:
            S_t[t] = 0.0
        # thread 0 adds into the outputs themselves: one buffer fewer to merge
        g = grad if t == 0 else grad_t[t]
        gd = gdiag if t == 0 else gdiag_t[t]
        loss_t[t], wsum_t[t] = softmax_sparse_range(
            data, indices, indptr, y, w, theta, metric, structure, U, pa, pb, ranges[t, 0],
            ranges[t, 1], g, S_t[t], gd, xrow_t[t])
    S[:] = 0.0
    loss = 0.0
    wsum = 0.0
    for t in range(T):
        loss += loss_t[t]
        wsum += wsum_t[t]
        if pairs:
            S += S_t[t]
        if t == 0:
            continue
        merge_touched(indices, indptr, ranges[t, 0], ranges[t, 1], D, grad_t[t], grad)
        if diag and metric != METRIC_NONE:
            merge_touched(indices, indptr, ranges[t, 0], ranges[t, 1], D, gdiag_t[t], gdiag)
    if pairs:
        G[:] = 0.0
        expand_pairs(S, pa, pb, G)
    return loss, wsum


@jit
def softmax_sparse_proba(data, indices, indptr, theta, out):  # pragma: no cover - compiled
    """Class probabilities into ``out`` (n, K)."""
    K = out.shape[1]
    z = np.empty(K)
    p = np.empty(K)
    for i in range(out.shape[0]):
        sparse_row_probabilities(data, indices, indptr, theta, i, z, p)
        for c in range(K):
            out[i, c] = p[c]


@jit
def softmax_sparse_scores(data, indices, indptr, y, theta, n_classes, out):  # pragma: no cover
    """Per-row scores ``(e′_{y_i} − p′) ⊗ x̃_i`` added into ``out`` (n, P), which must be
    zeros.
    """
    D = out.shape[1] // (n_classes - 1)
    z = np.empty(n_classes)
    p = np.empty(n_classes)
    for i in range(out.shape[0]):
        sparse_row_probabilities(data, indices, indptr, theta, i, z, p)
        label = int(y[i])
        for c in range(1, n_classes):
            g = -p[c]
            if c == label:
                g += 1.0
            o = (c - 1) * D
            for k in range(indptr[i], indptr[i + 1]):
                out[i, o + indices[k]] += g * data[k]
            out[i, o + D - 1] = g


@jit
def softmax_sparse_evaluate(data, indices, indptr, y, theta, n_classes):  # pragma: no cover
    """``(log_loss_sum, correct)`` as
    :func:`~natgrad_stream.models._softmax_kernels.softmax_evaluate` defines them.
    """
    z = np.empty(n_classes)
    p = np.empty(n_classes)
    loss = 0.0
    correct = 0.0
    for i in range(y.shape[0]):
        lse = sparse_row_probabilities(data, indices, indptr, theta, i, z, p)
        label = int(y[i])
        loss += lse - z[label]
        best = 0
        for c in range(1, n_classes):
            if z[c] > z[best]:
                best = c
        if best == label:
            correct += 1.0
    return loss, correct


@jit
def softmax_sparse_accumulate_fm(data, indices, indptr, y, w, thetaT, metric, U, gradT,
                                 gdiagT):  # pragma: no cover - compiled
    """Serial pass for no metric or the diagonal one, on feature-major parameters.

    ``thetaT`` (D, K − 1) is θ with each feature's K − 1 class coefficients contiguous
    (θ's own layout is class-major, so a row's non-zero ``j`` would touch K − 1 cache lines
    D apart: on 20,000 genes × 60 classes this kernel is about 40× faster). Overwrites
    ``gradT`` and ``gdiagT`` (D, K − 1) (the latter only with a metric) with the batch
    sums in the same layout; the intercepts are row ``D − 1``. Other arguments as in
    :func:`softmax_sparse_accumulate`. Returns ``(loss_sum, weight_sum)``.
    """
    D = thetaT.shape[0]
    m = thetaT.shape[1]
    K = m + 1
    d = D - 1
    weighted = w.shape[0] > 0
    has_metric = metric != METRIC_NONE
    gradT[:] = 0.0
    if has_metric:
        gdiagT[:] = 0.0
    z = np.empty(K)
    p = np.empty(K)
    r = np.empty(max(m, 1))
    A = np.empty((m, m))
    g = np.empty(m)
    cw = np.empty(m)
    loss_sum = 0.0
    weight_sum = 0.0
    for i in range(indptr.shape[0] - 1):
        wi = w[i] if weighted else 1.0
        a = indptr[i]
        b = indptr[i + 1]
        lse = _fm_probabilities(data, indices, a, b, thetaT, z, p)
        label = int(y[i])
        loss_sum += wi * (lse - z[label])
        weight_sum += wi
        for c in range(m):
            g[c] = wi * (p[c + 1] - (1.0 if c + 1 == label else 0.0))
        for k in range(a, b):
            v = data[k]
            j = indices[k]
            for c in range(m):
                gradT[j, c] += g[c] * v
        for c in range(m):
            gradT[d, c] += g[c]
        if not has_metric:
            continue
        class_weight(metric, p, label, U, i, A, r)
        for c in range(m):
            cw[c] = wi * A[c, c]
        for k in range(a, b):
            v = np.float64(data[k])  # (float32 values are squared in float64)
            v2 = v * v
            j = indices[k]
            for c in range(m):
                gdiagT[j, c] += cw[c] * v2
        for c in range(m):
            gdiagT[d, c] += cw[c]
    return loss_sum, weight_sum


@jit
def _fm_probabilities(data, indices, a, b, thetaT, z, p):  # pragma: no cover - compiled
    """Probabilities ``p`` (K,) of the CSR row ``data/indices[a:b]`` on feature-major
    ``thetaT`` (D, K − 1); ``z`` (K,) scratch. Returns logsumexp of the logits.
    """
    D = thetaT.shape[0]
    m = thetaT.shape[1]
    z[0] = 0.0
    for c in range(m):
        z[c + 1] = thetaT[D - 1, c]
    for k in range(a, b):
        v = data[k]
        j = indices[k]
        for c in range(m):
            z[c + 1] += v * thetaT[j, c]
    return softmax_of_logits(z, p)


@jit
def softmax_sparse_proba_fm(data, indices, indptr, thetaT, out):  # pragma: no cover
    """Class probabilities into ``out`` (n, K) from feature-major ``thetaT`` (D, K − 1)."""
    K = out.shape[1]
    z = np.empty(K)
    p = np.empty(K)
    for i in range(out.shape[0]):
        _fm_probabilities(data, indices, indptr[i], indptr[i + 1], thetaT, z, p)
        for c in range(K):
            out[i, c] = p[c]


@jit
def softmax_sparse_hess_vec_fm(data, indices, indptr, w, thetaT, vT, outT):  # pragma: no cover
    """``outT += Σ_i w_i x̃_i ⊗ (A_i (V x̃_i))`` on feature-major arrays (D, K − 1): the
    model Fisher (the Hessian) times one vector ``V``, with ``A_i = diag(p′) − p′p′ᵀ``
    the row's class weight over the K − 1 free classes. Returns ``Σ w_i``.
    """
    D = thetaT.shape[0]
    m = thetaT.shape[1]
    d = D - 1
    weighted = w.shape[0] > 0
    z = np.empty(m + 1)
    p = np.empty(m + 1)
    t = np.empty(m)
    wsum = 0.0
    for i in range(indptr.shape[0] - 1):
        a = indptr[i]
        b = indptr[i + 1]
        _fm_probabilities(data, indices, a, b, thetaT, z, p)
        for c in range(m):
            t[c] = vT[d, c]
        for k in range(a, b):
            v = data[k]
            j = indices[k]
            for c in range(m):
                t[c] += v * vT[j, c]
        pt = 0.0
        for c in range(m):
            pt += p[c + 1] * t[c]
        wi = w[i] if weighted else 1.0
        wsum += wi
        for c in range(m):
            t[c] = wi * p[c + 1] * (t[c] - pt)
        for k in range(a, b):
            v = data[k]
            j = indices[k]
            for c in range(m):
                outT[j, c] += v * t[c]
        for c in range(m):
            outT[d, c] += t[c]
    return wsum
