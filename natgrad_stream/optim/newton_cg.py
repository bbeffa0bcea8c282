"""Truncated Newton directions by preconditioned conjugate gradients (matrix-free).

For a wide model whose metric is kept diagonal, the Fisher-scoring step ``−G_diag⁻¹∇J``
is no Newton step: the diagonal ignores every coupling (the intercept with a one-hot
group, features that share rows), and scoring with it converges slowly. With a metric
that *is* the Hessian (the model Fisher of a GLM with its canonical link), the Newton
direction ``d`` solves ``H d = −∇J`` without forming ``H``: conjugate gradients need only
products ``H v``, each one pass over the data (``Σ_i c_i x̃_i (x̃_iᵀ v)``, O(non-zeros)),
preconditioned by the diagonal the pass measured and the intercept's column
(:func:`arrow_preconditioner`) or, for the low-rank structure, by the diagonal-plus-low-rank
model of the pass's own sketch of ``H`` (:func:`lowrank_preconditioner`). The solve is
truncated once the residual is a fixed fraction of the gradient's (an inexact Newton
method, Dembo, Eisenstat & Steihaug 1982, with the forcing term :data:`CG_FORCING`), as LIBLINEAR's
trust-region Newton does (Lin, Weng & Keerthi 2008).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Conjugate-gradient iterations per direction at most (each one pass over the data), at
#: first: a fit whose direction used them all doubles them for its next pass, up to
#: :data:`CG_MAX_ITERATIONS_LIMIT`. Conjugate gradients restarted at every Newton step
#: repeat their first iterations, which resolve the stiff part of the spectrum; a tail
#: that needs more is never reached under a fixed cap (d = 10,000 raw features, the
#: low-rank sketch's preconditioner, 8e-5 above the optimum: 100 products solve 9% of
#: the Newton decrement, 200 products 95%, 300 all of it; the fit stalled there with 100
#: a pass).
CG_MAX_ITERATIONS = 100
CG_MAX_ITERATIONS_LIMIT = 1600
#: The forcing term: a direction solves ``H d = −g`` to this relative residual (in the
#: preconditioner's norm). A constant term makes the Newton steps converge linearly at
#: about this rate; on the flights one-hot set (λ = 1e-5) 0.1 reached the stopping rule
#: in 7 steps and 227 products, the superlinear ``min(0.5, √(‖g‖/|J|))`` in 8 and 450
#: (its last directions near round-off took 100 products each), 0.3 in 10 and 236,
#: 0.05 in 7 and 291.
CG_FORCING = 0.1


def newton_direction(grad: np.ndarray, precond: np.ndarray,
                     hess_vec: Callable[[np.ndarray], np.ndarray | None], *,
                     scale: float, max_iter: int = CG_MAX_ITERATIONS):
    """Approximately solve ``H d = −grad`` by preconditioned conjugate gradients.

    Parameters
    ----------
    grad : ndarray, shape (P,)
    precond : ndarray, shape (P,), or callable
        Positive diagonal preconditioner ``M`` (the metric's diagonal, penalty included),
        or ``r -> M⁻¹ r`` for another one (:func:`arrow_preconditioner`).
    hess_vec : callable
        ``v -> H v`` (shape (P,)); None when the product was interrupted.
    scale : float
        ``|J|`` (kept for callers; the forcing term is :data:`CG_FORCING`).
    max_iter : int

    Returns
    -------
    (d, products, curvature_ok) or None
        The direction (shape (P,)), the ``H v`` products used, and False when a
        direction of non-positive curvature ended the solve early (``d`` is then the
        last iterate, or the preconditioned steepest descent ``−M⁻¹g`` if it came first);
        None when a product was interrupted.
    """
    m_inv = (lambda r: r / precond) if isinstance(precond, np.ndarray) else precond
    z = m_inv(grad)
    rz = float(grad @ z)  # ‖g‖²_M⁻¹
    if not rz > 0:
        return np.zeros_like(grad), 0, True
    target = CG_FORCING * CG_FORCING * rz
    d = np.zeros_like(grad)
    r = -grad.copy()  # residual of H d = −g at d = 0
    z = -z
    p = z.copy()
    products = 0
    for _ in range(int(max_iter)):
        Hp = hess_vec(p)
        products += 1
        if Hp is None:
            return None
        pHp = float(p @ Hp)
        if not pHp > 0 or not np.isfinite(pHp):
            return (d if products > 1 else -m_inv(grad)), products, False
        alpha = rz / pHp
        d += alpha * p
        r -= alpha * Hp
        z = m_inv(r)
        rz_new = float(r @ z)
        if rz_new <= target:
            break
        p = z + (rz_new / rz) * p
        rz = rz_new
    return d, products, True


def lowrank_preconditioner(G, *, damping: float, floor: float):
    """``r -> M⁻¹ r`` for ``M`` the diagonal-plus-low-rank model of a sketched metric ``G``
    (:class:`~natgrad_stream.geometry.lowrank.SketchedMetric`), regularized as the
    low-rank structure's whitener is (``M = WᵀW``, so ``M⁻¹ r = W⁻¹W⁻ᵀ r``, Woodbury in
    factored form, O(P·k) a product); None when the sketch cannot be factored.

    On wide raw features the diagonal alone leaves the system as ill-conditioned as the
    features' offsets make it: a feature of small variance about a large mean is nearly
    the intercept's column, so the Jacobi-scaled metric holds one eigenvalue of order P
    (the mean direction) and, after it, the features' variance fractions (down to 1e-3 of
    their scale) times their correlations' spectrum. The intercept's column alone (the
    arrow, :func:`arrow_preconditioner`) does not fix this once the features' own
    couplings through the mean outweigh the intercept (its Schur complement is then not
    positive); the sketch's top directions hold the mean direction and the leading
    correlations, and its residual diagonal is what remains of each feature once they
    are taken out (d = 1,000, 5,000 rows: condition 6e8 with the diagonal, 6e4 with
    rank 64; a direction to 0.1 of the residual then solves 94% of the Newton decrement
    in 20 products, where the diagonal's stops after 4 products at 55%).
    """
    from natgrad_stream.errors import WhiteningError
    from natgrad_stream.geometry.lowrank import whiten_lowrank

    try:
        W = whiten_lowrank(G, damping=damping, floor=floor)
    except WhiteningError:
        return None
    return lambda r: W.theta(W.grad_phi(r))


def arrow_preconditioner(diag: np.ndarray, column: np.ndarray, k: int):
    """``r -> M⁻¹ r`` for ``M`` the diagonal ``diag`` (P,) plus the row and column ``k``
    of the metric (``column`` = ``H e_k``, shape (P,)): the intercept's coupling to every
    feature, which a diagonal misses (it is the feature's own diagonal for a one-hot
    column, so a one-hot group and the intercept are nearly collinear). ``M`` is inverted
    through the Schur complement of ``k``, O(P); a complement that is not positive (to
    round-off) leaves the diagonal alone.
    """
    rest = np.ones(diag.shape[0], dtype=bool)
    rest[k] = False
    D, b, c = diag[rest], column[rest], float(column[k])
    schur = c - float(b @ (b / D))
    if not schur > 1e-12 * abs(c):
        return lambda r: r / diag

    def solve(r):
        out = np.empty_like(r)
        y_k = (r[k] - float(b @ (r[rest] / D))) / schur
        out[rest] = (r[rest] - b * y_k) / D
        out[k] = y_k
        return out

    return solve
