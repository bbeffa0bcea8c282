"""Fused Numba kernels for the GLMs on CSR batches: cost linear in the non-zeros.

The sums are those of :mod:`natgrad_stream.models._glm_kernels` on the dense rows
(``Σ w_i loss_i``, ``Σ w_i ∂loss_i/∂θ``, ``Σ c_i x̃_i x̃_iᵀ`` with ``x̃ = [x, 1]``, the
same per-row terms from :func:`~natgrad_stream.models._glm_kernels.glm_row`), read from
``data``, ``indices``, ``indptr`` (see :mod:`natgrad_stream.models._sparse_kernels`) with
``d = P − 1`` columns. ``indptr[0]`` need not be 0: rows are read through ``indptr`` only.

Besides the model and empirical weights, ``METRIC_GIVEN`` takes each row's metric weight
from an array ``cw`` (the Monte Carlo metric ``(1/k) Σ_j (μ_i − y_ij)²``: the score of a
GLM with canonical link at target ``y`` is ``(y − μ) x̃``).

Per-row cost: the row's non-zeros for the loss, gradient and diagonal metric, their square
for the full metric (plus the O(P²) symmetrization of the batch's sum).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._glm_kernels import (
    FAMILY_LOGISTIC,
    FAMILY_POISSON,
    METRIC_EMPIRICAL,
    METRIC_MODEL,
    METRIC_NONE,
    STRUCTURE_DIAGONAL,
    STRUCTURE_FULL,
    evaluation_second,
    glm_row,
)
from natgrad_stream.models._gram_kernels import symmetrize_from_upper, thread_ranges
from natgrad_stream.models._sparse_kernels import (
    add_row_outer_upper,
    add_row_squares,
    merge_touched,
)

#: Row metric weights read from ``cw`` (times the sample weight).
METRIC_GIVEN = 2


@jit
def sparse_linear_predictor(data, indices, indptr, theta, i):  # pragma: no cover - compiled
    """``z_i = x_i·θ[:-1] + θ[-1]`` in float64 over row ``i``'s non-zeros."""
    z = theta[theta.shape[0] - 1]
    for k in range(indptr[i], indptr[i + 1]):
        z += data[k] * theta[indices[k]]
    return z


@jit
def linear_predictors(data, indices, indptr, theta, start, stop, out):  # pragma: no cover
    """``out[i − start] = z_i`` (:func:`sparse_linear_predictor`) for rows ``start:stop``.

    A batch kernel computes every row's ``z`` in this loop of reads only, then scatters
    in a second loop: a row's scatter waits for its ``z`` (50 reads of θ at random
    columns), and in one loop over the rows that wait left the next row's reads unissued;
    apart, the reads of many rows are in flight at once (10⁵ features × 50 non-zeros,
    1,024-row batches, 2 cores at load 7: 0.70× the time without a metric, about 0.8×
    with the diagonal; a metric-vector product, already two chains of reads a row,
    gained nothing and keeps one loop).
    """
    for i in range(start, stop):
        out[i - start] = sparse_linear_predictor(data, indices, indptr, theta, i)


