"""Slow, obviously-correct NumPy references for the Numba kernels."""

from __future__ import annotations

import numpy as np


def design(X):
    """``x̃ = [x, 1]`` in float64, shape (n, d + 1)."""
    X = np.asarray(X, dtype=np.float64)
    return np.hstack([X, np.ones((X.shape[0], 1))])


def glm_reference(family, X, y, w, theta, metric, structure):
    """Loss sum, gradient sum, metric sum and weight sum of a GLM batch, row by row."""
    Xt = design(X)
    n, P = Xt.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    loss = 0.0
    grad = np.zeros(P)
    G = np.zeros((P, P))
    for i in range(n):
        z = float(Xt[i] @ theta)
        if family == "logistic":
            p = 1.0 / (1.0 + np.exp(-z))
            li = -(y[i] * np.log(p) + (1 - y[i]) * np.log(1 - p))
            dz = p - y[i]
            c_model = p * (1 - p)
        elif family == "poisson":
            mu = np.exp(z)
            li = mu - y[i] * z
            dz = mu - y[i]
            c_model = mu
        else:
            li = 0.5 * (y[i] - z) ** 2
            dz = z - y[i]
            c_model = 1.0
        c = c_model if metric == "model" else dz * dz
        loss += w[i] * li
        grad += w[i] * dz * Xt[i]
        G += w[i] * c * np.outer(Xt[i], Xt[i])
    return loss, grad, (G if structure == "full" else np.diag(G).copy()), w.sum()


def gaussian_mean_reference(A, X, w, theta, metric, structure):
    """Loss (NLL) sum, gradient sum, metric sum and weight sum for x ~ N(Aθ, I)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    mu = A @ theta
    loss, grad, G = 0.0, np.zeros(A.shape[1]), np.zeros((A.shape[1],) * 2)
    for i in range(n):
        r = X[i] - mu
        loss += w[i] * (0.5 * r @ r + 0.5 * d * np.log(2 * np.pi))
        s = A.T @ r  # score
        grad -= w[i] * s
        G += w[i] * (np.outer(s, s) if metric == "empirical" else A.T @ A)
    return loss, grad, (G if structure == "full" else np.diag(G).copy()), w.sum()


def logistic_fisher_by_enumeration(X, theta):
    """Model Fisher E_x E_{y~q(y|x)}[s sᵀ] by summing over y ∈ {0, 1} (eq. 30)."""
    Xt = design(X)
    G = np.zeros((Xt.shape[1],) * 2)
    for x in Xt:
        p = 1.0 / (1.0 + np.exp(-x @ theta))
        for yv, prob in ((1.0, p), (0.0, 1.0 - p)):
            s = (yv - p) * x
            G += prob * np.outer(s, s)
    return G / Xt.shape[0]


def factor_gram_reference(U, w, structure, bounds):
    """``Σ_i w_i Σ_k u_ik u_ikᵀ`` restricted to a structure, by explicit loops."""
    n, K, P = U.shape
    w = np.ones(n) if w is None or len(w) == 0 else w
    G = np.zeros((P, P))
    for i in range(n):
        for k in range(K):
            G += w[i] * np.outer(U[i, k], U[i, k])
    if structure == "diagonal":
        return np.diag(G).copy()
    if structure == "block":
        mask = np.zeros((P, P), dtype=bool)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            mask[a:b, a:b] = True
        G = np.where(mask, G, 0.0)
    return G
