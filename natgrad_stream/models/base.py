"""The model interface: parameter layout, fused batch statistics, evaluation.

A :class:`Model` is stateless: it maps ``(X, y, w, θ)`` to sums (loss, gradient, metric)
written into a preallocated :class:`Workspace`. It never reads data sources and keeps no
learning state, so one instance serves a learner, an evaluation, and Dask workers alike.
"""

from __future__ import annotations

import abc
import mmap
from dataclasses import dataclass

import numpy as np

from natgrad_stream._constants import SPARSE_DENSIFY_MAX_BYTES, WIDE_METRIC_PARAMS
from natgrad_stream._jit import num_threads
from natgrad_stream.data.sparse import SparseRows, as_sparse_rows, is_sparse

#: Metric kinds a learner may request. ``model``: the Fisher information over the model
#: (eq. 30/41) in closed form; ``monte-carlo``: the same by sampling targets from the model;
#: ``empirical``: the Fisher over the data (eq. 31); ``loss-gradient``: ⟨∇l ∇lᵀ⟩ for any loss
#: (eq. 39; equal to ``empirical`` when the loss is −log q); ``energy``: ⟨∂E ∂Eᵀ⟩ for
#: unnormalized models (eq. 33); ``gauss-newton``: the Fisher of an L2 loss read as a
#: conditional Gaussian, ⟨JᵀJ⟩ (eq. 40–41); ``amari``: the WᵀW metric of a square matrix
#: parameter (eq. 43); ``kfac``: a Kronecker-factored Gauss–Newton metric (the mlp's L-BFGS
#: rounds). Each model lists the kinds it supports in :attr:`Model.metrics`.
METRICS = ("model", "empirical", "monte-carlo", "loss-gradient", "energy", "gauss-newton",
           "amari", "kfac")
#: Metric structures: full, diagonal (eq. 34), block-diagonal over parameter groups.
STRUCTURES = ("full", "diagonal", "block")
#: Batches with at least this many rows use the parallel kernel variant.
PARALLEL_MIN_ROWS = 4096
#: A CSR batch takes the parallel kernel (when :meth:`Model.use_parallel` allows it) from
#: this many non-zeros per thread on: below, starting threads and merging their buffers
#: (O(non-zeros), see ``_sparse_kernels``) costs more than the rows' work saves. On a
#: busy 2-core machine a parallel region waits for a core: a 65,536-row flights batch
#: (393k non-zeros) took 25 ms in parallel and 5 ms serially (load 4), so the serial
#: kernel (about 80M non-zeros/s) keeps every batch below a million per thread.
SPARSE_PARALLEL_MIN_NNZ_PER_THREAD = 1 << 20


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
    fisher_zero : bool
        Whether ``fisher`` is known to hold zeros (the last :meth:`Model.accumulate` asked
        for no metric): the next one without a metric need not clear it again (a (P,) pass
        a batch saved for a wide model, whose metric most batches skip).
    """

    grad: np.ndarray
    fisher: np.ndarray
    scratch: dict
    fisher_zero: bool = False

    def release_metric(self) -> None:
        """Give the pages of a wide model's batch-metric buffer back to the OS; its values
        become zeros (:meth:`Model.accumulate` zeroes it first anyway). Between the batch
        folding into the running metric and the next batch, a P × P buffer nobody reads
        need not be resident: a re-whitening's peak memory (issue 18) is one P × P lower.
        A no-op for a buffer not allocated by :func:`metric_buffer`.
        """
        mapping = self.scratch.get(_METRIC_MAPPING)
        if mapping is not None:
            mapping.madvise(mmap.MADV_DONTNEED)


_METRIC_MAPPING = "metric_mapping"


def metric_buffer(shape: tuple, scratch: dict) -> np.ndarray:
    """Zeros of ``shape`` (float64) for a batch metric: for a full metric of a wide model
    (at least ``WIDE_METRIC_PARAMS`` parameters) in an anonymous memory map, whose pages
    :meth:`Workspace.release_metric` can drop (recorded in ``scratch``); else NumPy's.
    """
    if len(shape) != 2 or shape[0] < WIDE_METRIC_PARAMS or not hasattr(mmap, "MADV_DONTNEED") \
            or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros(shape)
    # private and anonymous: zero pages until written, and zero-filled again (and freed)
    # after MADV_DONTNEED (a shared mapping would keep its pages)
    mapping = mmap.mmap(-1, int(np.prod(shape)) * 8, flags=mmap.MAP_PRIVATE)
    scratch[_METRIC_MAPPING] = mapping
    return np.frombuffer(mapping, dtype=np.float64).reshape(shape)


def check_metric_structure(metric: str, structure: str, model: Model | None = None) -> None:
    """Raise ``ValueError`` for an unknown metric kind or structure, or one ``model`` lacks."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if model is not None and metric not in model.metrics:
        raise ValueError(f"model {model.name!r} does not support metric {metric!r}; "
                         f"it supports {', '.join(model.metrics)}")