@jit
def glm_sparse_range(data, indices, indptr, y, w, cw, theta, family, metric, structure,
                     start, stop, grad, fisher, fdiag, xrow):  # pragma: no cover - compiled
    """Add loss, gradient and metric sums of rows ``start:stop`` (batch-relative).

    Parameters
    ----------
    data : ndarray, float32 or float64; indices : ndarray, int32; indptr : ndarray, (n + 1,), int64
        The batch's CSR rows, ``d = P − 1`` columns.
    y : ndarray, shape (n,), float64
    w : ndarray, shape (n,) or (0,), float64
        Sample weights; empty means unit weights.
    cw : ndarray, shape (n,) or (0,), float64
        Row metric weights for ``METRIC_GIVEN``.
    theta : ndarray, shape (P,), float64
    family, metric, structure : int
        Codes of :mod:`~natgrad_stream.models._glm_kernels` (and ``METRIC_GIVEN``).
    start, stop : int
    grad : ndarray, shape (P,), float64
        Added to.
    fisher : ndarray, shape (P, P), float64
        Full metric sum (upper triangle added to); a 1×1 dummy otherwise.
    fdiag : ndarray, shape (P,), float64
        Diagonal metric sum (added to); a length-1 dummy otherwise.
    xrow : ndarray, shape (P,), float64
        Zeros (left zero); scratch of the diagonal metric.

    Returns
    -------
    loss_sum, weight_sum : float

    Notes
    -----
    Two phases (see :func:`linear_predictors`): every row's ``z_i`` first, then the
    scatters; the sums are those of one loop over the rows, added in the same order.
    """
    d = theta.shape[0] - 1
    weighted = w.shape[0] > 0
    full = metric != METRIC_NONE and structure == STRUCTURE_FULL
    diag = metric != METRIC_NONE and structure == STRUCTURE_DIAGONAL
    loss_sum = 0.0
    weight_sum = 0.0
    zs = np.empty(max(stop - start, 0))
    linear_predictors(data, indices, indptr, theta, start, stop, zs)
    for i in range(start, stop):
        wi = w[i] if weighted else 1.0
        a = indptr[i]
        b = indptr[i + 1]
        loss, dz, c_model, c_emp = glm_row(family, zs[i - start], y[i])
        loss_sum += wi * loss
        weight_sum += wi
        g = wi * dz
        for k in range(a, b):
            grad[indices[k]] += g * data[k]
        grad[d] += g
        if full or diag:
            if metric == METRIC_MODEL:
                c = wi * c_model
            elif metric == METRIC_EMPIRICAL:
                c = wi * c_emp
            else:
                c = wi * cw[i]
            if diag:
                add_row_squares(data, indices, a, b, c, 0, fdiag, xrow)
                fdiag[d] += c
            else:
                add_row_outer_upper(data, indices, a, b, c, fisher)
    return loss_sum, weight_sum


@jit
def glm_sparse_accumulate(data, indices, indptr, y, w, cw, theta, family, metric, structure,
                          grad, fisher, fdiag, xrow):  # pragma: no cover - compiled
    """Serial pass over all rows; ``grad``, ``fisher``, ``fdiag`` must come in zeroed;
    a full metric comes back symmetric. Returns ``(loss_sum, weight_sum)``.
    """
    loss, wsum = glm_sparse_range(data, indices, indptr, y, w, cw, theta, family, metric,
                                  structure, 0, indptr.shape[0] - 1, grad, fisher, fdiag, xrow)
    if metric != METRIC_NONE and structure == STRUCTURE_FULL:
        symmetrize_from_upper(fisher)
    return loss, wsum


