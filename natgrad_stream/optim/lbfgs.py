"""L-BFGS in the natural parameter space φ = Wθ (paper section 2.7 and footnote 2).

For a metric held fixed at ``θ_fixed``, the coordinates ``φ = W θ`` with
``WᵀW = G_reg(θ_fixed)`` are those in which steepest descent is natural-gradient descent.
A batch optimizer that needs the true gradient of the function it descends (L-BFGS and its
line search) can therefore run unchanged on ``J(φ) = J(W⁻¹φ)`` with ``∇φJ = W⁻ᵀ∇θJ``.

This module is the algorithm of one *round* at a fixed ``W``: SciPy's L-BFGS-B minimizes
``J(φ)`` from ``φ₀ = Wθ``, every evaluation given by a caller's function of θ, and the best
point evaluated is the round's result. The learner's L-BFGS strategy
(:class:`natgrad_stream.training.learner.NaturalGradientLearner` with
``optimizer="lbfgs"``) runs rounds, re-whitening between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from natgrad_stream._constants import NONFINITE_RISE, RNG_LBFGS_WINDOW

#: Registry name of the algorithm (the ``optimizer`` option's value).
NAME = "lbfgs"


class Interrupted(Exception):
    """Leaves L-BFGS from inside an evaluation (stop request or sample budget)."""


@dataclass
class RoundResult:
    """The best point a round evaluated, and how the round ended."""

    J: float
    grad: np.ndarray       # ∇θJ at theta, shape (P,)
    theta: np.ndarray      # shape (P,)
    complete: bool
    status: str
    nonfinite_trials: int


def window_chunks(n_chunks: int, window: int | None, seed: int, round_index: int):
    """Chunks evaluated in round ``round_index`` (0-based), sorted; None for all of them.

    A pure function of its arguments: ``window`` distinct chunks drawn with the generator
    ``(seed, round_index, RNG_LBFGS_WINDOW)``; None when no window is set or it covers
    every chunk.
    """
    if window is None or int(window) >= int(n_chunks):
        return None
    rng = np.random.default_rng([int(seed), int(round_index), RNG_LBFGS_WINDOW])
    return np.sort(rng.choice(int(n_chunks), int(window), replace=False))


def lbfgs_round(evaluate: Callable, whitener, theta0: np.ndarray, J0: float, g0: np.ndarray,
                *, iters: int, memory: int, tol: float, gtol: float,
                in_domain: Callable[[np.ndarray], bool], should_stop: Callable[[], bool],
                on_evaluation: Callable[[float, np.ndarray], None],
                on_iteration: Callable[[], None]) -> RoundResult:
    """Minimize ``J(φ)`` at a fixed whitener for at most ``iters`` L-BFGS iterations.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(theta) -> (J, ∇θJ)`` streams the evaluation set at ``theta``.
    whitener : Whitener
        ``W`` of the round.
    theta0, J0, g0 : ndarray (P,), float, ndarray (P,)
        The start and its (already computed) loss and gradient.
    iters, memory, tol, gtol
        L-BFGS-B's ``maxiter``, ``maxcor``, ``ftol`` and ``gtol``.
    in_domain : callable
        ``in_domain(theta)``: False for a trial point outside the model's domain, which is
        a failed trial like a non-finite one.
    should_stop : callable
        Asked before each new evaluation; True ends the round early (``complete=False``).
    on_evaluation : callable
        ``on_evaluation(J, ∇θJ)`` after each finite evaluation.
    on_iteration : callable
        Called after each L-BFGS iteration.

    A trial point where ``J`` or ``∇J`` is not finite (or outside the domain) is reported
    as a quadratic rising from the best point by ``NONFINITE_RISE · max(1, |J_best|)``:
    finite values the line search can interpolate, so it backs off.
    """
    W = whitener
    # L-BFGS runs on the displacement δ = φ − φ₀ (θ = θ₀ + W⁻¹δ), not on φ itself: a
    # parameter the data no longer move (a saturated unit's bias at 1e37) makes |φ₀| huge,
    # and W⁻¹φ then carries its round-off (1e37 · 1e-17) into every other coordinate
    delta0 = np.zeros_like(theta0)
    best = {"J": J0, "g": g0, "theta": theta0, "phi": delta0}
    nonfinite = 0

    def fun(delta):
        nonlocal nonfinite
        if not delta.any():  # L-BFGS starts at δ = 0: reuse the fused pass
            return J0, W.grad_phi(g0)
        if should_stop():
            raise Interrupted
        theta = theta0 + W.theta(delta)
        if in_domain(theta):
            J, g = evaluate(theta)
        else:
            J, g = math.nan, np.full_like(delta, np.nan)
        if not (math.isfinite(J) and np.all(np.isfinite(g))):
            nonfinite += 1
            rise = NONFINITE_RISE * max(1.0, abs(best["J"]))
            d = delta - best["phi"]
            return best["J"] + rise, 2.0 * rise * d / max(float(d @ d), 1e-300)
        if J < best["J"]:
            best.update(J=J, g=g, theta=theta, phi=delta.copy())
        on_evaluation(J, g)
        return J, W.grad_phi(g)

    complete, message = True, "interrupted"
    try:
        res = scipy.optimize.minimize(
            fun, delta0, jac=True, method="L-BFGS-B", callback=lambda *_: on_iteration(),
            options={"maxiter": iters, "maxcor": memory, "ftol": tol, "gtol": gtol})
        message = str(res.message)
    except Interrupted:
        complete = False
    return RoundResult(J=best["J"], grad=best["g"], theta=best["theta"], complete=complete,
                       status=message, nonfinite_trials=nonfinite)
