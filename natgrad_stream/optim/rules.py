"""Optimizers that step the whitened parameters φ (paper section 2.7, footnote 2).

Each optimizer is an ``(init, update, transport)`` triple over an explicit state: a small
dict of float64 arrays and scalars, checkpointed as is. As in optax, the functions are pure:
``update`` and ``transport`` return a new state and never modify the one they are given, so
the learner can keep the old state to undo a rejected step. The learner hands ``update``
``∇φJ = W⁻ᵀ∇θJ``; at a refresh of ``W`` it calls :meth:`Optimizer.transport` to carry the
state into the new coordinates:

- a *displacement* (momentum's velocity) maps with ``W_new W_old⁻¹``, so the motion it
  encodes in θ continues unchanged;
- a *gradient* (Adam's first moment) maps with ``W_new⁻ᵀ W_oldᵀ``, so it stays the
  gradient of the same function;
- a per-coordinate *second moment* (Adam's ``v``) has no exact image; we keep the diagonal
  of the mapped covariance, ``(C∘C) v`` with ``C = W_new⁻ᵀ W_oldᵀ``;
- counters (steps, samples) are coordinate-free and carried over.

Step sizes follow a schedule in samples ``t`` (rows seen including the current batch of
``b`` rows): ``"harmonic"`` ``η = lr·b/t`` (the Fisher-efficient ``1/t`` rate of natural
gradient learning: in whitened coordinates it averages the per-batch Newton targets, and
needs no tuning), ``"sqrt"`` ``η = lr·√(b/t)``, ``"constant"`` ``η = lr``.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from natgrad_stream.optim._step_kernels import diagonal_sgd_step

STEP_SCHEDULES = ("harmonic", "sqrt", "constant")


def step_size(lr: float, schedule: str, rows: int, samples: int) -> float:
    """The step size for a batch of ``rows`` ending at ``samples`` rows seen."""
    if schedule == "harmonic":
        return lr * rows / samples
    if schedule == "sqrt":
        return lr * math.sqrt(rows / samples)
    return lr


class Optimizer(abc.ABC):
    """Base class: subclasses define the state and the update of φ."""

    name = ""
    default_lr = 1.0
    default_schedule = "harmonic"
    #: The maps :meth:`transport` reads (``"vector"``, ``"covector"``); the learner builds
    #: only these (each a P × P product at a refresh of a full whitener) and passes None
    #: for the others.
    transport_maps: tuple[str, ...] = ()

    def __init__(self, *, lr: float | None = None, schedule: str | None = None):
        self.lr = self.default_lr if lr is None else float(lr)
        self.schedule = self.default_schedule if schedule is None else schedule
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if self.schedule not in STEP_SCHEDULES:
            raise ValueError(f"schedule must be one of {STEP_SCHEDULES}, got {schedule!r}")

    def config(self) -> dict:
        """JSON-ready options."""
        return {"name": self.name, "lr": self.lr, "schedule": self.schedule}

    def init(self, n_params: int) -> dict:
        """Fresh state for ``n_params`` parameters."""
        return {"steps": 0}

    @abc.abstractmethod
    def update(self, phi: np.ndarray, grad: np.ndarray, state: dict, *, rows: int,
               samples: int) -> tuple[np.ndarray, dict]:
        """``(new φ, new state)`` given ``∇φJ`` (mean over the batch); ``state`` is unchanged."""

    def transport(self, state: dict, vector_map: np.ndarray | None,
                  covector_map: np.ndarray | None) -> dict:
        """The state carried into new φ coordinates (see the module docstring); a map not
        named in :attr:`transport_maps` may be None.

        The base optimizer keeps only counters, which are coordinate-free.
        """
        return dict(state)


def _apply(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    return M * v if M.ndim == 1 else M @ v


class SGD(Optimizer):
    """Plain stochastic gradient descent on φ; with the default harmonic schedule this is
    online natural-gradient (Fisher scoring) learning with step ``b/t``.
    """

    name = "sgd"

    def update(self, phi, grad, state, *, rows, samples):
        eta = step_size(self.lr, self.schedule, rows, samples)
        return phi - eta * grad, {**state, "steps": state["steps"] + 1}

    def update_diagonal(self, phi, grad_theta, inverse, factor, state, *, rows, samples):
        """:meth:`update` on ``∇φJ = factor·W⁻¹∇θJ`` for a diagonal whitener (``inverse``:
        the diagonal of ``W⁻¹``), fused with ``θ' = W⁻¹φ'`` in one pass over P (no
        temporaries: the step of a wide model). Returns ``(φ', θ', new state, ‖W⁻¹∇θJ‖,
        whether θ' is finite)``; ``state`` is unchanged.
        """
        eta = step_size(self.lr, self.schedule, rows, samples)
        phi_new, theta_new = np.empty_like(phi), np.empty_like(phi)
        finite, sq = diagonal_sgd_step(phi, grad_theta, inverse, eta * factor, phi_new,
                                       theta_new)
        return (phi_new, theta_new, {**state, "steps": state["steps"] + 1},
                math.sqrt(sq), bool(finite))


class Momentum(SGD):
    """Heavy-ball momentum: ``v ← βv + (1−β)∇φJ``, ``φ ← φ − η v``."""

    name = "momentum"

    def __init__(self, *, lr=None, schedule=None, beta: float = 0.9):
        super().__init__(lr=lr, schedule=schedule)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)

    def config(self):
        return {**super().config(), "beta": self.beta}

    def init(self, n_params):
        return {"steps": 0, "velocity": np.zeros(n_params)}

    def update(self, phi, grad, state, *, rows, samples):
        v = state["velocity"] * self.beta + (1.0 - self.beta) * grad
        eta = step_size(self.lr, self.schedule, rows, samples)
        return phi - eta * v, {**state, "steps": state["steps"] + 1, "velocity": v}

    transport_maps = ("vector",)

    def transport(self, state, vector_map, covector_map):
        return {**state, "velocity": _apply(vector_map, state["velocity"])}


class Adam(Optimizer):
    """Adam on φ with bias-corrected moments (Kingma & Ba)."""

    name = "adam"
    default_lr = 0.05
    default_schedule = "sqrt"
    transport_maps = ("covector",)

    def __init__(self, *, lr=None, schedule=None, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__(lr=lr, schedule=schedule)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def config(self):
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def init(self, n_params):
        return {"steps": 0, "m": np.zeros(n_params), "v": np.zeros(n_params)}

    def update(self, phi, grad, state, *, rows, samples):
        k = state["steps"] + 1
        m = state["m"] * self.beta1 + (1 - self.beta1) * grad
        v = state["v"] * self.beta2 + (1 - self.beta2) * grad * grad
        mhat = m / (1 - self.beta1**k)
        vhat = v / (1 - self.beta2**k)
        eta = step_size(self.lr, self.schedule, rows, samples)
        return phi - eta * mhat / (np.sqrt(vhat) + self.eps), {**state, "steps": k, "m": m,
                                                                 "v": v}

    def transport(self, state, vector_map, covector_map):
        C2 = covector_map * covector_map
        return {**state, "m": _apply(covector_map, state["m"]), "v": _apply(C2, state["v"])}


OPTIMIZERS: dict[str, type[Optimizer]] = {c.name: c for c in (SGD, Momentum, Adam)}


def make_optimizer(name: str, **options) -> Optimizer:
    """Build an optimizer by name (``sgd``, ``momentum``, ``adam``)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        choices = sorted(OPTIMIZERS)
        raise ValueError(f"unknown optimizer {name!r}; choose one of {choices}") from None
    return cls(**{k: v for k, v in options.items() if v is not None})