@jit(parallel=True)
def glm_sparse_accumulate_parallel(data, indices, indptr, y, w, cw, theta, family, metric,
                                   structure, grad, fisher, fdiag, grad_t, fisher_t, fdiag_t,
                                   xrow_t):  # pragma: no cover - compiled
    """Parallel pass: rows split over threads, per-thread buffers, serial merge.

    Thread 0 adds into ``grad`` and ``fdiag`` (zeroed by the caller); thread ``t > 0``
    into ``grad_t[t]``, ``fdiag_t[t]``. ``grad_t``, ``fdiag_t`` (T, P) (``fdiag_t``
    (T, 1) unless diagonal) and ``xrow_t`` (T, P) must be zeros and are left zero
    (:func:`merge_touched` clears what it merges: O(nnz) per batch, not O(T·P));
    ``fisher_t`` (T, P, P) (full; else (T, 1, 1)) is cleared here. ``T`` fixes the split
    and so the summation order. Other arguments and the result as in
    :func:`glm_sparse_accumulate`.
    """
    T = grad_t.shape[0]
    P = theta.shape[0]
    ranges = thread_ranges(indptr.shape[0] - 1, T)
    full = metric != METRIC_NONE and structure == STRUCTURE_FULL
    diag = metric != METRIC_NONE and structure == STRUCTURE_DIAGONAL
    loss_t = np.zeros(T)
    wsum_t = np.zeros(T)
    for t in prange(T):
        if full:
            fisher_t[t] = 0.0
        # thread 0 adds into the outputs themselves: one buffer fewer to merge
        g = grad if t == 0 else grad_t[t]
        fd = fdiag if t == 0 else fdiag_t[t]
        loss_t[t], wsum_t[t] = glm_sparse_range(
            data, indices, indptr, y, w, cw, theta, family, metric, structure, ranges[t, 0],
            ranges[t, 1], g, fisher_t[t], fd, xrow_t[t])
    loss = 0.0
    wsum = 0.0
    for t in range(T):
        loss += loss_t[t]
        wsum += wsum_t[t]
        if full:
            fisher += fisher_t[t]
        if t == 0:
            continue
        merge_touched(indices, indptr, ranges[t, 0], ranges[t, 1], P, grad_t[t], grad)
        if diag:
            merge_touched(indices, indptr, ranges[t, 0], ranges[t, 1], P, fdiag_t[t], fdiag)
    if full:
        symmetrize_from_upper(fisher)
    return loss, wsum


@jit
def glm_sparse_mean(data, indices, indptr, theta, family, out):  # pragma: no cover - compiled
    """Predicted mean ``E[y|x]`` into ``out`` (n,): ``sigmoid(z)``, ``exp(z)`` or ``z``."""
    for i in range(out.shape[0]):
        z = sparse_linear_predictor(data, indices, indptr, theta, i)
        if family == FAMILY_LOGISTIC:
            out[i] = 1.0 / (1.0 + np.exp(-z)) if z >= 0.0 else np.exp(z) / (1.0 + np.exp(z))
        elif family == FAMILY_POISSON:
            out[i] = np.exp(z)
        else:
            out[i] = z


@jit
def glm_sparse_scores(data, indices, indptr, y, theta, family, out):  # pragma: no cover
    """Per-row scores ``−∂loss_i/∂θ`` added into ``out`` (n, P), which must be zeros."""
    d = theta.shape[0] - 1
    for i in range(out.shape[0]):
        z = sparse_linear_predictor(data, indices, indptr, theta, i)
        _, dz, _, _ = glm_row(family, z, y[i])
        for k in range(indptr[i], indptr[i + 1]):
            out[i, indices[k]] += -dz * data[k]
        out[i, d] = -dz


@jit
def glm_sparse_evaluate(data, indices, indptr, y, w, theta, family):  # pragma: no cover
    """``(loss_sum, second_sum, weight_sum)`` as
    :func:`~natgrad_stream.models._glm_kernels.glm_evaluate` defines them.
    """
    weighted = w.shape[0] > 0
    loss_sum = 0.0
    second = 0.0
    weight_sum = 0.0
    for i in range(y.shape[0]):
        wi = w[i] if weighted else 1.0
        z = sparse_linear_predictor(data, indices, indptr, theta, i)
        loss, _, _, _ = glm_row(family, z, y[i])
        loss_sum += wi * loss
        weight_sum += wi
        second += wi * evaluation_second(family, z, y[i])
    return loss_sum, second, weight_sum


@jit
def sparse_gram_matvec(data, indices, indptr, c, U, out):  # pragma: no cover - compiled
    """``out += Σ_i c_i x̃_i (x̃_iᵀ U)`` for ``U`` (P, k), ``out`` (P, k): O(nnz·k)."""
    P = U.shape[0]
    k = U.shape[1]
    v = np.empty(k)
    for i in range(c.shape[0]):
        a = indptr[i]
        b = indptr[i + 1]
        for q in range(k):
            v[q] = U[P - 1, q]
        for e in range(a, b):
            x = data[e]
            j = indices[e]
            for q in range(k):
                v[q] += x * U[j, q]
        ci = c[i]
        for q in range(k):
            v[q] *= ci
        for e in range(a, b):
            x = data[e]
            j = indices[e]
            for q in range(k):
                out[j, q] += x * v[q]
        for q in range(k):
            out[P - 1, q] += v[q]