def check_monte_carlo(rng, mc_samples) -> int:
    """Validate the Monte Carlo metric's arguments; returns the sample count."""
    if rng is None:
        raise ValueError("metric 'monte-carlo' needs a random generator (rng=...)")
    if int(mc_samples) < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    return int(mc_samples)


def restrict_to_structure(G: np.ndarray, structure: str, bounds: np.ndarray) -> np.ndarray:
    """A full ``(P, P)`` metric restricted to ``structure`` (a new array)."""
    if structure == "full":
        return G.copy()
    if structure == "diagonal":
        return np.diag(G).copy()
    out = np.zeros_like(G)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out[a:b, a:b] = G[a:b, a:b]
    return out


def check_sparse_rows(X, n_features: int) -> SparseRows:
    """``X`` (a :class:`SparseRows` or SciPy sparse matrix) as canonical CSR rows of
    ``n_features`` columns, checked so that no kernel reads or writes out of bounds: the
    shape, ``indptr`` non-decreasing within the arrays, every column index in range.
    """
    from natgrad_stream.models._sparse_kernels import first_bad_index, first_decrease

    rows = as_sparse_rows(X)
    if rows.shape[1] != n_features:
        raise ValueError(f"X must have shape (n, {n_features}), got {rows.shape} (sparse)")
    if rows.checked:  # a reader's batch, checked as it was read
        return rows
    if (rows.data.dtype not in (np.float32, np.float64) or rows.indices.dtype != np.int32
            or rows.indptr.dtype != np.int64
            or not all(a.flags.c_contiguous for a in (rows.data, rows.indices, rows.indptr))):
        rows = SparseRows.from_arrays(rows.data, rows.indices, rows.indptr, rows.shape[1])
    ptr = rows.indptr
    if ptr.ndim != 1 or ptr.shape[0] < 1:
        raise ValueError(f"sparse X: indptr must have shape (n + 1,), got {ptr.shape}")
    bad = int(first_decrease(ptr))
    if bad >= 0:
        raise ValueError(f"sparse X: indptr decreases at row {bad} ({ptr[bad]} > {ptr[bad + 1]})")
    a, b = int(ptr[0]), int(ptr[-1])
    if a < 0 or b > min(rows.data.shape[0], rows.indices.shape[0]):
        raise ValueError(f"sparse X: indptr spans entries {a}:{b}, outside the "
                         f"{rows.data.shape[0]} values and {rows.indices.shape[0]} indices")
    k = int(first_bad_index(rows.indices, a, b, n_features))
    if k >= 0:
        row = int(np.searchsorted(ptr, k, side="right")) - 1
        raise ValueError(f"sparse X: row {row} has column index {int(rows.indices[k])}, "
                         f"outside 0 … {n_features - 1}")
    return rows


def sparse_scratch(ws: Workspace, P: int, row_length: int) -> dict:
    """Per-thread buffers of a CSR kernel (allocated at first use, in ``ws.scratch``):
    ``grad_t`` (T, P), ``fdiag_t`` (T, P) for a diagonal workspace (else (T, 1)) and
    ``xrow_t`` (T, ``row_length``). The kernels leave them all zeros after every batch
    (they clear only what they touched), so nothing here is cleared per batch.
    """
    sp = ws.scratch.get("sparse")
    if sp is None:
        T = len(ws.scratch["grad_t"]) if "grad_t" in ws.scratch else num_threads()
        sp = ws.scratch["sparse"] = {
            "grad_t": np.zeros((T, P)),
            "fdiag_t": np.zeros((T, P) if ws.fisher.ndim == 1 else (T, 1)),
            "xrow_t": np.zeros((T, row_length)),
        }
    return sp



