"""The model interface: parameter layout, fused batch statistics, evaluation.

A :class:`Model` is stateless: it maps ``(X, y, w, θ)`` to sums (loss, gradient, metric)
written into a preallocated :class:`Workspace`. It never reads data sources and keeps no
learning state, so one instance serves a learner, an evaluation, and Dask workers alike.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from natgrad_stream._jit import num_threads

#: Metric kinds a learner may request (paper eq. 30 and eq. 31).
METRICS = ("model", "empirical")
#: Metric structures (paper eq. 34 for the diagonal).
STRUCTURES = ("full", "diagonal")
#: Batches with at least this many rows use the parallel kernel variant.
PARALLEL_MIN_ROWS = 4096


@dataclass
class Workspace:
    """Preallocated outputs of :meth:`Model.accumulate` for one structure.

    Attributes
    ----------
    grad : ndarray, shape (P,), float64
        Sum over the batch of per-sample loss gradients.
    fisher : ndarray, shape (P, P) or (P,), float64
        Sum over the batch of per-sample metric contributions (full or diagonal).
    scratch : dict of ndarray
        Kernel scratch and per-thread accumulators.
    """

    grad: np.ndarray
    fisher: np.ndarray
    scratch: dict


def check_metric_structure(metric: str, structure: str) -> None:
    """Raise ``ValueError`` for an unknown metric kind or structure."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")


def as_float64_vector(a, name: str, n: int | None = None) -> np.ndarray:
    """Return ``a`` as a contiguous float64 vector, checking its length."""
    v = np.ascontiguousarray(a, dtype=np.float64)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        want = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{name} must have shape {want}, got {np.shape(a)}")
    return v


class Model(abc.ABC):
    """A differentiable objective ``J(θ) = ⟨loss(x, y; θ)⟩`` with a metric.

    Subclasses define the parameter layout and the fused kernels.
    """

    #: Registry name, e.g. ``"logistic"``.
    name: str = ""
    #: Whether the model reads targets ``y``.
    requires_targets: bool = True

    def __init__(self, n_features: int):
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)

    # -- parameter layout ---------------------------------------------------------
    @property
    @abc.abstractmethod
    def n_params(self) -> int:
        """Length ``P`` of the flat parameter vector θ."""

    #: Index of an intercept parameter (its score is the per-row weight times 1), which the
    #: whitener eliminates exactly before factoring; None when there is none.
    @property
    def intercept_index(self) -> int | None:
        """Index of the intercept in θ, or None."""
        return None

    def init_params(self) -> np.ndarray:
        """Initial θ, shape (P,): zeros unless a subclass knows better."""
        return np.zeros(self.n_params)

    @abc.abstractmethod
    def params_to_dict(self, theta: np.ndarray) -> dict:
        """Named, JSON-ready parameters (the ``params`` command's output)."""

    def config(self) -> dict:
        """JSON-ready constructor arguments; ``make_model(**config)`` rebuilds the model."""
        return {"name": self.name, "n_features": self.n_features}

    # -- batch statistics -----------------------------------------------------------
    def new_workspace(self, structure: str = "full", *, n_threads: int | None = None) -> Workspace:
        """Allocate the buffers :meth:`accumulate` writes into."""
        P = self.n_params
        fisher = np.zeros((P, P)) if structure == "full" else np.zeros(P)
        T = num_threads() if n_threads is None else int(n_threads)
        return Workspace(grad=np.zeros(P), fisher=fisher, scratch=self._scratch(structure, T))

    def _scratch(self, structure: str, n_threads: int) -> dict:
        return {}

    @abc.abstractmethod
    def accumulate(self, X, y, w, theta, *, metric: str | None, structure: str, ws: Workspace,
                   parallel: bool | None = None) -> tuple[float, float]:
        """One fused pass over a batch.

        Parameters
        ----------
        X : ndarray, shape (n, d), float32 or float64
        y : ndarray, shape (n,), float64, or None for unsupervised models
        w : ndarray, shape (n,), float64, or None for unit weights
        theta : ndarray, shape (P,), float64
        metric : {"model", "empirical"} or None
            Metric kind to accumulate into ``ws.fisher``; None skips it.
        structure : {"full", "diagonal"}
        ws : Workspace
            Outputs; ``ws.grad`` and ``ws.fisher`` are overwritten with batch sums.
        parallel : bool or None
            Force the serial or parallel kernel; None picks by batch size.

        Returns
        -------
        loss_sum, weight_sum : float
        """

    @abc.abstractmethod
    def scores(self, X, y, theta) -> np.ndarray:
        """Per-sample scores ``∂ log q / ∂θ``, shape (n, P)."""

    @abc.abstractmethod
    def model_fisher(self, X, theta, w=None) -> np.ndarray:
        """Closed-form model Fisher (eq. 30) averaged over the rows of ``X``, shape (P, P)."""

    # -- evaluation -------------------------------------------------------------------
    @abc.abstractmethod
    def evaluation_sums(self, X, y, theta) -> dict:
        """Mergeable sums over a batch (add them across batches)."""

    @abc.abstractmethod
    def evaluation_metrics(self, sums: dict) -> dict:
        """Final metrics from summed :meth:`evaluation_sums`; always includes ``n``."""

    def metric_matvec(self, X, y, w, theta, U: np.ndarray, *, metric: str) -> np.ndarray:
        """Batch-average metric times vectors, ``G U``, shape (P, k) for ``U`` (P, k).

        The default forms the closed-form model Fisher (O(n P²)); subclasses override with
        an O(n P k) product.
        """
        return self.model_fisher(self.check_X(X), theta, w) @ U

    def check_X(self, X: np.ndarray) -> np.ndarray:
        """Validate a feature batch: shape (n, n_features), float32/float64, C-contiguous."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        if X.dtype not in (np.float32, np.float64):
            raise TypeError(f"X must be float32 or float64, got {X.dtype}")
        return X if X.flags.c_contiguous else np.ascontiguousarray(X)

    def target_check(self):
        """A data check ``(name, block) -> (offset, message) | None`` for targets, or None."""
        return None

    def loss(self, X, y, theta, w=None) -> float:
        """Mean loss over a batch (convenience; uses :meth:`accumulate`)."""
        ws = self.new_workspace("diagonal", n_threads=1)
        loss, wsum = self.accumulate(X, y, w, theta, metric=None, structure="diagonal", ws=ws,
                                     parallel=False)
        return loss / wsum

    def use_parallel(self, n_rows: int, parallel: bool | None) -> bool:
        """Pick the kernel variant: parallel for large batches when threads are available."""
        if parallel is not None:
            return bool(parallel)
        return n_rows >= PARALLEL_MIN_ROWS and num_threads() > 1