@jit
def glm_sparse_hess_vec(data, indices, indptr, w, theta, family, v, out):  # pragma: no cover
    """``out += Σ_i w_i c_i x̃_i (x̃_iᵀ v)`` with the model metric's row weight ``c_i`` at
    ``θ`` (:func:`~natgrad_stream.models._glm_kernels.glm_row`): the model Fisher (for
    canonical links the Hessian) times one vector, fused into one read of each row's
    non-zeros for ``z_i`` and ``x̃_iᵀ v`` and one to scatter. Returns ``Σ w_i``.

    Shapes: ``v``, ``out`` (P,), ``w`` (n,) or (0,) for unit weights.
    """
    P = v.shape[0]
    d = P - 1
    n = indptr.shape[0] - 1
    weighted = w.shape[0] > 0
    wsum = 0.0
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        z = theta[d]
        t = v[d]
        for e in range(a, b):
            x = data[e]
            j = indices[e]
            z += x * theta[j]
            t += x * v[j]
        _, _, c, _ = glm_row(family, z, 0.0)
        wi = w[i] if weighted else 1.0
        wsum += wi
        s = wi * c * t
        for e in range(a, b):
            out[indices[e]] += s * data[e]
        out[d] += s
    return wsum


@jit
def glm_sparse_curvature(data, indices, indptr, w, theta, family, inverse, lam, a, b, v,
                         iterations, u, gu, cw):  # pragma: no cover - compiled
    """Power iteration for the top eigenvalue ρ of a batch's model metric seen through a
    diagonal whitener, ``W⁻ᵀ (G_b + λ I_S) W⁻¹`` with ``G_b = Σ_i w_i c_i x̃_i x̃_iᵀ / Σ w``
    and ``S = [a, b)``: ``iterations`` rounds of ``v ← W⁻¹ (G_b + λ I_S) W⁻¹ v/‖v‖``,
    returning ``ρ = ‖v‖`` of the last. The rows' ``w_i c_i`` are computed once (into
    ``cw``, (n,)); each round reads the rows' non-zeros once for ``x̃_iᵀ u`` and once to
    scatter, with no whole-vector temporaries (``u``, ``gu`` (P,) scratch; ``v`` (P,),
    the start, is overwritten).

    The learner's generic loop does the same arithmetic through :func:`glm_sparse_hess_vec`
    and NumPy (a dozen (P,) passes and allocations a round).
    """
    P = v.shape[0]
    d = P - 1
    n = indptr.shape[0] - 1
    weighted = w.shape[0] > 0
    wsum = 0.0
    for i in range(n):
        _, _, c, _ = glm_row(family, sparse_linear_predictor(data, indices, indptr, theta, i),
                             0.0)
        wi = w[i] if weighted else 1.0
        wsum += wi
        cw[i] = wi * c
    rho = 1.0
    for _ in range(iterations):
        sq = 0.0
        for j in range(P):
            sq += v[j] * v[j]
        norm = np.sqrt(sq)
        for j in range(P):
            u[j] = inverse[j] * (v[j] / norm)
            gu[j] = 0.0
        for i in range(n):
            t = u[d]
            for e in range(indptr[i], indptr[i + 1]):
                t += data[e] * u[indices[e]]
            s = cw[i] * t
            for e in range(indptr[i], indptr[i + 1]):
                gu[indices[e]] += s * data[e]
            gu[d] += s
        sq = 0.0
        for j in range(P):
            g = gu[j] / wsum
            if a <= j < b:
                g += lam * u[j]
            x = inverse[j] * g
            v[j] = x
            sq += x * x
        rho = np.sqrt(sq)
    return rho
