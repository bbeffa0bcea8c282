"""Fused Numba kernels for generalized linear models with an intercept.

One pass over a minibatch computes, per row ``i`` with ``z_i = x_i·β + b``: the loss,
the gradient of the loss and the per-row metric weight ``c_i``, and accumulates
``Σ w_i loss_i``, ``Σ w_i ∂loss_i/∂θ`` and ``Σ c_i x̃_i x̃_iᵀ`` (``x̃ = [x, 1]``) in float64,
reading float32 or float64 ``X`` in place. Parameter layout: ``θ = [β_0 … β_{d-1}, b]``.

The metric weights are, for each family with canonical link:

==========  ==========================  =======================
family      model Fisher (eq. 30)       empirical (eq. 31)
==========  ==========================  =======================
logistic    p(1 − p)                    (y − p)²
linear      1  (unit noise variance)    (y − z)²
poisson     μ = e^z                     (y − μ)²
==========  ==========================  =======================

The Poisson loss is ``μ − y z``, the negative log-likelihood without its constant
``log y!``; with sample weights ``t`` and rate targets ``y/t`` it is the exposure model
``y ~ Poisson(t e^z)`` (the same estimating equations).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from natgrad_stream._jit import jit
from natgrad_stream.models._gram_kernels import (
    BLOCK_ROWS,
    symmetrize_from_upper,
    syrk_upper,
    syrk_upper_parallel,
    thread_ranges,
    zero_columns,
)

FAMILY_LOGISTIC = 0
FAMILY_LINEAR = 1
FAMILY_POISSON = 2

METRIC_NONE = -1
METRIC_MODEL = 0
METRIC_EMPIRICAL = 1

STRUCTURE_FULL = 0
STRUCTURE_DIAGONAL = 1


@jit
def linear_predictor(X, theta, i):  # pragma: no cover - compiled
    """``z_i = X[i]·θ[:-1] + θ[-1]`` in float64."""
    d = X.shape[1]
    z = theta[d]
    for j in range(d):
        z += X[i, j] * theta[j]
    return z


@jit
def glm_row(family, z, y):  # pragma: no cover - compiled
    """Per-row ``(loss, ∂loss/∂z, model metric weight, empirical metric weight)``."""
    if family == FAMILY_LOGISTIC:
        # log(1 + e^z) − y z, computed without overflow
        if z >= 0.0:
            e = np.exp(-z)
            p = 1.0 / (1.0 + e)
            loss = z + np.log1p(e) - y * z
        else:
            e = np.exp(z)
            p = e / (1.0 + e)
            loss = np.log1p(e) - y * z
        r = p - y
        return loss, r, p * (1.0 - p), r * r
    if family == FAMILY_POISSON:
        mu = np.exp(z)
        r = mu - y
        return mu - y * z, r, mu, r * r
    # linear regression, Gaussian with unit variance: ½ (y − z)²
    r = z - y
    return 0.5 * r * r, r, 1.0, r * r


@jit
def _row_loss_grad(X, y, theta, family, metric, i, wi, grad):  # pragma: no cover - compiled
    """Row ``i`` of weight ``wi``: adds ``wi ∇loss`` into ``grad``; returns ``(wi·loss, c)``
    with ``c`` the row's metric weight (model or empirical) times ``wi``.
    """
    d = X.shape[1]
    z = linear_predictor(X, theta, i)
    loss, dz, c_model, c_emp = glm_row(family, z, y[i])
    g = wi * dz
    for j in range(d):
        grad[j] += g * X[i, j]
    grad[d] += g
    return wi * loss, wi * (c_model if metric == METRIC_MODEL else c_emp)


@jit
def glm_accumulate_range(X, y, w, theta, family, metric, structure, start, stop,  # pragma: no cover
                         grad, fisher, fdiag, ST):
    """Accumulate loss, gradient and metric sums over rows ``start:stop``.

    Parameters
    ----------
    X : ndarray, shape (n, d), float32 or float64
    y : ndarray, shape (n,), float64
    w : ndarray, shape (n,) or (0,), float64
        Sample weights; an empty array means unit weights.
    theta : ndarray, shape (d + 1,), float64
    family, metric, structure : int
        Codes defined in this module; ``metric == METRIC_NONE`` skips the metric.
    start, stop : int
    grad : ndarray, shape (d + 1,), float64
        Gradient-sum accumulator (added to).
    fisher : ndarray, shape (d + 1, d + 1), float64
        Full metric-sum accumulator (upper triangle); a 1×1 dummy otherwise.
    fdiag : ndarray, shape (d + 1,), float64
        Diagonal metric-sum accumulator; a length-1 dummy otherwise.
    ST : ndarray, shape (d + 1, BLOCK_ROWS), float64
        Scratch.

    Returns
    -------
    loss_sum, weight_sum : float
    """
    d = X.shape[1]
    weighted = w.shape[0] > 0
    full = metric != METRIC_NONE and structure == STRUCTURE_FULL
    diag = metric != METRIC_NONE and structure == STRUCTURE_DIAGONAL
    loss_sum = 0.0
    weight_sum = 0.0
    for b0 in range(start, stop, BLOCK_ROWS):
        b1 = min(b0 + BLOCK_ROWS, stop)
        for i in range(b0, b1):
            wi = w[i] if weighted else 1.0
            loss, c = _row_loss_grad(X, y, theta, family, metric, i, wi, grad)
            loss_sum += loss
            weight_sum += wi
            if full:
                s = np.sqrt(c)
                r = i - b0
                for j in range(d):
                    ST[j, r] = s * X[i, j]
                ST[d, r] = s
            elif diag:
                for j in range(d):
                    fdiag[j] += c * X[i, j] * X[i, j]
                fdiag[d] += c
        if full:
            if b1 - b0 < BLOCK_ROWS:
                zero_columns(ST, b1 - b0)
            syrk_upper(ST, fisher)
    return loss_sum, weight_sum


@jit
def glm_accumulate(X, y, w, theta, family, metric, structure, grad, fisher, fdiag, ST):
    """Serial fused pass over all rows; full metrics come back symmetric.

    Shapes as in :func:`glm_accumulate_range`. Returns ``(loss_sum, weight_sum)``.
    """
    loss, wsum = glm_accumulate_range(
        X, y, w, theta, family, metric, structure, 0, X.shape[0], grad, fisher, fdiag, ST
    )
    if metric != METRIC_NONE and structure == STRUCTURE_FULL:
        symmetrize_from_upper(fisher)
    return loss, wsum


@jit
def glm_accumulate_wide(X, y, w, theta, family, metric, grad, fisher, ST):  # pragma: no cover
    """Fused pass for a full metric of a wide model: rows in blocks of ``BLOCK_ROWS``, each
    block's rank-``BLOCK_ROWS`` update of ``fisher`` split over threads by rows of
    ``fisher`` (:func:`syrk_upper_parallel`), so no per-thread P × P accumulator exists.
    The sums are those of the serial :func:`glm_accumulate`, in its order.

    Shapes as in :func:`glm_accumulate_range` (``metric`` not ``METRIC_NONE``). Returns
    ``(loss_sum, weight_sum)``; ``fisher`` comes back symmetric.
    """
    n = X.shape[0]
    d = X.shape[1]
    weighted = w.shape[0] > 0
    loss_sum = 0.0
    weight_sum = 0.0
    for b0 in range(0, n, BLOCK_ROWS):
        b1 = min(b0 + BLOCK_ROWS, n)
        for i in range(b0, b1):
            wi = w[i] if weighted else 1.0
            loss, c = _row_loss_grad(X, y, theta, family, metric, i, wi, grad)
            loss_sum += loss
            weight_sum += wi
            s = np.sqrt(c)
            r = i - b0
            for j in range(d):
                ST[j, r] = s * X[i, j]
            ST[d, r] = s
        if b1 - b0 < BLOCK_ROWS:
            zero_columns(ST, b1 - b0)
        syrk_upper_parallel(ST, fisher)
    symmetrize_from_upper(fisher)
    return loss_sum, weight_sum


@jit(parallel=True)
def glm_accumulate_parallel(X, y, w, theta, family, metric, structure, grad, fisher, fdiag,
                            grad_t, fisher_t, fdiag_t, ST_t):  # pragma: no cover - compiled
    """Parallel fused pass: rows split over threads, per-thread accumulators, serial merge.

    Parameters
    ----------
    grad_t : ndarray, shape (T, P), float64
    fisher_t, fdiag_t : ndarray, shapes (T, P, P) and (T, P) (or dummies), float64
    ST_t : ndarray, shape (T, P, BLOCK_ROWS), float64
        Per-thread workspaces; ``T`` fixes the split (and so the summation order).

    Other arguments and the return value as in :func:`glm_accumulate`.
    """
    T = grad_t.shape[0]
    ranges = thread_ranges(X.shape[0], T)
    loss_t = np.zeros(T)
    wsum_t = np.zeros(T)
    for t in prange(T):
        grad_t[t, :] = 0.0
        fisher_t[t] = 0.0
        fdiag_t[t] = 0.0
        loss_t[t], wsum_t[t] = glm_accumulate_range(
            X, y, w, theta, family, metric, structure, ranges[t, 0], ranges[t, 1],
            grad_t[t], fisher_t[t], fdiag_t[t], ST_t[t],
        )
    loss = 0.0
    wsum = 0.0
    for t in range(T):
        loss += loss_t[t]
        wsum += wsum_t[t]
        grad += grad_t[t]
        if metric != METRIC_NONE:
            if structure == STRUCTURE_FULL:
                fisher += fisher_t[t]
            else:
                fdiag += fdiag_t[t]
    if metric != METRIC_NONE and structure == STRUCTURE_FULL:
        symmetrize_from_upper(fisher)
    return loss, wsum


@jit
def glm_scores(X, y, theta, family, out):  # pragma: no cover - compiled
    """Per-sample scores ``∂ log q(y_i|x_i) / ∂θ = −∂loss_i/∂θ`` into ``out`` (n, d + 1)."""
    d = X.shape[1]
    for i in range(X.shape[0]):
        z = linear_predictor(X, theta, i)
        _, dz, _, _ = glm_row(family, z, y[i])
        for j in range(d):
            out[i, j] = -dz * X[i, j]
        out[i, d] = -dz


@jit
def glm_mean(X, theta, family, out):  # pragma: no cover - compiled
    """Predicted mean ``E[y|x]`` into ``out`` (n,): ``sigmoid(z)``, ``exp(z)`` or ``z``."""
    for i in range(X.shape[0]):
        z = linear_predictor(X, theta, i)
        if family == FAMILY_LOGISTIC:
            out[i] = 1.0 / (1.0 + np.exp(-z)) if z >= 0.0 else np.exp(z) / (1.0 + np.exp(z))
        elif family == FAMILY_POISSON:
            out[i] = np.exp(z)
        else:
            out[i] = z


@jit
def glm_evaluate(X, y, w, theta, family):  # pragma: no cover - compiled
    """Weighted sums for evaluation: ``(loss_sum, second_sum, weight_sum)``.

    ``second_sum`` counts correct 0/1 predictions (logistic, threshold 0.5), sums the
    squared errors (linear) or the unit deviances ``2(y log(y/μ) − (y − μ))`` (Poisson);
    each row counts with its weight ``w_i`` (an empty ``w`` means unit weights).
    """
    weighted = w.shape[0] > 0
    loss_sum = 0.0
    second = 0.0
    weight_sum = 0.0
    for i in range(X.shape[0]):
        wi = w[i] if weighted else 1.0
        z = linear_predictor(X, theta, i)
        loss, _, _, _ = glm_row(family, z, y[i])
        loss_sum += wi * loss
        weight_sum += wi
        second += wi * evaluation_second(family, z, y[i])
    return loss_sum, second, weight_sum


@jit
def evaluation_second(family, z, y):  # pragma: no cover - compiled
    """A row's second evaluation measure (:func:`glm_evaluate`): 1 for a correct 0/1
    prediction (logistic), the squared error (linear) or the unit deviance (Poisson).
    """
    if family == FAMILY_LOGISTIC:
        return 1.0 if (z > 0.0) == (y > 0.5) else 0.0
    if family == FAMILY_POISSON:
        mu = np.exp(z)
        dev = mu - y
        if y > 0.0:
            dev += y * np.log(y / mu)
        return 2.0 * dev
    return (y - z) * (y - z)
