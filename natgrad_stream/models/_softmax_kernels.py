"""Fused Numba kernels for multinomial (softmax) regression with a reference class.

Parameter layout for ``K`` classes and ``d`` features (``D = d + 1``): class 0 is the
reference (its logit is 0, as in statsmodels' ``MNLogit``) and, for ``c = 1 … K−1``, block
``c − 1`` of θ is ``[β_c (d), b_c]``, so ``θ[(c−1)·D + j] = β_cj`` and
``θ[(c−1)·D + d] = b_c``; ``P = (K − 1)·D``.

One pass over a minibatch computes, per row ``i`` with ``x̃_i = [x_i, 1]``, the logits
``z_0 = 0, z_c = x̃_i·θ_c``, the class probabilities ``p = softmax(z)``, the loss
``−log p_{y_i} = logsumexp(z) − z_{y_i}``, its gradient ``(p′ − e′_{y_i}) ⊗ x̃_i`` (primes
drop class 0) and a symmetric ``(K−1) × (K−1)`` *class weight* ``A_i`` such that the row's
metric is ``A_i ⊗ x̃_i x̃_iᵀ``:

==================  ============================================================
metric              ``A_i``
==================  ============================================================
model (eq. 30)      ``diag(p′) − p′p′ᵀ`` (the exact expectation over ``y ~ p``)
empirical (31, 39)  ``r rᵀ`` with ``r = p′ − e′_{y_i}`` (the score's outer product)
Monte Carlo         ``(1/k) Σ_j r_j r_jᵀ``, ``r_j = p′ − e′_{y_ij}``, ``y_ij ~ p``
==================  ============================================================

The metric is therefore accumulated per *class pair* ``(a, b)``, ``a ≤ b``, as the weighted
Gram ``S_ab = Σ_i w_i A_i[a, b] x̃_i x̃_iᵀ`` (a symmetric ``D × D`` block; only its upper
triangle is computed), and block ``(a, b)`` of the ``(P, P)`` metric is ``S_ab``. This costs
``(K−1)K/2 · D²/2`` per row for the full metric, ``(K−1)/2·K`` times less than summing
``K`` outer products of length-``P`` factors. The block structure (one group per class)
uses only the pairs ``a = b``; the diagonal structure needs ``A_i[a, a] x̃_ij²`` only.

Monte Carlo targets come in as uniforms ``U`` (k, n): ``y_ij`` is the first class whose
cumulative probability exceeds ``U[j, i]`` (inverse CDF), so the kernel samples from the
probabilities it has just computed.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import gram_upper, thread_ranges

METRIC_NONE = -1
METRIC_MODEL = 0
METRIC_EMPIRICAL = 1
METRIC_MONTE_CARLO = 2

STRUCTURE_FULL = 0
STRUCTURE_DIAGONAL = 1
STRUCTURE_BLOCK = 2


def class_pairs(n_classes: int, structure: int) -> tuple[np.ndarray, np.ndarray]:
    """Class pairs ``(a, b)`` (0-based over the K−1 free classes) whose blocks are summed.

    All pairs ``a ≤ b`` for the full metric, ``a = b`` for the block structure, none for
    the diagonal. Returns two int64 arrays of equal length.
    """
    m = int(n_classes) - 1
    if structure == STRUCTURE_FULL:
        a, b = np.triu_indices(m)
    elif structure == STRUCTURE_BLOCK:
        a = b = np.arange(m)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    return np.ascontiguousarray(a, dtype=np.int64), np.ascontiguousarray(b, dtype=np.int64)


@jit
def softmax_of_logits(z, p):  # pragma: no cover - compiled
    """Probabilities ``p`` (K,) of logits ``z`` (K,), shifted by their maximum; returns
    logsumexp(z).
    """
    K = z.shape[0]
    m = z[0]
    for c in range(1, K):
        if z[c] > m:
            m = z[c]
    tot = 0.0
    for c in range(K):
        e = np.exp(z[c] - m)
        p[c] = e
        tot += e
    for c in range(K):
        p[c] /= tot
    return m + np.log(tot)


@jit
def row_probabilities(X, theta, i, z, p):  # pragma: no cover - compiled
    """Logits ``z`` (K,) and probabilities ``p`` (K,) of row ``i``; returns logsumexp(z)."""
    d = X.shape[1]
    D = d + 1
    K = z.shape[0]
    z[0] = 0.0
    for c in range(1, K):
        o = (c - 1) * D
        s = theta[o + d]
        for j in range(d):
            s += X[i, j] * theta[o + j]
        z[c] = s
    return softmax_of_logits(z, p)


@jit
def inverse_cdf(p, u):  # pragma: no cover - compiled
    """The first class ``c`` with ``u < p_0 + … + p_c`` (the last class if rounding)."""
    K = p.shape[0]
    acc = 0.0
    for c in range(K - 1):
        acc += p[c]
        if u < acc:
            return c
    return K - 1


@jit
def class_weight(metric, p, label, U, i, A, r):  # pragma: no cover - compiled
    """The row's class weight ``A`` ((K−1) × (K−1)) for ``metric`` (see the module table).

    ``r`` is (K−1,) scratch; ``U`` (k, n) uniforms for the Monte Carlo metric.
    """
    m = A.shape[0]
    if metric == METRIC_MODEL:
        for a in range(m):
            pa = p[a + 1]
            for b in range(m):
                A[a, b] = -pa * p[b + 1]
            A[a, a] += pa
    elif metric == METRIC_EMPIRICAL:
        for a in range(m):
            r[a] = p[a + 1]
        if label > 0:
            r[label - 1] -= 1.0
        for a in range(m):
            for b in range(m):
                A[a, b] = r[a] * r[b]
    else:
        k = U.shape[0]
        for a in range(m):
            for b in range(m):
                A[a, b] = 0.0
        for s in range(k):
            ys = inverse_cdf(p, U[s, i])
            for a in range(m):
                r[a] = p[a + 1]
            if ys > 0:
                r[ys - 1] -= 1.0
            for a in range(m):
                for b in range(m):
                    A[a, b] += r[a] * r[b]
        for a in range(m):
            for b in range(m):
                A[a, b] /= k


@jit
def weighted_gram_upper(XT, wt, nb, YT, S):  # pragma: no cover - compiled
    """Add ``Σ_{r<nb} wt_r XT[:, r] XT[:, r]ᵀ`` to the upper triangle of ``S`` (D, D).

    ``wt`` may have any sign; ``YT`` (D, BLOCK_ROWS) is scratch
    (:func:`natgrad_stream.models._gram_kernels.gram_upper` does the product).
    """
    D = XT.shape[0]
    for j in range(D):
        for r in range(nb):
            YT[j, r] = wt[r] * XT[j, r]
    gram_upper(YT, XT, nb, S)


@jit
def _flush_pairs(XT, WT, nb, YT, S):  # pragma: no cover - compiled
    for q in range(WT.shape[0]):
        weighted_gram_upper(XT, WT[q], nb, YT, S[q])


@jit
def softmax_accumulate_range(X, y, w, theta, metric, structure, U, pa, pb, start, stop, grad,
                             S, gdiag, XT, YT, WT):  # pragma: no cover - compiled
    """Accumulate loss, gradient and metric sums over rows ``start:stop``.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    y : ndarray, shape (n,), float64
        Class labels ``0 … K−1`` (validated by the caller: no check here).
    w : ndarray, shape (n,) or (0,), float64
        Sample weights; an empty array means unit weights.
    theta : ndarray, shape (P,), float64
        ``P = (K − 1)(d + 1)``, so ``K = P // (d + 1) + 1`` (layout: module docstring).
    metric, structure : int
        Codes defined in this module; ``metric == METRIC_NONE`` skips the metric.
    U : ndarray, shape (k, n), float64
        Uniforms for ``METRIC_MONTE_CARLO`` (any shape otherwise).
    pa, pb : ndarray, shape (Q,), int64
        Class pairs accumulated (:func:`class_pairs`).
    start, stop : int
    grad : ndarray, shape (P,), float64
        Gradient-sum accumulator (added to).
    S : ndarray, shape (Q, D, D), float64
        Pair-block accumulators (upper triangles, added to); a dummy for the diagonal.
    gdiag : ndarray, shape (P,), float64
        Diagonal accumulator for ``STRUCTURE_DIAGONAL`` (added to); a dummy otherwise.
    XT, YT : ndarray, shape (D, BLOCK_ROWS), float64
        Scratch.
    WT : ndarray, shape (Q, BLOCK_ROWS), float64
        Scratch.

    Returns
    -------
    loss_sum, weight_sum : float
    """
    d = X.shape[1]
    D = d + 1
    K = theta.shape[0] // D + 1
    m = K - 1
    Q = pa.shape[0]
    weighted = w.shape[0] > 0
    has_metric = metric != METRIC_NONE
    diag = has_metric and structure == STRUCTURE_DIAGONAL
    pairs = has_metric and structure != STRUCTURE_DIAGONAL
    z = np.empty(K)
    p = np.empty(K)
    r = np.empty(max(m, 1))
    A = np.empty((m, m))
    loss_sum = 0.0
    weight_sum = 0.0
    nb = 0
    for i in range(start, stop):
        wi = w[i] if weighted else 1.0
        lse = row_probabilities(X, theta, i, z, p)
        label = int(y[i])
        loss_sum += wi * (lse - z[label])
        weight_sum += wi
        for c in range(1, K):
            g = p[c]
            if c == label:
                g -= 1.0
            g *= wi
            o = (c - 1) * D
            for j in range(d):
                grad[o + j] += g * X[i, j]
            grad[o + d] += g
        if not has_metric:
            continue
        class_weight(metric, p, label, U, i, A, r)
        if diag:
            for a in range(m):
                c = wi * A[a, a]
                o = a * D
                for j in range(d):
                    gdiag[o + j] += c * X[i, j] * X[i, j]
                gdiag[o + d] += c
        elif pairs:
            for j in range(d):
                XT[j, nb] = X[i, j]
            XT[d, nb] = 1.0
            for q in range(Q):
                WT[q, nb] = wi * A[pa[q], pb[q]]
            nb += 1
            if nb == XT.shape[1]:
                _flush_pairs(XT, WT, nb, YT, S)
                nb = 0
    if pairs and nb > 0:
        _flush_pairs(XT, WT, nb, YT, S)
    return loss_sum, weight_sum


@jit
def expand_pairs(S, pa, pb, G):  # pragma: no cover - compiled
    """Write the pair blocks (upper triangles in ``S`` (Q, D, D)) into the full ``G`` (P, P).

    Block ``(a, b)`` and its transpose ``(b, a)`` both receive the symmetric ``S_ab``;
    entries of ``G`` outside the listed blocks are left as they are.
    """
    D = S.shape[1]
    for q in range(pa.shape[0]):
        oa = pa[q] * D
        ob = pb[q] * D
        for j in range(D):
            for k in range(j, D):
                v = S[q, j, k]
                G[oa + j, ob + k] = v
                G[oa + k, ob + j] = v
                G[ob + j, oa + k] = v
                G[ob + k, oa + j] = v


@jit
def softmax_accumulate(X, y, w, theta, metric, structure, U, pa, pb, grad, G, gdiag, S, XT,
                       YT, WT):  # pragma: no cover - compiled
    """Serial fused pass over all rows.

    Overwrites ``grad`` (P,), ``G`` (P, P, full/block; zero off the blocks) or ``gdiag``
    (P,, diagonal) and ``S`` with the batch sums; other arguments as in
    :func:`softmax_accumulate_range`. Returns ``(loss_sum, weight_sum)``.
    """
    grad[:] = 0.0
    gdiag[:] = 0.0
    S[:] = 0.0
    loss, wsum = softmax_accumulate_range(X, y, w, theta, metric, structure, U, pa, pb, 0,
                                          X.shape[0], grad, S, gdiag, XT, YT, WT)
    if metric != METRIC_NONE and structure != STRUCTURE_DIAGONAL:
        G[:] = 0.0
        expand_pairs(S, pa, pb, G)
    return loss, wsum


@jit(parallel=True)
def softmax_accumulate_parallel(X, y, w, theta, metric, structure, U, pa, pb, grad, G, gdiag,
                                S, grad_t, S_t, gdiag_t, XT_t, YT_t,
                                WT_t):  # pragma: no cover - compiled
    """Parallel fused pass: rows split over threads, per-thread accumulators, serial merge.

    Parameters
    ----------
    grad_t : ndarray, shape (T, P), float64
    S_t : ndarray, shape (T, Q, D, D), float64 (or a (T, 1, 1, 1) dummy for the diagonal)
    gdiag_t : ndarray, shape (T, P), float64 (or (T, 1) when not diagonal)
    XT_t, YT_t : ndarray, shape (T, D, BLOCK_ROWS), float64
    WT_t : ndarray, shape (T, Q, BLOCK_ROWS), float64
        Per-thread workspaces; ``T`` fixes the split (and so the summation order).

    Other arguments and the return value as in :func:`softmax_accumulate`.
    """
    T = grad_t.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    loss_t = np.zeros(T)
    wsum_t = np.zeros(T)
    for t in prange(T):
        grad_t[t] = 0.0
        S_t[t] = 0.0
        gdiag_t[t] = 0.0
        loss_t[t], wsum_t[t] = softmax_accumulate_range(
            X, y, w, theta, metric, structure, U, pa, pb, ranges[t, 0], ranges[t, 1],
            grad_t[t], S_t[t], gdiag_t[t], XT_t[t], YT_t[t], WT_t[t])
    grad[:] = 0.0
    gdiag[:] = 0.0
    S[:] = 0.0
    loss = 0.0
    wsum = 0.0
    diag = structure == STRUCTURE_DIAGONAL
    for t in range(T):
        loss += loss_t[t]
        wsum += wsum_t[t]
        grad += grad_t[t]
        if metric != METRIC_NONE:
            if diag:
                gdiag += gdiag_t[t]
            else:
                S += S_t[t]
    if metric != METRIC_NONE and not diag:
        G[:] = 0.0
        expand_pairs(S, pa, pb, G)
    return loss, wsum


@jit
def softmax_proba(X, theta, out):  # pragma: no cover - compiled
    """Class probabilities into ``out`` (n, K)."""
    K = out.shape[1]
    z = np.empty(K)
    p = np.empty(K)
    for i in range(X.shape[0]):
        row_probabilities(X, theta, i, z, p)
        for c in range(K):
            out[i, c] = p[c]


@jit
def sample_labels(proba, U, out):  # pragma: no cover - compiled
    """Labels ``out[j, i]`` drawn by inverse CDF from ``proba`` (n, K) with uniforms ``U``
    (k, n); ``out`` (k, n) float64.
    """
    for j in range(U.shape[0]):
        for i in range(U.shape[1]):
            out[j, i] = inverse_cdf(proba[i], U[j, i])


@jit
def softmax_scores(X, y, theta, out):  # pragma: no cover - compiled
    """Per-row scores ``∂ log p_{y_i}/∂θ = (e′_{y_i} − p′) ⊗ x̃_i`` into ``out`` (n, P)."""
    d = X.shape[1]
    D = d + 1
    K = out.shape[1] // D + 1
    z = np.empty(K)
    p = np.empty(K)
    for i in range(X.shape[0]):
        row_probabilities(X, theta, i, z, p)
        label = int(y[i])
        for c in range(1, K):
            g = -p[c]
            if c == label:
                g += 1.0
            o = (c - 1) * D
            for j in range(d):
                out[i, o + j] = g * X[i, j]
            out[i, o + d] = g


@jit
def softmax_evaluate(X, y, theta, n_classes):  # pragma: no cover - compiled
    """Sums for evaluation: ``(log_loss_sum, correct)``.

    A row is correct when its label is the most probable class (the first on ties, like
    ``numpy.argmax``).
    """
    z = np.empty(n_classes)
    p = np.empty(n_classes)
    loss = 0.0
    correct = 0.0
    for i in range(X.shape[0]):
        lse = row_probabilities(X, theta, i, z, p)
        label = int(y[i])
        loss += lse - z[label]
        best = 0
        for c in range(1, n_classes):
            if z[c] > z[best]:
                best = c
        if best == label:
            correct += 1.0
    return loss, correct