def use_sparse_parallel(model: Model, X: SparseRows, structure: str, metric: str | None,
                        parallel: bool | None, sp: dict) -> bool:
    """Pick a CSR kernel's variant. A full or block metric of a wide model (P at least
    ``WIDE_METRIC_PARAMS``) is always serial (no per-thread P × P copies); otherwise
    ``parallel`` if given, else parallel when :meth:`Model.use_parallel` says so for the
    rows *and* the batch holds ``SPARSE_PARALLEL_MIN_NNZ_PER_THREAD`` non-zeros per thread.
    """
    if metric is not None and structure != "diagonal" and model.n_params >= WIDE_METRIC_PARAMS:
        return False
    if parallel is not None:
        return bool(parallel)
    T = len(sp["grad_t"])
    return model.use_parallel(X.shape[0], None) and \
        X.nnz >= SPARSE_PARALLEL_MIN_NNZ_PER_THREAD * T


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
    #: Metric kinds this model supports (see :data:`METRICS`).
    metrics: tuple[str, ...] = ("model", "empirical", "loss-gradient", "monte-carlo")
    #: The metric a learner uses when none is asked for.
    default_metric: str = "model"
    #: Learner options this model recommends (e.g. a constant step and strong damping for a
    #: nonconvex model); they apply where the user leaves an option unset.
    learner_defaults: dict = {}  # noqa: RUF012 (read-only class constant)
    #: Whether Fisher scoring (passes after the first, ``refine="scoring"``) converges to the
    #: optimum: the model metric is the Hessian at the optimum (GLMs with their canonical
    #: link). A fit left without ``epochs`` then runs until its stopping rule holds.
    scoring_converges: bool = False
    #: Whether :meth:`metric_matvec` costs O(n·P·k) (the GLMs, softmax) rather than forming
    #: the P × P metric: ``--structure auto`` then takes the low-rank structure, whose
    #: sketch is one such product a batch, where it would take the diagonal on dense data.
    fast_metric_matvec: bool = False
    #: Metric kinds this model computes in closed form from θ alone (no sampling noise over
    #: rows): the learner does not shrink their running estimate toward the diagonal.
    exact_metrics: tuple[str, ...] = ()
    #: Whether :meth:`accumulate` and the other batch methods run CSR kernels on sparse
    #: ``X``; a model without them gets sparse batches densified (:meth:`check_X`).
    sparse_kernels: bool = False
    #: Pass cap of a fit left without ``epochs`` (None:
    #: :data:`~natgrad_stream._constants.AUTO_MAX_EPOCHS`), for families whose later passes
    #: need more of them.
    auto_max_epochs: int | None = None
    #: Metric of the L-BFGS rounds (the hand-over and ``optimizer="lbfgs"``) where the user
    #: sets no ``metric`` (None: the learner's metric).
    round_metric: str | None = None
    #: L-BFGS options of the hand-over (``refine="lbfgs"``) for this family, in place of the
    #: options' defaults (e.g. ``{"lbfgs_iters": 500}``).
    handover_defaults: dict = {}
    #: Whether a round's relative improvement (the ``lbfgs_tol`` rule) is measured against
    #: ``max(|J₀|, |J|, |J at the first round's start|)`` instead of ``max(|J₀|, |J|, 1)``:
    #: for a loss whose scale is the data's (a least-squares fit: the target's units
    #: squared), so the rule does not depend on the units.
    round_tol_from_start: bool = False

    def auto_pass_cap(self, n_rows: int) -> int | None:
        """Pass cap of a fit left without ``epochs`` over ``n_rows`` rows (None: the
        learner's :data:`~natgrad_stream._constants.AUTO_MAX_EPOCHS`); default
        :attr:`auto_max_epochs` whatever the row count.
        """
        return self.auto_max_epochs

    def auto_restarts(self, n_rows: int) -> int:
        """Fits from different random starts of a default fit (``n_init="auto"``) over
        ``n_rows`` rows: 1 (the default) for a model whose start draws nothing or whose
        objective has one optimum.
        """
        return 1

    def restart_screen(self, n_rows: int) -> tuple[int, int] | None:
        """How a default fit's restarts over ``n_rows`` rows are raced: ``(rounds, kept)``,
        every start fitted up to ``rounds`` complete L-BFGS rounds, then only the ``kept``
        lowest continued to their end; None (the default): every start is a whole fit.
        """
        return None

    def restart_model(self, k: int) -> Model:
        """The model of the ``k``-th restart (``k = 0``: this one). Only models that draw a
        random start (:meth:`auto_restarts` above 1) have others.
        """
        if k == 0:
            return self
        raise ValueError(f"model {self.name!r} draws no random start: n_init must be 1")

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

    @property
    def center_indices(self) -> tuple[int, ...]:
        """Intercept-like parameters the whitener eliminates exactly (see ``whiten``)."""
        k = self.intercept_index
        return () if k is None else (k,)

    @property
    def penalized_indices(self) -> tuple[int, ...]:
        """Coordinates of θ the ``l2`` penalty ``λ/2·‖θ_S‖²`` applies to
        (:class:`~natgrad_stream.models.penalty.L2Penalty`): every parameter but the
        intercepts (:attr:`center_indices`) unless a model says otherwise; empty when the
        penalty has no meaning for the model (the learner then refuses ``l2 > 0``).
        """
        skip = set(self.center_indices)
        return tuple(j for j in range(self.n_params) if j not in skip)

    def param_groups(self) -> list[tuple[str, int, int]]:
        """Contiguous parameter groups ``(name, start, stop)`` for the block structure.

        The default is one group (block = full); models override with their natural split,
        e.g. mean vs covariance, or one group per layer.
        """
        return [("theta", 0, self.n_params)]

    def param_bounds(self) -> np.ndarray:
        """Group boundaries ``[0, …, P]`` of :meth:`param_groups`, int64 (computed once; the
        layout is fixed at construction).
        """
        bounds = self.__dict__.get("_param_bounds")
        if bounds is None:
            bounds = self.__dict__["_param_bounds"] = self._compute_param_bounds()
        return bounds

    def _compute_param_bounds(self) -> np.ndarray:
        groups = self.param_groups()
        bounds = np.array([g[1] for g in groups] + [groups[-1][2]], dtype=np.int64)
        if bounds[0] != 0 or bounds[-1] != self.n_params or np.any(np.diff(bounds) <= 0):
            raise ValueError(f"param_groups of {self.name!r} must tile 0..{self.n_params}")
        return bounds

    def start_params(self, theta0=None) -> np.ndarray:
        """A run's starting θ: a float64 copy of ``theta0``, or :meth:`init_params` if None."""
        theta = self.init_params() if theta0 is None else np.array(theta0, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta0 must have shape ({self.n_params},), got {theta.shape}")
        return theta

    def init_params(self) -> np.ndarray:
        """Initial θ, shape (P,): zeros unless a subclass knows better."""
        return np.zeros(self.n_params)

    def check_params(self, theta: np.ndarray) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` when θ is outside the model's domain (e.g. a covariance that
        is not positive definite); the learner then rejects the step and keeps its state.
        """

    def initial_params(self, X, y, w) -> np.ndarray | None:
        """A data-informed starting θ from the first batch, or None to keep
        :meth:`init_params`.

        The learner calls it once, on the first batch of a run started without ``theta0``.
        GLMs set the intercept to the link of the target mean, so that the first natural
        steps start near the data instead of overshooting from θ = 0 (a log link would).
        """
        return None

    @abc.abstractmethod
    def params_to_dict(self, theta: np.ndarray) -> dict:
        """Named, JSON-ready parameters (the ``params`` command's output)."""

    @classmethod
    def options_from_data(cls, group, source, options: dict) -> dict:
        """Constructor options read from the training data (used by ``natgrad-stream fit``).

        Parameters
        ----------
        group : zarr.Group or None
            The data's Zarr group, when the data is one (attributes, extra arrays).
        source : Source
            The opened data source (``n_rows``, ``n_features``, the target array).
        options : dict
            Model options given on the command line (e.g. ``hidden``, ``classes``,
            ``mixing``), None where not given; a model takes those it knows.
        """
        return {}

    def config(self) -> dict:
        """JSON-ready constructor arguments; ``make_model(**config)`` rebuilds the model."""
        return {"name": self.name, "n_features": self.n_features}

    @classmethod
    def from_config(cls, n_features: int, **config) -> Model:
        """The model of a recorded :meth:`config` (without ``name``); subclasses override
        to read configs recorded by older versions.
        """
        return cls(n_features, **config)

    # -- batch statistics -----------------------------------------------------------
    def new_workspace(self, structure: str = "full", *, n_threads: int | None = None) -> Workspace:
        """Allocate the buffers :meth:`accumulate` writes into."""
        P = self.n_params
        T = num_threads() if n_threads is None else int(n_threads)
        scratch = self._scratch(structure, T)
        fisher = np.zeros(P) if structure == "diagonal" else metric_buffer((P, P), scratch)
        return Workspace(grad=np.zeros(P), fisher=fisher, scratch=scratch)

    def _scratch(self, structure: str, n_threads: int) -> dict:
        return {}

    @abc.abstractmethod
    def accumulate(self, X, y, w, theta, *, metric: str | None, structure: str, ws: Workspace,
                   parallel: bool | None = None, rng: np.random.Generator | None = None,
                   mc_samples: int = 1) -> tuple[float, float]:
        """One fused pass over a batch.

        Parameters
        ----------
        X : ndarray, shape (n, d), float32 or float64
        y : ndarray, shape (n,), float64, or None for unsupervised models
        w : ndarray, shape (n,), float64, or None for unit weights
        theta : ndarray, shape (P,), float64
        metric : str or None
            Metric kind (one of :attr:`metrics`) to accumulate into ``ws.fisher``; None
            skips it.
        structure : {"full", "diagonal", "block"}
        ws : Workspace
            Outputs; ``ws.grad`` and ``ws.fisher`` are overwritten with batch sums.
        parallel : bool or None
            Force the serial or parallel kernel; None picks by batch size.
        rng : numpy.random.Generator, optional
            Source of the targets sampled for ``metric="monte-carlo"``.
        mc_samples : int
            Targets sampled per row for ``metric="monte-carlo"``.

        Returns
        -------
        loss_sum, weight_sum : float
        """

    @abc.abstractmethod
    def scores(self, X, y, theta) -> np.ndarray:
        """Per-sample scores ``∂ log q / ∂θ``, shape (n, P)."""

    def sample_targets(self, X, theta, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` targets per row drawn from ``q(y | x; θ)``, shape (k, n) (Monte Carlo)."""
        raise ValueError(f"model {self.name!r} cannot sample targets (no monte-carlo metric)")

    def monte_carlo_factors(self, X, theta, rng: np.random.Generator, k: int) -> np.ndarray:
        """Factors of the Monte Carlo model Fisher (eq. 30/41), shape (n, k, P).

        ``G_i ≈ (1/k) Σ_j s(x_i, y_ij) s(x_i, y_ij)ᵀ`` with ``y_ij ~ q(y | x_i; θ)``: an
        unbiased estimate of the model Fisher for any model that can sample its targets.
        """
        k = check_monte_carlo(rng, k)
        ys = self.sample_targets(X, theta, rng, k)
        U = np.empty((X.shape[0], int(k), self.n_params))
        for j in range(int(k)):
            U[:, j, :] = self.scores(X, ys[j], theta)
        U /= np.sqrt(k)
        return U

    @abc.abstractmethod
    def model_fisher(self, X, theta, w=None) -> np.ndarray:
        """Closed-form model Fisher (eq. 30) averaged over the rows of ``X``, shape (P, P)."""

    # -- evaluation -------------------------------------------------------------------
    #: Whether :meth:`evaluation_sums` accepts sample weights (``w=``).
    supports_weighted_evaluation: bool = False

    @abc.abstractmethod
    def evaluation_sums(self, X, y, theta) -> dict:
        """Mergeable sums over a batch (add them across batches)."""

    @abc.abstractmethod
    def evaluation_metrics(self, sums: dict) -> dict:
        """Final metrics from summed :meth:`evaluation_sums`; always includes ``n``."""

    def batch_metric(self, X, y, theta, w=None, *, metric: str, rng=None,
                     mc_samples: int = 1) -> np.ndarray:
        """The full metric of kind ``metric`` averaged over a batch, shape (P, P)."""
        ws = self.new_workspace("full", n_threads=1)
        _, wsum = self.accumulate(X, y, w, theta, metric=metric, structure="full", ws=ws,
                                  parallel=False, rng=rng, mc_samples=mc_samples)
        return ws.fisher / wsum

    def curvature_power_iteration(self, X, y, w, theta, inverse, penalty, v, iterations, *,
                                  metric: str) -> float | None:
        """ρ, the top eigenvalue of the batch's penalized metric seen through a diagonal
        whitener (``inverse``: the diagonal of ``W⁻¹``), by ``iterations`` rounds of power
        iteration from ``v`` (P,), in one compiled call; None where the model has none
        for these arguments (the learner then runs its generic loop over
        :meth:`metric_matvec`, :meth:`~natgrad_stream.training.learner.
        NaturalGradientLearner._power_iteration`).
        """
        return None

    def metric_matvec(self, X, y, w, theta, U: np.ndarray, *, metric: str) -> np.ndarray:
        """Batch-average metric times vectors, ``G U``, shape (P, k) for ``U`` (P, k).

        The default forms the closed-form model Fisher (O(n P²)); subclasses override with
        an O(n P k) product.
        """
        return self.model_fisher(self.check_X(X), theta, w) @ U

    def check_request(self, metric: str | None, structure: str, ws: Workspace) -> None:
        """Raise ``ValueError`` for a metric kind this model lacks, an unknown structure, or
        a workspace allocated for another structure (:meth:`accumulate` calls it).
        """
        if metric is None:
            if structure not in STRUCTURES:
                raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        else:
            check_metric_structure(metric, structure, self)
        P = self.n_params
        need = (P,) if structure == "diagonal" else (P, P)
        if ws.fisher.shape != need or ws.grad.shape != (P,):
            raise ValueError(f"workspace does not fit structure {structure!r} of this model "
                             f"(metric shape {ws.fisher.shape}, expected {need}); use "
                             f"new_workspace({structure!r})")

    def check_X(self, X):
        """Validate a feature batch: shape (n, n_features), float32/float64, C-contiguous.

        Sparse ``X`` (:class:`~natgrad_stream.data.sparse.SparseRows` or SciPy) comes back
        as checked canonical CSR rows for a model with :attr:`sparse_kernels`, else
        densified (:meth:`dense_batch`).
        """
        if is_sparse(X):
            return check_sparse_rows(X, self.n_features) if self.sparse_kernels else \
                self.dense_batch(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        if X.dtype not in (np.float32, np.float64):
            raise TypeError(f"X must be float32 or float64, got {X.dtype}")
        return X if X.flags.c_contiguous else np.ascontiguousarray(X)

    def dense_batch(self, X):
        """``X`` as dense rows: sparse rows densified when the dense batch takes at most
        ``SPARSE_DENSIFY_MAX_BYTES`` (else ``ValueError`` with the figures); dense ``X``
        is returned as it is (for models without CSR kernels).
        """
        if not is_sparse(X):
            return X
        rows = check_sparse_rows(X, self.n_features)
        n, d = rows.shape
        nbytes = n * d * rows.dtype.itemsize
        if nbytes > SPARSE_DENSIFY_MAX_BYTES:
            raise ValueError(
                f"model {self.name!r} has no sparse kernels; a batch of {n:,} rows × {d:,} "
                f"features would take {nbytes / 2**30:.2f} GiB dense (at most "
                f"{SPARSE_DENSIFY_MAX_BYTES >> 20} MiB); use a GLM (logistic, linear, "
                "poisson, softmax) or a smaller batch_size")
        return rows.toarray()

    def target_check(self):
        """A data check ``(name, block) -> (offset, message) | None`` for targets, or None."""
        return None

    def feature_check(self):
        """A data check for feature blocks (e.g. binary units), or None; the reader runs it
        on every chunk, so a bad value is reported with its array, chunk, row and column.
        """
        return None

    def data_checks(self) -> dict:
        """Keyword arguments for ``Source.batches``: the model's target and feature checks."""
        return {"checks": [c for c in (self.target_check(),) if c is not None],
                "x_checks": [c for c in (self.feature_check(),) if c is not None]}

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
