"""Fused Numba kernels for the one-hidden-layer regression network.

The network is ``f(x) = w2 · tanh(W1 x + b1) + b2`` with one output. Parameters are laid
out as ``θ = [W1 (H × d, row-major), b1 (H), w2 (H), b2]`` (``P = H d + 2H + 1``). One
pass over the rows of a batch computes, per row ``i``:

- the forward pass ``a = W1 x_i + b1``, ``h = tanh(a)``, ``f_i = w2 · h + b2``;
- the loss ``½ (y_i − f_i)²``;
- the Jacobian row ``J_i = ∂f_i/∂θ``::

      ∂f/∂W1[j, k] = w2_j (1 − h_j²) x_k     ∂f/∂b1_j = w2_j (1 − h_j²)
      ∂f/∂w2_j     = h_j                      ∂f/∂b2   = 1

  which is the Gauss–Newton metric factor of the row (eq. 40–41, ``K = 1``);
- the loss gradient ``∂l_i/∂θ = (f_i − y_i) J_i``.

``1 − h²`` is evaluated as ``4e / (1 + e)²`` with ``e = exp(−2|a|)``, which keeps full
relative precision for saturated units. Rows are independent, so the parallel variant
splits them over threads with no reduction. Accumulation over rows (the metric sums) is
done by :mod:`natgrad_stream.models._factor_kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import thread_ranges


@jit
def mlp_rows_range(X, y, theta, hidden, start, stop, with_jac, loss, grad, U,
                   f):  # pragma: no cover - compiled
    """Per-row forward pass, loss, loss gradient and Jacobian over rows ``start:stop``.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    y : ndarray, shape (n,), float64
    theta : ndarray, shape (P,), float64
        ``[W1 (row-major), b1, w2, b2]`` with ``P = hidden·d + 2·hidden + 1``.
    hidden : int
        ``H``, the number of hidden units.
    start, stop : int
        Row range.
    with_jac : bool
        Also write the Jacobian rows into ``U``.
    loss : ndarray, shape (n,), float64
        Out: ``½ (y_i − f_i)²``.
    grad : ndarray, shape (n, P), float64
        Out: ``(f_i − y_i) ∂f_i/∂θ``.
    U : ndarray, shape (n, 1, P), float64
        Out when ``with_jac``: ``∂f_i/∂θ``; any 3-D dummy otherwise.
    f : ndarray, shape (n,), float64
        Out: the network output ``f_i``.
    """
    d = X.shape[1]
    H = hidden
    o_b1 = H * d
    o_w2 = o_b1 + H
    o_b2 = o_w2 + H
    P = o_b2 + 1
    for i in range(start, stop):
        out = theta[o_b2]
        for j in range(H):
            base = j * d
            a = theta[o_b1 + j]
            for k in range(d):
                a += theta[base + k] * X[i, k]
            h = np.tanh(a)
            e = np.exp(-2.0 * abs(a))
            dh = 4.0 * e / ((1.0 + e) * (1.0 + e))
            w2 = theta[o_w2 + j]
            out += w2 * h
            g = w2 * dh
            for k in range(d):
                grad[i, base + k] = g * X[i, k]
            grad[i, o_b1 + j] = g
            grad[i, o_w2 + j] = h
        grad[i, o_b2] = 1.0
        r = out - y[i]
        loss[i] = 0.5 * r * r
        f[i] = out
        if with_jac:
            for p in range(P):
                U[i, 0, p] = grad[i, p]
        for p in range(P):
            grad[i, p] *= r


@jit
def mlp_rows(X, y, theta, hidden, with_jac, loss, grad, U, f):  # pragma: no cover - compiled
    """Serial :func:`mlp_rows_range` over all rows."""
    mlp_rows_range(X, y, theta, hidden, 0, X.shape[0], with_jac, loss, grad, U, f)


@jit(parallel=True)
def mlp_rows_parallel(X, y, theta, hidden, with_jac, loss, grad, U, f,
                      n_threads):  # pragma: no cover - compiled
    """:func:`mlp_rows_range` with the rows split into ``n_threads`` contiguous parts.

    Every row is written by exactly one thread and nothing is reduced, so the result is
    bit-for-bit that of :func:`mlp_rows`.
    """
    ranges = thread_ranges(X.shape[0], n_threads)
    for t in prange(n_threads):
        mlp_rows_range(X, y, theta, hidden, ranges[t, 0], ranges[t, 1], with_jac, loss, grad,
                       U, f)


@jit
def mlp_predict(X, theta, hidden, out):  # pragma: no cover - compiled
    """Network outputs ``f_i = w2 · tanh(W1 x_i + b1) + b2`` into ``out`` of shape (n,)."""
    n, d = X.shape
    H = hidden
    o_b1 = H * d
    o_w2 = o_b1 + H
    o_b2 = o_w2 + H
    for i in range(n):
        acc = theta[o_b2]
        for j in range(H):
            base = j * d
            a = theta[o_b1 + j]
            for k in range(d):
                a += theta[base + k] * X[i, k]
            acc += theta[o_w2 + j] * np.tanh(a)
        out[i] = acc
