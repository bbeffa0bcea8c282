"""Numba kernels for the Kronecker factors of the softmax metric (``--structure kronecker``).

With the layout of :mod:`natgrad_stream.models._softmax_kernels` (``m = K − 1`` blocks of
``D = d + 1``), row ``i``'s metric is ``A_i ⊗ x̃_i x̃_iᵀ`` (``A_i`` its class weight, the
model Fisher's ``diag(p′) − p′p′ᵀ``, the empirical ``r rᵀ`` or the Monte Carlo mean of
them). A batch contributes two factors instead of the ``(m·D)²`` metric:

* ``S = Σ_i w_i A_i`` (m × m), the class factor, and
* ``F = Σ_i w_i x̃_i x̃_iᵀ`` (D × D), the feature factor (upper triangle only),

whose means give the K-FAC approximation ``E[A_i ⊗ x̃x̃ᵀ] ≈ E[A_i] ⊗ E[x̃x̃ᵀ]``, exact when
``A_i`` is the same on every row (:mod:`natgrad_stream.geometry.kronecker`). Cost per row:
``O(d·m + m²)`` for ``S`` and ``D²/2`` (dense) or ``nnz²/2`` (CSR) for ``F``.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import jit
from natgrad_stream.models._softmax_kernels import (
    class_weight,
    row_probabilities,
    weighted_gram_upper,
)
from natgrad_stream.models._softmax_sparse_kernels import sparse_row_probabilities


@jit
def _add_class_factor(wi, A, S):  # pragma: no cover - compiled
    m = S.shape[0]
    for a in range(m):
        for b in range(m):
            S[a, b] += wi * A[a, b]


@jit
def kronecker_factors_dense(X, y, w, theta, metric, U, XT, YT, wt, S,
                            F):  # pragma: no cover - compiled
    """Add a dense batch's class factor to ``S`` (m, m) and the upper triangle of its
    feature factor to ``F`` (D, D); returns the weight sum.

    ``X`` (n, d) float32/float64, ``y`` (n,) labels, ``w`` (n,) or empty (unit weights),
    ``theta`` (P,), ``metric`` a ``METRIC_*`` code other than none, ``U`` (k, n) uniforms
    for the Monte Carlo metric; ``XT``, ``YT`` (D, B) and ``wt`` (B,) scratch.
    """
    n, d = X.shape
    m = S.shape[0]
    K = m + 1
    B = XT.shape[1]
    z = np.empty(K)
    p = np.empty(K)
    A = np.empty((m, m))
    r = np.empty(m)
    wsum = 0.0
    nb = 0
    for i in range(n):
        wi = 1.0 if w.shape[0] == 0 else w[i]
        wsum += wi
        row_probabilities(X, theta, i, z, p)
        class_weight(metric, p, int(y[i]), U, i, A, r)
        _add_class_factor(wi, A, S)
        for j in range(d):
            XT[j, nb] = X[i, j]
        XT[d, nb] = 1.0
        wt[nb] = wi
        nb += 1
        if nb == B:
            weighted_gram_upper(XT, wt, nb, YT, F)
            nb = 0
    if nb:
        weighted_gram_upper(XT, wt, nb, YT, F)
    return wsum


@jit
def kronecker_factors_sparse(data, indices, indptr, y, w, theta, metric, U, S,
                             F):  # pragma: no cover - compiled
    """:func:`kronecker_factors_dense` on CSR rows (canonical: sorted column indices, no
    duplicates): ``O(nnz²/2)`` a row for the feature factor's upper triangle.
    """
    n = indptr.shape[0] - 1
    D = F.shape[0]
    d = D - 1
    m = S.shape[0]
    K = m + 1
    z = np.empty(K)
    p = np.empty(K)
    A = np.empty((m, m))
    r = np.empty(m)
    wsum = 0.0
    for i in range(n):
        wi = 1.0 if w.shape[0] == 0 else w[i]
        wsum += wi
        sparse_row_probabilities(data, indices, indptr, theta, i, z, p)
        class_weight(metric, p, int(y[i]), U, i, A, r)
        _add_class_factor(wi, A, S)
        a, b = indptr[i], indptr[i + 1]
        for k in range(a, b):
            j = indices[k]
            v = wi * data[k]
            for q in range(k, b):
                F[j, indices[q]] += v * data[q]
            F[j, d] += v
        F[d, d] += wi
    return wsum
