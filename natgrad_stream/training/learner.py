"""The learner: one training loop, two strategies; holds no numerics of its own.

The loop (:meth:`NaturalGradientLearner.fit`) opens and checks the source, pins the BLAS
pools, runs the strategy, reports to callbacks and builds the summary. Its shared parts
are the re-whitening with fallback to the last good whitener (:meth:`refresh`), the typed
state (:class:`~natgrad_stream.training.state.LearnerState`) behind checkpoints and
rejected steps, and the options (:mod:`natgrad_stream.training.options`).

Strategies (chosen by the ``optimizer`` option):

*streaming* (``sgd``, ``momentum``, ``adam``): one step per batch ``(X, y, w)`` at θ:

1. one fused kernel pass gives the loss, ``∇θJ`` and the batch's metric sum;
2. the running metric ``G`` folds the batch in (time constant in samples);
3. the schedule decides whether to refresh ``W = G^½`` at ``θ_fixed = θ``; on a refresh the
   optimizer's state is carried into the new coordinates and ``φ = W θ``;
4. the optimizer steps ``φ`` with ``∇φJ = W⁻ᵀ∇θJ`` and ``θ = W⁻¹φ``.

*L-BFGS* (``lbfgs``, paper section 2.7): rounds of

1. one streaming pass over the evaluation set (all the data, or a *window* of chunks) at
   ``θ`` gives ``J``, ``∇θJ`` and the metric sum ``G``, fused;
2. ``W = whiten(G)`` re-whitens at ``θ_fixed = θ``;
3. L-BFGS minimizes ``J(φ)`` from ``φ₀ = Wθ`` for at most ``lbfgs_iters`` iterations
   (:func:`natgrad_stream.optim.lbfgs.lbfgs_round`), every evaluation a pass at
   ``θ = W⁻¹φ``; the best point evaluated becomes ``θ``.

Rounds stop once a round that descended improves ``J`` by at most ``lbfgs_tol`` relative
or a round ends with ``max |∇φJ| ≤ lbfgs_gtol`` (a scale-free, natural-gradient
tolerance), or after ``lbfgs_rounds`` rounds; a round that found no point below its start
(its first line search failed) is a *stall*, which ends the fit unconverged. L-BFGS's
curvature memory is dropped at each re-whitening, so a round boundary is an exact restart
point. Passes stream chunks in order without shuffling;
in window mode each round draws its own ``window`` chunks from ``(seed, round)`` and all
rounds run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
import warnings

import numpy as np

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream._constants import (
    AUTO_MAX_EPOCHS,
    CURVATURE_POWER_ITERATIONS,
    DIVERGENCE_MAX_ROLLBACKS,
    DIVERGENCE_STEP_CUT,
    DIVERGENCE_WINDOW_BATCHES,
    DRIFT_ALARM_MIN_RISE,
    DRIFT_ALARM_MIN_WINDOWS,
    DRIFT_ALARM_SIGMAS,
    DRIFT_SETTLE_HALF_LIVES,
    LBFGS_TOL,
    METRIC_WARMUP_ROWS_PER_PARAM,
    NEWTON_CG_TOL,
    REFINE_ARMIJO,
    REFINE_BATCH_ROWS,
    REFINE_MAX_HALVINGS,
    REFINE_RANK_FACTOR,
    REFINE_ROUNDOFF,
    REFINE_SHRINK,
    RNG_LEARNER,
    UNBOUNDED_DECREMENT,
    UNBOUNDED_PASSES,
    UNIDENTIFIED_NAMED,
    WIDE_METRIC_PARAMS,
)
from natgrad_stream.data import ArraySource, Cursor, as_source
from natgrad_stream.data.follow import FollowSource
from natgrad_stream.data.sparse import SparseRows, as_sparse_rows, is_sparse
from natgrad_stream.data.sparse_source import SparseSource
from natgrad_stream.data.window import (
    chunk_window,
    compare_recorded,
    locate_in_full_data,
    row_prefix,
)
from natgrad_stream.errors import (
    CheckpointError,
    DataError,
    DistributedError,
    NumericalError,
    OptionError,
    WhiteningError,
)
from natgrad_stream.geometry.kronecker import KroneckerMetric, shrink_factors, whiten_kronecker
from natgrad_stream.geometry.lowrank import METHODS as LOWRANK_METHODS
from natgrad_stream.geometry.lowrank import SketchedMetric, whiten_lowrank, widen_test_matrix
from natgrad_stream.geometry.schedule import RefreshSchedule
from natgrad_stream.geometry.shrinkage import add_evidence_prior, shrink
from natgrad_stream.geometry.whitening import Whitener, whiten
from natgrad_stream.models import Model, model_from_config
from natgrad_stream.models.base import check_metric_structure
from natgrad_stream.models.penalty import L2Penalty
from natgrad_stream.optim.lbfgs import lbfgs_round, window_chunks
from natgrad_stream.optim.newton_cg import (
    CG_MAX_ITERATIONS,
    CG_MAX_ITERATIONS_LIMIT,
    arrow_preconditioner,
    lowrank_preconditioner,
    newton_direction,
)
from natgrad_stream.optim.rules import SGD, make_optimizer, step_size
from natgrad_stream.training import options as opts
from natgrad_stream.training.callbacks import FitLog
from natgrad_stream.training.events import FitResult, LBFGSResult, StepInfo
from natgrad_stream.training.restarts import planned_rows, restart_count, run_restarts
from natgrad_stream.training.state import LearnerState

#: Keys of the effective options shown under ``"optimizer"`` in :meth:`options` (the
#: layout of ``run.json`` and the log's start record), by strategy.
#: L-BFGS options a streaming learner's hand-over (``refine="lbfgs"``) reads, at their
#: defaults.
_HANDOVER_OPTIONS = ("lbfgs_iters", "lbfgs_tol", "lbfgs_gtol", "lbfgs_memory", "window")
_LBFGS_KEYS = ("lbfgs_rounds", "lbfgs_iters", "window", "lbfgs_tol", "lbfgs_gtol",
               "lbfgs_memory")


log = logging.getLogger("natgrad_stream")
#: ``record.natgrad_event`` of the warning logged when a cap ends a fit before its stopping
#: rule held (callers that stop early on purpose, like the demo, filter it out).
UNCONVERGED = "unconverged"
#: ``record.natgrad_event`` of the note that a converged, unpenalized fit's coefficients
#: are not identified along some directions.
UNIDENTIFIED = "unidentified"


class _DropUnconvergedNote(logging.Filter):
    def filter(self, record) -> bool:
        return getattr(record, "natgrad_event", None) not in (UNCONVERGED, UNIDENTIFIED)


def _refine_tol(lr) -> float:
    """The decrement tolerance of the passes after the first, relative to |J|: ``tol``,
    else round-off (scoring) or :data:`NEWTON_CG_TOL` (newton-cg).
    """
    default = NEWTON_CG_TOL if lr.refine == "newton-cg" else REFINE_ROUNDOFF
    return max(lr.tol if lr.tol is not None else default, REFINE_ROUNDOFF)


def batch_filling_reads(source, batch_size: int) -> int:
    """Chunks per read of a streaming pass: as many as a batch of ``batch_size`` rows
    needs (batches never straddle reads), at least 2, so the store's chunking does not set
    the batch size. With the old fixed 2, a store in 100-row chunks gave batches of at most
    200 rows where the same rows in memory gave ``batch_size``: the mlp's first pass on 442
    diabetes rows took 3 steps instead of one (in memory, 20 fits with ``batch_size=100``
    ended at a median training loss 0.0444, 60 with one batch at 0.0399). The read budget
    still lowers it (:func:`~natgrad_stream.data.budget.plan_reads`). A followed store
    keeps 2 (its reads wait for committed chunks: follow mode learns rows as they come).
    """
    chunk_rows = getattr(source, "chunk_rows", None)
    if not chunk_rows or isinstance(source, FollowSource):
        return 2
    return max(2, -(-int(batch_size) // int(chunk_rows)))


def _rereadable(source) -> bool:
    """Whether ``source`` can be streamed again (passes after the first, L-BFGS): arrays
    and stores, dense or sparse; not a one-shot iterator.
    """
    return isinstance(source, ArraySource | SparseSource)


@contextlib.contextmanager
def pass_cap_notes_dropped():
    """Within the block, the learner does not log its 'stopped by the pass cap' line: for
    callers that cap a fit on purpose and say themselves how it ended (the demo measures
    its one pass's gap; the estimators run one pass at a time and warn once).
    """
    drop = _DropUnconvergedNote()  # (the estimators' one-pass-at-a-time fits drop both)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


class _StateField:
    """A learner attribute that reads and writes a field of ``learner.state``."""

    def __init__(self, field_name: str):
        self.field = field_name

    def __set_name__(self, owner, name):
        self.__doc__ = f"``state.{self.field}`` (see :class:`LearnerState`)."

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.state, self.field)

    def __set__(self, obj, value):
        setattr(obj.state, self.field, value)


class NaturalGradientLearner:
    """Learn θ by natural-gradient steps in a periodically re-whitened space φ = Wθ.

    Parameters
    ----------
    model : Model
    **options
        Keyword options of :data:`natgrad_stream.training.options.OPTIONS` (group
        ``learner``): ``optimizer`` (``sgd``, ``momentum``, ``adam`` stream; ``lbfgs``
        runs rounds of L-BFGS), ``metric`` (eq. 30, 31, 33, 39–41, 43; default the
        model's), ``structure`` (``full``, ``diagonal`` eq. 34, ``block``, ``lowrank``:
        the diagonal plus a Nyström sketch of ``rank`` columns,
        :mod:`natgrad_stream.geometry.lowrank`; ``kronecker``: softmax's K-FAC factors,
        :mod:`natgrad_stream.geometry.kronecker`), ``rank``,
        ``mc_samples``, ``whitening`` (``eigh``, ``ridge`` eq. 36, ``robust`` eq. 35),
        ``damping``, ``floor``, ``l2`` (λ: minimize the mean loss + λ/2·‖θ_S‖² over the
        model's :attr:`~natgrad_stream.models.Model.penalized_indices`, intercepts left
        out; :attr:`penalty`), ``batch_size``, ``seed``, ``blas_threads``; streaming:
        ``lr``, ``step_schedule``, ``rewhiten``, ``half_life``, ``fisher_every``,
        ``average``, ``drift_probes``, ``tol``; L-BFGS: ``lbfgs_rounds``, ``lbfgs_iters``,
        ``lbfgs_tol``, ``lbfgs_gtol``, ``lbfgs_memory``, ``window`` (the keywords before
        one name per option, ``decrement_tol``, ``rounds``, ``iters``, ``gtol`` and
        ``memory``, still work with a DeprecationWarning). Options left unset take the model's
        :attr:`~natgrad_stream.models.Model.learner_defaults`, then the optimizer's
        default, then the table's; :attr:`effective_options` holds the values used.

    Examples
    --------
    >>> from natgrad_stream.models import make_model
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 3)) * [1.0, 10.0, 100.0]
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-X @ [1.0, 0.1, 0.01]))).astype(float)
    >>> learner = NaturalGradientLearner(make_model("logistic", 3)).fit((X, y), epochs=2)
    >>> learner.theta.shape
    (4,)
    """

    @property
    def theta(self) -> np.ndarray:
        """The fitted parameters, shape ``(n_params,)``: never a step whose loss was not
        measured (:attr:`LearnerState.fitted_theta`); the iterate is ``state.theta``.
        """
        return self.state.fitted_theta

    @theta.setter
    def theta(self, value) -> None:
        self.state.theta = value

    @property
    def train_loss(self) -> float:
        """The loss measured at :attr:`theta` by the last L-BFGS evaluation set or
        Fisher-scoring pass (:attr:`LearnerState.fitted_loss`).
        """
        return self.state.fitted_loss

    @train_loss.setter
    def train_loss(self, value) -> None:
        self.state.train_loss = value

    phi = _StateField("phi")
    whitener = _StateField("whitener")
    fisher = _StateField("fisher")
    opt_state = _StateField("optimizer")
    rng = _StateField("rng")
    samples = _StateField("samples")
    steps = _StateField("steps")
    rewhitens = _StateField("rewhitens")
    step_cap = _StateField("step_cap")
    last_refresh = _StateField("last_refresh")
    rounds_done = _StateField("rounds")
    evaluations = _StateField("evaluations")
    converged = _StateField("converged")
    grad = _StateField("grad")
    last_round = _StateField("last_round")
    theta_sum = _StateField("theta_sum")
    average_weight = _StateField("average_weight")

    def __init__(self, model: Model, **options):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a Model, got {type(model).__name__}")
        self.model = model
        #: The options as given (restarts build their learners from them).
        self.given_options = dict(options)
        self.effective_options = eff = opts.resolve(options, model)
        check_metric_structure(eff["metric"], model_structure(eff["structure"]), model)
        if eff["structure"] == "lowrank" and eff["whitening"] not in LOWRANK_METHODS:
            raise OptionError(f"--structure lowrank factors with {' or '.join(LOWRANK_METHODS)}"
                              f", not --whitening {eff['whitening']}")
        if eff["structure"] == "kronecker" and not hasattr(model, "kronecker_sums"):
            raise OptionError(f"--structure kronecker applies to the softmax model (its "
                              f"metric is a sum of Kronecker products), not {model.name!r}")
        for name, value in eff.items():
            if name not in ("optimizer", "rewhiten"):
                setattr(self, name, value)
        for name in _HANDOVER_OPTIONS:  # refine="lbfgs" runs L-BFGS with the defaults
            if not hasattr(self, name):  # (the model's own, where it sets them)
                setattr(self, name, model.handover_defaults.get(
                    name, opts.BY_NAME[name].default))
        #: The metric the L-BFGS rounds whiten by: ``round_metric`` if given, else the
        #: model's own for them (:attr:`~natgrad_stream.models.Model.round_metric`) unless
        #: ``metric`` is given; recorded among the effective options, so a run rebuilt
        #: from its checkpoint (whose options name the metric) whitens its rounds alike.
        own = self.metric if options.get("metric") is not None \
            else (model.round_metric or self.metric)
        if eff.get("round_metric") is None:
            eff["round_metric"] = own
        elif eff["round_metric"] not in (self.metric, model.round_metric) \
                and opts.strategy_of(eff["optimizer"]) != opts.LBFGS \
                and eff["refine"] != "lbfgs":  # (a checkpoint records one of these)
            raise OptionError(f"round_metric {eff['round_metric']!r} whitens L-BFGS rounds, "
                              f"and this run takes none (refine={eff['refine']!r}): give "
                              "refine='lbfgs' (--refine lbfgs) or optimizer='lbfgs', or drop it")
        self.round_metric = eff["round_metric"]
        if self.round_metric not in model.metrics:
            raise OptionError(f"round_metric {self.round_metric!r} is not a metric of model "
                              f"{model.name!r}; choose one of {list(model.metrics)}")
        self.penalty = L2Penalty.for_model(model, self.l2)
        self.strategy = _STRATEGIES[opts.strategy_of(eff["optimizer"])](self)
        self.optimizer = self.strategy.make_optimizer(eff)
        self.schedule = RefreshSchedule.parse(eff.get("rewhiten", "never"))
        self._workspace = model.new_workspace(model_structure(self.structure))
        #: Rows of the data being fitted (None: unknown, e.g. ``step`` alone or a stream).
        self._source_rows = None
        self._row_density = 1.0  # non-zeros per row / features of the last batch
        self._prior_coords = None  # the coordinates of the diagonal's evidence prior
        self.result: FitResult | None = None
        self._last_good = None  # the divergence guard's rollback point
        self._weights_label = "w"
        self._window_start = None  # the state at the start of the guard's window
        self._undo = None  # the state before the step under way
        self._round_start = None  # an L-BFGS round under way: the state it started from
        self._active_restart = None  # the learner of a restart under way (n_init)
        #: Complete L-BFGS hand-over rounds after which a fit pauses (None: no limit): the
        #: screen of raced restarts (:func:`~natgrad_stream.training.restarts.run_restarts`).
        self._round_limit = None
        self._fitted_data = None  # the last fit's (data, x, y, w), for summary()
        #: One record per fit of the last ``fit`` call's restarts (None without restarts).
        self.restart_records = None
        self.reset()

    # -- state --------------------------------------------------------------------------
    def reset(self, theta0: np.ndarray | None = None) -> NaturalGradientLearner:
        """Forget everything learned; start from ``theta0`` (model default if None)."""
        P = self.model.n_params
        self.state = LearnerState.fresh(
            self.model.start_params(theta0), structure=self.structure,
            half_life=getattr(self, "half_life", None), forget=getattr(self, "forget", None),
            rank=self.rank if self.structure == "lowrank" else 0,
            factors=(self.model.n_features + 1, self.model.n_params
                     // (self.model.n_features + 1)) if self.structure == "kronecker" else None,
            optimizer_state=self.optimizer.init(P) if self.optimizer is not None else {},
            seed=self.seed, data_init=theta0 is None)
        self._stop_requested = False
        return self

    @property
    def _data_init(self) -> bool:
        return self.state.data_init

    @property
    def cursor(self) -> Cursor:
        """Where the stream stands (L-BFGS: ``epoch`` counts rounds)."""
        return self.strategy.cursor()

    @cursor.setter
    def cursor(self, value: Cursor) -> None:
        self.state.cursor = value

    @property
    def theta_average(self) -> np.ndarray:
        """Polyak–Ruppert average of θ over all steps (needs ``average=True``)."""
        if not getattr(self, "average", False):
            raise AttributeError("theta_average needs average=True")
        s = self.state
        return s.theta_sum / s.average_weight if s.average_weight else s.theta.copy()

    def to_sklearn(self):
        """The fitted scikit-learn estimator that predicts as this learner's model at its
        reported parameters (the Polyak average when it keeps one), equal to round-off
        (:func:`natgrad_stream.sklearn_equivalent.to_sklearn`).
        """
        from natgrad_stream.sklearn_equivalent import learner_theta, to_sklearn

        return to_sklearn(self.model, learner_theta(self))

    def options(self) -> dict:
        """JSON-ready options as recorded in ``run.json`` and the log: the effective
        options, with the optimizer's own under ``"optimizer"`` (``name`` first).
        """
        eff = self.effective_options
        if self.optimizer is not None:
            optimizer = self.optimizer.config()
            skip = {"optimizer", "lr", "step_schedule"}
        else:
            optimizer = {"name": eff["optimizer"], **{k: eff[k] for k in _LBFGS_KEYS}}
            skip = {"optimizer", *_LBFGS_KEYS}
        out = {k: v for k, v in eff.items() if k not in skip}
        out["optimizer"] = optimizer
        if "rewhiten" in out:
            out["rewhiten"] = self.schedule.config()
        return out

    def request_stop(self) -> None:
        """Ask :meth:`fit` to stop at the next safe point (safe from a signal handler):
        after the current batch, or before the next L-BFGS evaluation (the interrupted
        round is not counted: the state goes back to its start, the exact restart point,
        and the best point it evaluated is what :attr:`theta` reports meanwhile).
        """
        self._stop_requested = True
        sub = self._active_restart
        if sub is not None:
            sub.request_stop()

    def _out_of_budget(self, max_samples) -> bool:
        return self._stop_requested or (max_samples is not None and
                                        self.state.samples >= max_samples)

    # -- one streaming step -------------------------------------------------------------
    def step(self, X, y=None, w=None) -> StepInfo:
        """One natural-gradient step on a batch; returns what it did (streaming only).

        Raises
        ------
        NumericalError
            If the loss or gradient is not finite, or the step leaves the model's domain;
            the learner's state is unchanged.
        """
        self.strategy.require_steps()
        if is_sparse(X):  # SciPy CSR/CSC/COO: canonical CSR rows once, for every use below
            X = as_sparse_rows(X)
        n = X.shape[0]
        if n == 0:
            raise ValueError("empty batch")
        # the share of features a row holds, for the diagonal's evidence prior
        self._row_density = X.nnz / (n * X.shape[1]) if isinstance(X, SparseRows) else 1.0
        if self.model.requires_targets and y is None:
            raise ValueError(f"model {self.model.name!r} needs targets y")
        s = self.state
        if w is not None and float(np.sum(w)) == 0.0:
            return self._skip_zero_weight(n)
        if s.data_init and s.steps == 0:
            self._take_data_start(self.model.initial_params(X, y, w))
        need_metric = self._metric_due()
        ws = self._workspace
        kronecker = self.structure == "kronecker"  # (its factors: below, not the diagonal)
        loss_sum, wsum = self.model.accumulate(
            X, y, w, s.theta, metric=self.metric if need_metric and not kronecker else None,
            structure=model_structure(self.structure), ws=ws, rng=s.rng,
            mc_samples=self.mc_samples)
        metric_sum = ws.fisher if need_metric else None
        if need_metric and self.structure == "lowrank" and wsum > 0:
            metric_sum = self._sketched_sum(X, y, w, metric_sum, wsum)
        if need_metric and kronecker:
            F, S, _ = self.model.kronecker_sums(X, y, w, s.theta, metric=self.metric,
                                                rng=s.rng, mc_samples=self.mc_samples)
            metric_sum = KroneckerMetric(F, S)

        def power_iteration(v):
            return self._power_iteration(X, y, w, v)

        return self.step_sums(loss_sum, wsum, ws.grad, metric_sum, n,
                              power_iteration=power_iteration)

    def _sketched_sum(self, X, y, w, diagonal_sum, wsum) -> SketchedMetric:
        """The low-rank structure's batch sums: the diagonal and ``Σw·G_batch T`` with the
        running estimate's test matrix ``T`` (drawn from this diagonal on the first batch),
        one metric-vector product of ``rank`` columns (O(n·P·rank)).
        """
        s = self.state
        T = s.fisher.test_for(diagonal_sum / wsum)
        GT = self.model.metric_matvec(X, y, w, s.theta, T, metric=self.metric)
        return SketchedMetric(diagonal_sum.copy(), wsum * GT, T)

    def _metric_due(self) -> bool:
        """Whether this step folds a batch into the running metric: one batch in
        ``fisher_every``, and every batch while the estimate holds fewer than
        :data:`METRIC_WARMUP_ROWS_PER_PARAM` rows per parameter (its first refreshes then
        see several batches' evidence, not one's).
        """
        s = self.state
        return (s.whitener is None or s.steps % self.fisher_every == 0
                or s.fisher.rows < METRIC_WARMUP_ROWS_PER_PARAM * self.model.n_params)

    def _take_data_start(self, start) -> None:
        """Start from the model's data-informed θ (:meth:`Model.initial_params`; None keeps
        θ), once, before anything is learned: nothing to keep.
        """
        s = self.state
        s.data_init = False
        if start is not None:
            s.theta = np.asarray(start, dtype=np.float64)
            s.phi = s.theta.copy()

    def step_sums(self, loss_sum: float, wsum: float, grad_sum: np.ndarray,
                  metric_sum: np.ndarray | None, rows: int, *, power_iteration=None,
                  extra_state=None) -> StepInfo:
        """One step from a batch's sums (what :meth:`step` computes, or what Dask workers
        computed on their batches and the driver merged): ``Σwℓ``, ``Σw``, ``Σw∇ℓ``
        (shape (P,)), the metric's sum (shape (P, P) or (P,), or None when this step does
        not fold in the metric) and the rows.

        ``power_iteration(v) -> ρ`` measures the batch's curvature in φ for a diagonal
        whitener (see :meth:`_curvature_cap`); ``extra_state`` (a dict of state fields)
        is applied with the step, and undone with it.
        """
        s = self.state
        if wsum == 0:
            return self._skip_zero_weight(rows, extra_state)
        if not wsum > 0:
            raise DataError(f"batch has total sample weight {wsum}", array="w")
        data_loss_sum = loss_sum
        loss_sum, grad, finite, grad_norm, metric_sum = self._penalize_sums(
            loss_sum, wsum, grad_sum, metric_sum)
        if not (math.isfinite(loss_sum) and finite):
            raise NumericalError(
                f"non-finite loss ({loss_sum}) or gradient at step {s.steps}, "
                f"samples {s.samples}; |θ|max = {np.abs(s.theta).max():.3g}. "
                "Try a smaller lr or stronger damping.")
        n = int(rows)
        before = self._undo = s.snapshot()
        try:
            refresh, gphi_norm = self._advance(grad, wsum, n, metric_sum, power_iteration)
        except BaseException:
            # a rejected step changes nothing (nor one whose curvature probe failed with
            # the cluster: the state saved then is the one before the step)
            self.state = before.restore()
            raise
        finally:
            self._undo = None
        for name, value in (extra_state or {}).items():
            setattr(s, name, value)
        s.steps += 1
        keep = self._kept(n)  # forgetting: what is left of the earlier rows' weight
        if self.average:
            s.theta_sum = keep * s.theta_sum + n * s.theta
            s.average_weight = keep * s.average_weight + n
        # running_loss: the data loss, as train_loss
        s.epoch_loss_sum = keep * s.epoch_loss_sum + data_loss_sum
        s.epoch_loss_weight = keep * s.epoch_loss_weight + wsum
        events = self._guard_divergence(loss_sum, wsum, before, rows=n)
        return StepInfo(loss=loss_sum / wsum, grad_norm=grad_norm,
                        natural_grad_norm=gphi_norm, rows=n,
                        samples=s.samples, steps=s.steps, refresh=refresh, events=events)

    partial_fit = step

    def _kept(self, rows: int) -> float:
        """The factor of the earlier rows' weight after ``rows`` more under forgetting
        (``½^(rows/forget)``; 1 without it).
        """
        forget = getattr(self, "forget", None)
        return 1.0 if forget is None else 0.5 ** (rows / forget)

    def _clock(self) -> float:
        """The step schedules' clock: the rows seen, or under forgetting the forgotten
        row count (which tends to ``b / (1 − 2^(−b/forget)) ≈ forget/ln 2 + b/2`` for
        batches of ``b`` rows, so the harmonic step ``b/t`` tends to a constant, about
        ``b·ln 2 / forget``: each step weighs the new rows as an exponentially weighted
        average would).
        """
        s = self.state
        return s.samples if getattr(self, "forget", None) is None else s.forget_rows

    def _skip_zero_weight(self, rows: int, extra_state=None) -> StepInfo:
        """Skip a batch whose sample weights sum to zero (it carries no information, and its
        mean loss is undefined): the rows count as read, the skip is counted
        (``skipped_zero_weight_batches`` in the summary), nothing else changes. Where the
        rows fall does not matter: a pass of such batches only is refused at its end
        (:func:`_refuse_weightless`).
        """
        s = self.state
        for name, value in (extra_state or {}).items():
            setattr(s, name, value)
        s.samples += int(rows)
        s.skipped_zero_weight += 1
        return StepInfo(loss=math.nan, grad_norm=0.0, natural_grad_norm=0.0, rows=int(rows),
                        samples=s.samples, steps=s.steps, skipped=True)

    def _penalize_sums(self, loss_sum: float, wsum: float, grad_sum: np.ndarray,
                       metric_sum: np.ndarray | None):
        """A batch's sums with the L2 penalty at θ added with the batch's weight ``wsum``,
        the gradient as a mean: ``(Σwℓ + Σw·λ/2‖θ_S‖², ∇J, ∇J finite, ‖∇J‖,
        ΣG + Σw·λI_S)`` with ``∇J = (Σw∇ℓ + Σw·λθ_S) / Σw`` (shapes (P,), and (P,),
        (P, P) or None for the metric), one pass over P for the gradient
        (:meth:`~natgrad_stream.models.penalty.L2Penalty.mean_gradient`).
        """
        pen = self.penalty
        grad, finite, norm, value = pen.mean_gradient(grad_sum, wsum, self.state.theta)
        if pen.active:
            loss_sum = loss_sum + wsum * value
        if isinstance(metric_sum, KroneckerMetric):  # its factors take λ when factored
            return loss_sum, grad, finite, norm, KroneckerMetric(
                metric_sum.features, metric_sum.classes,
                metric_sum.penalty + (wsum * pen.lam if pen.active else 0.0))
        if isinstance(metric_sum, SketchedMetric):  # (G + λI_S) T = G T + λ I_S T
            T = metric_sum.test
            return loss_sum, grad, finite, norm, SketchedMetric(
                pen.add_metric(metric_sum.diagonal, weight=wsum),
                pen.add_matvec(metric_sum.sketch, wsum * T), T)
        return loss_sum, grad, finite, norm, pen.add_metric(metric_sum, weight=wsum)

    def _guard_divergence(self, loss_sum: float, wsum: float, before, *,
                          rows: int = 0) -> tuple:
        """Watch for divergence: every ``DIVERGENCE_WINDOW_BATCHES`` steps, a window whose
        mean loss rose more than ``divergence_factor × |loss at the start|`` above the
        start rolls the state back to the end of the last good window (or the start of
        this fit) and cuts the step by ``DIVERGENCE_STEP_CUT``; returns the rollback
        records for the log. Under forgetting, windows above that threshold must outlast
        ``DRIFT_SETTLE_HALF_LIVES × forget`` rows (see :meth:`_check_divergence`).
        """
        s = self.state
        keep = self._kept(rows)  # the drift alarm's level forgets as the data do
        s.level_sum, s.level_sq, s.level_rows = (keep * s.level_sum, keep * s.level_sq,
                                                 keep * s.level_rows)
        if math.isnan(s.loss_start):
            s.loss_start = loss_sum / wsum  # the loss at the run's starting parameters
        if s.window_batches == 0:  # the point this window's first loss was measured at
            self._window_start = before
        s.window_loss_sum += loss_sum
        s.window_weight += wsum
        s.window_batches += 1
        if s.window_batches >= DIVERGENCE_WINDOW_BATCHES:
            return self._check_divergence()
        return ()

    def _check_divergence(self, *, final: bool = False) -> tuple:
        """Close the guard's window (``final``: a partial one at the end of the data, where
        no data are left to retry with a shorter step).

        Raises
        ------
        NumericalError
            After ``DIVERGENCE_MAX_ROLLBACKS`` rollbacks, at the end of the data, or with
            no good state to go back to; the state is the last good one.
        """
        s = self.state
        if not s.window_batches or not s.window_weight > 0:
            return ()
        mean, start = s.window_loss_sum / s.window_weight, s.loss_start
        samples, batches, weight = s.samples, s.window_batches, s.window_weight
        s.window_loss_sum = s.window_weight = 0.0
        s.window_batches = 0
        factor = self.divergence_factor
        forgetting = getattr(self, "forget", None) is not None
        alarm = self._drift_alarm(mean, weight, batches) if forgetting else ()
        above = factor is not None and mean - start > factor * abs(start)
        diverging, against = above, ""
        if forgetting:
            # a drifting stream raises the loss at once, and then the steps bring it down
            # as the old rows are forgotten: windows above the threshold are a divergence
            # only when they outlast DRIFT_SETTLE_HALF_LIVES half-lives of forgetting
            if not above:
                s.excursion_from = None
            elif s.excursion_from is None:
                s.excursion_from = samples
            lasted = 0 if s.excursion_from is None else samples - s.excursion_from
            diverging = above and lasted > DRIFT_SETTLE_HALF_LIVES * self.forget
            against = (f" for {lasted:,} rows, longer than {DRIFT_SETTLE_HALF_LIVES:g} "
                       f"half-lives of forgetting (--forget {self.forget:g})")
        if not diverging:
            # the next rollback point: where this good window started (its loss was
            # measured there; the state after its last step was not); a window of a
            # tolerated excursion is not one
            if self._window_start is not None and not above:
                self._last_good = self._window_start
            return alarm
        good, self._last_good = self._last_good, None
        what = (f"diverging: the mean loss of the last {batches} batches (to sample "
                f"{samples}) is {mean:.4g}, against {start:.4g} at the start (more than "
                f"{factor:g}× above it){against}")
        if good is None or final or s.rollbacks >= DIVERGENCE_MAX_ROLLBACKS:
            moving = [] if good is None else _moving_most(s.theta - good.restore().theta)
            if good is not None:
                self.state = good.restore()
            cuts = f" after {s.rollbacks} step cuts" if s.rollbacks else ""
            raise NumericalError(
                f"{what}{cuts}; the parameters moving most (θ indices): {moving}; the "
                f"learner's state is rolled back to sample {self.state.samples}; a "
                "checkpoint already written is kept. Try a smaller lr or stronger damping "
                "(or --divergence-factor)"
                + ("" if self.penalty.active else "; on collinear features (a full one-hot "
                   "encoding with the intercept) or separable data, an L2 penalty (--l2)")
                + ("" if forgetting else "; on a stream whose data drift, forgetting "
                   "(--forget HALF_LIFE)")
                + ".")
        restored = good.restore()
        restored.rollbacks = s.rollbacks + 1
        restored.step_scale = s.step_scale * DIVERGENCE_STEP_CUT
        self.state = restored
        self._last_good = restored.snapshot()
        warnings.warn(f"{what}; rolled back to sample {restored.samples}, steps now "
                      f"×{restored.step_scale:g} (rollback {restored.rollbacks} of at most "
                      f"{DIVERGENCE_MAX_ROLLBACKS})", RuntimeWarning, stacklevel=4)
        return (*alarm, {"event": "rollback", "detected_at": samples,
                         "samples": restored.samples, "window_loss": mean,
                         "loss_start": start, "step_scale": restored.step_scale,
                         "rollbacks": restored.rollbacks})

    def _drift_alarm(self, mean: float, weight: float, batches: int) -> tuple:
        """The drift alarm under forgetting: compare a closed guard window's mean loss
        with the running level of the windows before it (their mean and the standard
        deviation of their means, weighted by rows and forgotten with ``forget``), then
        fold the window in. A window above ``level + max(DRIFT_ALARM_SIGMAS·sd,
        DRIFT_ALARM_MIN_RISE·|level|)`` once the level holds DRIFT_ALARM_MIN_WINDOWS
        windows logs one warning and returns its record; no other line until a window is
        back under the threshold.
        """
        s = self.state
        out = ()
        if s.level_windows >= DRIFT_ALARM_MIN_WINDOWS and s.level_rows > 0:
            level = s.level_sum / s.level_rows
            sd = math.sqrt(max(s.level_sq / s.level_rows - level * level, 0.0))
            threshold = level + max(DRIFT_ALARM_SIGMAS * sd, DRIFT_ALARM_MIN_RISE * abs(level))
            if mean > threshold and not s.drift_alarm:
                s.drift_alarm = True
                record = {"event": "drift", "samples": s.samples, "window_loss": mean,
                          "level": level, "level_sd": sd, "threshold": threshold,
                          "forget": self.forget}
                log.warning("drift: the mean loss of the last %d batches (to sample %s) is "
                            "%.4g, above its running level %.4g (sd %.2g of the windows' "
                            "means, half-life %s rows; alarm above %.4g); forgetting "
                            "follows the new data", batches, f"{s.samples:,}", mean, level,
                            sd, f"{self.forget:g}", threshold,
                            extra={"natgrad_event": "drift"})
                out = (record,)
            elif mean <= threshold:
                s.drift_alarm = False
        s.level_sum += weight * mean
        s.level_sq += weight * mean * mean
        s.level_rows += weight
        s.level_windows += 1
        return out

    def _advance(self, grad, wsum, n, metric_sum, power_iteration):
        """Fold the batch into the metric, maybe re-whiten, and take the optimizer step
        (all on ``self.state``; :meth:`step_sums` puts the snapshot back if this raises).
        """
        s = self.state
        if metric_sum is not None:
            s.fisher.add(metric_sum, weight=wsum, rows=n)
            self._workspace.release_metric()  # (folded in: its pages are not needed now)
        s.samples += n
        s.forget_rows = self._kept(n) * s.forget_rows + n
        refresh = self._maybe_refresh()
        if refresh is not None and refresh.get("ok") \
                and self.structure in ("diagonal", "lowrank", "kronecker") \
                and power_iteration is not None:
            s.step_cap = self._curvature_cap(power_iteration, refresh)
        cap = self._cap_factor(n)
        if self._fused_step():
            # (a cut after a divergence rollback scales the step: φ + c·(φ' − φ) = φ − cη∇φ)
            phi, theta, s.optimizer, gphi_norm, finite = self.optimizer.update_diagonal(
                s.phi, grad, s.whitener.inverse, cap * s.step_scale, s.optimizer, rows=n,
                samples=self._clock())
            gphi_norm *= abs(cap)
        else:
            gphi = s.whitener.grad_phi(grad) * cap
            gphi_norm = float(np.linalg.norm(gphi))
            phi, s.optimizer = self.optimizer.update(s.phi, gphi, s.optimizer, rows=n,
                                                     samples=self._clock())
            if s.step_scale != 1.0:  # cut after a divergence rollback
                phi = s.phi + s.step_scale * (phi - s.phi)
            theta = s.whitener.theta(phi)
            finite = bool(np.all(np.isfinite(theta)))
        if not finite:
            raise NumericalError(f"step {s.steps} produced non-finite parameters")
        try:
            self.model.check_params(theta)
        except ValueError as exc:
            raise NumericalError(
                f"step {s.steps} (samples {s.samples}) left the model's domain: {exc}. "
                "The learner's state before the step is kept; try a smaller lr or stronger "
                "damping.") from exc
        s.phi, s.theta = phi, theta
        return refresh, gphi_norm

    def _fused_step(self) -> bool:
        """Whether this step is plain SGD through a diagonal whitener: then the optimizer's
        update and the way back to θ are one pass over P (:meth:`SGD.update_diagonal`).
        """
        return self.state.whitener.diagonal and type(self.optimizer) is SGD

    def _cap_factor(self, rows: int) -> float:
        """The factor of this step's natural gradient from the curvature cap
        (:meth:`_curvature_cap`). With plain SGD on the harmonic schedule the step is
        ``η = lr·b/t`` and what must stay below ``1/ρ`` is the step ``η·factor`` itself:
        ``factor = min(1, cap/η)``, a constant step ``1/ρ`` until the harmonic one is
        smaller. (On sparse rows a batch's ρ counts each row's rare features, about
        ``Σ_j 1/(b·freq_j)``, so ``η·ρ ≈ Σ_j 1/n_j`` over a row's features seen ``n_j`` times
        so far: the cap binds while they are new, not for the whole pass; a fixed ``1/ρ``
        factor on 10⁵ features × 50 non-zeros kept the steps about 1/100 of the harmonic
        ones, one pass ending 27% above the optimum's held-out loss instead of 2.7%.)
        Other optimizers and schedules take ``cap`` as it is.
        """
        s = self.state
        cap = s.step_cap
        opt = self.optimizer
        if cap >= 1.0 or type(opt) is not SGD or opt.schedule != "harmonic":
            return cap
        eta = step_size(opt.lr, opt.schedule, rows, self._clock())
        return min(1.0, cap / eta) if eta > 0 else cap

    def _maybe_refresh(self) -> dict | None:
        s = self.state
        reason, drift = None, None
        if s.whitener is None:
            reason = "initial"
        elif self.schedule.clock_due(s.schedule, s.samples):
            reason = "schedule"
        elif self.schedule.drift_check_due(s.schedule):
            self._spill_older_metrics()
            G = self._running_metric()[0]
            if isinstance(G, SketchedMetric) and s.whitener.diagonal:  # (a fallback identity)
                G = G.diagonal
            if isinstance(G, KroneckerMetric) and s.whitener.diagonal:
                G = G.diagonal()
            drift = s.whitener.drift(G, s.rng, probes=self.drift_probes)
            if self.schedule.drift_exceeded(drift):
                reason = "drift"
        return None if reason is None else self.refresh(reason=reason, drift=drift)

    def _spill_older_metrics(self) -> None:
        """Before a refresh or a drift check makes its P × P arrays, for a full metric of at
        least ``SPILL_METRIC_PARAMS`` parameters: the older metric sums held by the step's
        undo point and the divergence guard's points (a fold of the metric makes a new
        sum, and until the guard's window closes these keep the old ones) go to temporary
        files (:meth:`~natgrad_stream.training.state.Snapshot.spill`), read back only if
        the step is rejected or rolled back.
        """
        if self.structure != "full" or self.model.n_params < SPILL_METRIC_PARAMS:
            return
        spilled: dict = {}
        for snap in (self._undo, self._window_start, self._last_good):
            if snap is not None:
                snap.spill(self.state, spilled)

    def _running_metric(self) -> tuple[np.ndarray, float]:
        """The running estimate shrunk for the rows behind it (what a refresh factors and
        the drift check compares with), and the shrinkage intensity
        (:func:`natgrad_stream.geometry.shrinkage.shrink`); a metric the model computes in
        closed form (:attr:`~natgrad_stream.models.Model.exact_metrics`), or one that has
        seen as many rows as the data being fitted hold, is not shrunk.
        """
        s = self.state
        # exact metrics have no sampling noise; an estimate over every row of the data
        # being fitted is that data's own metric (the objective's, with nothing unmeasured)
        exact = self.metric in self.model.exact_metrics or (
            self._source_rows is not None and s.fisher.samples >= self._source_rows)
        rows = None if exact else s.fisher.rows
        if self.structure == "lowrank":
            # not shrunk: the sketch keeps the k directions of most evidence; the rest of
            # the metric is its diagonal already
            G = s.fisher.estimate()
            if rows is not None:
                if self._prior_coords is None:
                    self._prior_coords = _as_slice(np.asarray(self.model.penalized_indices,
                                                              dtype=np.int64))
                add_evidence_prior(G.diagonal, rows, self._row_density, self._prior_coords)
            return G, 0.0
        if self.structure == "kronecker":  # each factor for its own dimension
            return shrink_factors(s.fisher.estimate(), rows, density=self._row_density)
        G, rho = shrink(s.fisher.estimate(), rows,  # (a new array: shrunk in place)
                        centers=self.model.center_indices,
                        blocks=self.model.param_bounds() if self.structure == "block" else None,
                        overwrite=True)
        if G.ndim == 1 and rows is not None:  # a diagonal: bounded where evidence is thin
            if self._prior_coords is None:  # (built once: a slice when contiguous)
                self._prior_coords = _as_slice(np.asarray(self.model.penalized_indices,
                                                          dtype=np.int64))
            add_evidence_prior(G, rows, self._row_density, self._prior_coords)
        return G, rho

    def _curvature_cap(self, power_iteration, event: dict) -> float:
        """Step factor ``min(1, 1/ρ)`` for a diagonal whitener.

        ρ is the largest eigenvalue of this batch's metric seen in φ coordinates,
        ``W⁻ᵀ G_batch W⁻¹``, by power iteration (O(n P) per product). A full whitener makes
        it about 1; a diagonal one ignores the correlations, and with correlated or
        non-centred features ρ reaches tens to hundreds, where the default step of 1 would
        diverge. The estimate is recorded in the refresh event.
        """
        s = self.state
        rho = power_iteration(s.rng.standard_normal((self.model.n_params, 1)))
        if rho is None or not np.isfinite(rho) or rho <= 0:
            return s.step_cap
        event["curvature"] = rho
        return min(1.0, 1.0 / rho)

    def _power_iteration(self, X, y, w, v) -> float:
        """ρ of :meth:`_curvature_cap` on the batch ``(X, y, w)`` from the start ``v``
        (shape (P, 1)).
        """
        s = self.state
        if s.whitener.diagonal:  # the model's compiled loop, where it has one
            rho = self.model.curvature_power_iteration(
                X, y, w, s.theta, s.whitener.inverse, self.penalty, v,
                CURVATURE_POWER_ITERATIONS, metric=self.metric)
            if rho is not None:
                return rho
        rho = 1.0
        for _ in range(CURVATURE_POWER_ITERATIONS):
            v /= np.linalg.norm(v)
            u = s.whitener.theta(v[:, 0])[:, None]
            Gu = self.penalty.add_matvec(
                self.model.metric_matvec(X, y, w, s.theta, u, metric=self.metric), u)
            v = s.whitener.grad_phi(Gu[:, 0])[:, None]
            rho = float(np.linalg.norm(v))
        return rho

    def unidentified_note(self) -> str | None:
        """One line when a converged fit without a penalty has coefficients the data do not
        identify (the last refresh's metric, over the whole data, is zero along some
        directions): which parameters, and what a penalty would do (None otherwise).
        """
        s = self.state
        event = s.last_refresh or {}
        k = int(event.get("unidentified") or 0)
        if not (s.converged and k and not self.penalty.active):
            return None
        named = event.get("unidentified_params") or []
        more = " and more" if len(named) >= UNIDENTIFIED_NAMED else ""
        return (f"{k} direction(s) of the parameters are not identified by the data "
                f"(collinear features, e.g. a full one-hot encoding beside the intercept), "
                f"moving θ indices {named}{more}: the "
                "loss and the predictions are at their optimum, the coefficients are one of "
                "many that give it; an L2 penalty (--l2; the estimators' C or alpha) picks "
                "the smallest")

    def summary(self, data=None, *, x: str = "X", y: str | None = "y", w: str | None = None,
                alpha: float = 0.05, cov: str = "model", feature_names=None,
                class_names=None):
        """Statistical inference at :attr:`theta` over ``data`` (the fitted data, for the
        tests to mean anything), in one streamed pass: a
        :class:`~natgrad_stream.inference.Summary` (``print`` it for the table;
        ``to_dict()``, ``bse``, ``bse_robust``, ``conf_int()``). Without ``data``: the data
        of the last :meth:`fit` call, with its ``x``, ``y`` and ``w`` (``lr.fit(data)
        .summary()``). The fit's L2 penalty and whether it converged are taken into
        account (see :mod:`natgrad_stream.inference`); a fit that did not converge is
        summarized with one RuntimeWarning.
        """
        from natgrad_stream.inference import summary

        if data is None:
            if self._fitted_data is None:
                raise ValueError("summary() without data summarizes the data of the last "
                                 "fit, and this learner has fitted none: pass the data")
            data, x, y, w = self._fitted_data
        if not self.state.converged:
            warnings.warn("the fit did not converge: θ is not the optimum the standard "
                          "errors and tests assume (fit further, or read them as "
                          "approximate)", RuntimeWarning, stacklevel=2)
        return summary(self.model, self.theta, data, x=x, y=y, w=w, alpha=alpha, cov=cov,
                       l2=self.penalty.lam, converged=bool(self.state.converged),
                       feature_names=feature_names, class_names=class_names)

    # -- re-whitening (shared) ----------------------------------------------------------
    def refresh(self, *, reason: str = "manual", drift: float | None = None,
                metric: np.ndarray | None = None, consume: bool = False, **fields) -> dict:
        """Re-whiten now at ``θ_fixed = θ``; returns the refresh event.

        ``metric`` is the metric to factor (default: the running estimate; with
        ``consume``, factored in place, its values lost); ``fields``
        are added to the event after ``reason``. A failed factorization keeps the last
        good whitener (or the identity, before the first success) and reports
        ``ok: False`` with the reason, with a warning.
        """
        s = self.state
        event = {"event": "rewhiten", "reason": reason, **fields, "samples": s.samples,
                 "step": s.steps, "drift": drift}
        try:
            # the running estimate is shrunk toward its diagonal for the rows it has seen;
            # a whole-data metric (scoring passes, L-BFGS rounds) is the exact curvature of
            # the objective being minimized and is factored as it is
            if metric is None:
                self._spill_older_metrics()
            G, rho = self._running_metric() if metric is None else (metric, 0.0)
            event["shrinkage"] = rho
            # the running estimate is a new array: factored in place (the caller's metric
            # is not); G's values are gone after this
            if isinstance(G, SketchedMetric):
                new = whiten_lowrank(G, method=self.whitening, damping=self.damping,
                                     floor=self.floor)
            elif isinstance(G, KroneckerMetric):
                new = whiten_kronecker(G, method=self.whitening, damping=self.damping,
                                       floor=self.floor)
            else:
                new = whiten(G, method=self.whitening, damping=self.damping, floor=self.floor,
                             center=self.model.center_indices or None,
                             blocks=self.model.param_bounds() if self.structure == "block"
                             else None, overwrite=metric is None or consume)
            del G
        except (WhiteningError, ValueError) as exc:
            event.update(ok=False, error=str(exc))
            warnings.warn(f"re-whitening at sample {s.samples} failed ({exc}); keeping the "
                          "previous whitener", RuntimeWarning, stacklevel=3)
            if s.whitener is None:
                s.whitener = Whitener.identity(
                    self.model.n_params,
                    diagonal=self.structure in ("diagonal", "lowrank", "kronecker"))
                s.phi = s.whitener.phi(s.theta)
        else:
            if s.whitener is not None and self.optimizer is not None:
                # only the maps the optimizer's state needs (SGD's: none; each is a P × P
                # product, a refresh's largest arrays after the whiteners)
                need = self.optimizer.transport_maps
                s.optimizer = self.optimizer.transport(
                    s.optimizer, s.whitener.vector_map_to(new) if "vector" in need else None,
                    s.whitener.covector_map_to(new) if "covector" in need else None)
            s.whitener = new
            s.phi = new.phi(s.theta)
            s.rewhitens += 1
            event.update(ok=True, **new.diagnostics.to_dict())
        self.schedule.refreshed(s.schedule, s.samples)
        s.last_refresh = event
        return event

    # -- the loop -----------------------------------------------------------------------
    def fit(self, data, *, epochs: int | None = None, rounds: int | None = None,
            callbacks=(), max_samples: int | None = None, shuffle: bool = True,
            prefetch: int = 2, chunks_per_read: int | None = None, x: str = "X",
            y: str | None = "y",
            w: str | None = None, client=None) -> NaturalGradientLearner:
        """Stream ``data`` (continuing from the current state).

        Parameters
        ----------
        data : path, zarr.Group, (X, y[, w]) arrays, table, Source or iterable of batches
            A table: a Parquet, CSV or ``.npy`` path, a pyarrow ``Table``, ``Dataset`` or
            ``RecordBatchReader``, a HuggingFace ``Dataset`` (``x`` names its feature
            columns: :mod:`natgrad_stream.data.tables`). A callable returning an iterable
            of batches is called once per epoch (multi-epoch; an iterable runs one).
            L-BFGS streams its data many times: arrays, a Zarr group or path, or an
            ``ArraySource`` (whose ``chunk_rows`` set the window's chunks).
        epochs : int, optional
            Streaming: total passes of the run; a resumed run continues up to this count.
            Default: until the later passes' stopping rule holds (Fisher scoring: ``tol``,
            else round-off; ``refine="lbfgs"``: the L-BFGS rules), at most
            :data:`~natgrad_stream._constants.AUTO_MAX_EPOCHS` passes (the model's
            ``auto_max_epochs`` where it sets one), on data that can be read again; one
            pass otherwise, and with ``refine="stream"``.
        rounds : int, optional
            L-BFGS: total rounds of the run (default: the ``lbfgs_rounds`` option).
        callbacks : sequence of Callback
            Besides these, progress goes to the ``natgrad_stream.fit`` logger
            (:class:`~natgrad_stream.training.callbacks.FitLog`: passes at INFO, steps at
            DEBUG; silent unless logging is configured).
        max_samples : int, optional
            Stop (resumably) once this many samples have been seen in total.
        shuffle, prefetch, chunks_per_read
            Passed to the source's batch stream (streaming; with ``forget`` a stored
            source is read in order, unshuffled: forgetting weighs rows by their age).
            ``chunks_per_read`` defaults to :func:`batch_filling_reads`: enough chunks
            that a batch is ``batch_size`` rows whatever the store's chunking (batches
            never straddle reads), at least 2.
        x, y, w : str
            Array names when ``data`` is a Zarr group or path.
        client : distributed.Client, optional
            Run on a Dask cluster (:mod:`natgrad_stream.distributed`): ``data`` is then a
            Zarr store's path or URL, which every worker opens itself. Passes equal a
            single-process fit's to round-off; streaming optimizers take synchronous
            data-parallel steps on one batch per lane (lanes: the workers when the run
            started), an effective batch of ``lanes × batch_size`` rows.
        """
        if max_samples is not None:
            max_samples = opts.BY_NAME["max_samples"].parse(max_samples)
        callbacks = (*callbacks, FitLog())  # progress through logging (silent by default)
        plan = self.strategy.plan(epochs=epochs, rounds=rounds, shuffle=shuffle,
                                  prefetch=prefetch, chunks_per_read=chunks_per_read)
        source = self._open(data, x, y, w)
        if self.settle_structure(source):  # a new structure: its own strategy and plan
            plan = self.strategy.plan(epochs=epochs, rounds=rounds, shuffle=shuffle,
                                      prefetch=prefetch, chunks_per_read=chunks_per_read)
        self._source_rows = getattr(source, "n_rows", None)  # for _running_metric
        self._fitted_data = (data, x, y, w)  # for summary() (a reference, not a copy)
        # the weights array's name, for errors
        self._weights_label = (getattr(source, "names", None) or (None,) * 3)[2] or w or "w"
        self.strategy.settle(plan, source)
        if plan.get("chunks_per_read", 2) is None:  # (a Dask fit's lanes split the reads)
            plan["chunks_per_read"] = 2 if client is not None else \
                batch_filling_reads(source, self.batch_size)
        self._backend = None if client is None else self._dask_backend(client, data, source,
                                                                       x, y, w)
        self.result = None
        self.restart_records = None
        restarts, screen = restart_count(self, plan, source, epochs=epochs,
                                         max_samples=max_samples, client=client,
                                         rereadable=_rereadable(source))
        if self._last_good is None:  # a resumed run keeps its persisted rollback point
            self._last_good = self.state.snapshot()
        total = planned_rows(self.strategy.total_rows(source, plan), restarts, screen,
                             getattr(source, "n_rows", None), self.lbfgs_iters)
        for cb in callbacks:
            cb.on_fit_start(self, total)
        start_samples, t0 = self.state.samples, time.perf_counter()
        self._stop_requested = False
        try:
            with limited_blas_threads(self.blas_threads):
                if restarts > 1:
                    interrupted, rows = run_restarts(self, restarts, source, plan, callbacks,
                                                     screen)
                else:
                    interrupted = self.strategy.run(source, plan, callbacks, max_samples)
                    rows = self.state.samples - start_samples
            self.strategy.running = False  # status() now says what was done
            seconds = time.perf_counter() - t0
            self.result = self.strategy.result(source, seconds=seconds,
                                               interrupted=interrupted, rows=rows)
            if self.restart_records is not None:
                self.result.restarts = self.restart_records
            for cb in callbacks:  # a failing end (e.g. a full disk) is an error like any
                cb.on_fit_end(self, self.result)
            note = None if interrupted else self.strategy.unconverged_note(source, plan)
            if note is not None:  # after the end's checkpoint: an error is the one line
                log.warning("%s", note, extra={"natgrad_event": UNCONVERGED})
            note = None if interrupted else self.unidentified_note()
            if note is not None:
                log.warning("%s", note, extra={"natgrad_event": UNIDENTIFIED})
        except BaseException as exc:
            for cb in callbacks:
                cb.on_error(self, exc)
            raise
        finally:
            if self._backend is not None:
                self.dask_traffic = self._backend.traffic()
                self._backend.close()
                self._backend = None
        return self

    def _dask_backend(self, client, data, source, x, y, w):
        """The backend that runs this fit's passes and steps on ``client``'s cluster."""
        import os

        from natgrad_stream.distributed import DaskBackend, DataSpec

        if isinstance(source, SparseSource):
            raise TypeError("a Dask fit reads dense Zarr arrays; sparse data (a CSR group) "
                            "is fitted in one process (no client)")
        if self.structure in ("lowrank", "kronecker"):
            raise OptionError(f"--structure {self.structure} is fitted in one process (no "
                              "Dask client): its factors are not merged across lanes")
        if getattr(source, "table_files", None) is not None:
            raise TypeError("a Dask fit reads a Zarr store that every worker opens, not a "
                            "table: copy it first ('natgrad-stream convert SRC OUT.zarr')")
        if not isinstance(data, str | os.PathLike) or not isinstance(source, ArraySource):
            raise TypeError("a Dask fit reads a Zarr store that every worker opens: pass "
                            f"its path or URL, not {type(data).__name__}")
        path = os.fspath(data)
        if "://" not in path:
            path = os.path.abspath(path)
        spec = DataSpec(path, x=x, y=y if self.model.requires_targets else None, w=w,
                        chunk_rows=source.chunk_rows, n_rows=source.n_rows)
        return DaskBackend(client, spec, self.model)

    _backend = None
    dask_traffic: dict | None = None

    def settle_structure(self, source) -> bool:
        """Settle ``structure="auto"`` on the data of a fresh learner
        (:func:`~natgrad_stream.training.options.auto_structure_for_data`: its row count and
        whether its rows are sparse); a different choice rebuilds the learner's options,
        strategy and state with it (keeping a given ``theta0`` and the cursor). Returns
        whether it changed.
        A structure given, or recorded by a checkpoint, stays.
        """
        if self.given_options.get("structure", "auto") != "auto" or self.state.samples > 0:
            return False
        chosen = opts.auto_structure_for_data(self.model, getattr(source, "n_rows", None),
                                              sparse=isinstance(source, SparseSource))
        if chosen == self.structure:
            return False
        theta0 = None if self.state.data_init else self.state.theta.copy()
        cursor = self.state.cursor  # (a warm start's: its streaming pass skipped)
        given = {**self.given_options, "structure": chosen}
        self.__init__(self.model, **given)
        if theta0 is not None:
            self.reset(theta0)
        self.state.cursor = cursor
        return True

    def _open(self, data, x, y, w):
        """The source behind ``data``, checked against the model."""
        source = as_source(data, x=x, y=y if self.model.requires_targets else None, w=w)
        self.strategy.check_source(source)
        if source.n_features != self.model.n_features:
            raise DataError(f"has {source.n_features} features but the model was built for "
                            f"{self.model.n_features}", array=x)
        if self.model.requires_targets and not source.has_targets:
            raise DataError(f"model {self.model.name!r} needs targets but the source has none",
                            array=y)
        return source

    def _report(self, callbacks, info: StepInfo) -> None:
        if info.refresh is not None:
            for cb in callbacks:
                cb.on_refresh(self, info.refresh)
        for record in info.events:
            for cb in callbacks:
                hook = getattr(cb, "on_event", None)
                if hook is not None:
                    hook(self, record)
        for cb in callbacks:
            cb.on_batch_end(self, info, self.cursor)

    # -- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: a nested dict of arrays and JSON values
        (the model, the effective options and :class:`LearnerState`'s fields).
        """
        # mid-round (a checkpoint due by samples or seconds) the round's start is the state
        # to continue from: rounds are the exact restart points
        state = self.state if self._round_start is None else self._round_start.restore()
        out = {"model": self.model.config(), "options": self.options(),
               "fit_options": dict(self.effective_options), **state.to_dict()}
        for key, snap in (("guard_rollback_point", self._last_good),
                          ("guard_window_start", self._window_start)):
            if snap is not None:  # the divergence guard's points, for an exact resume
                # (they share the run's content digests, saved once)
                out[key] = {k: v for k, v in snap.restore().to_dict().items()
                            if k != "digests"}
        return out

    def load_state_dict(self, state: dict) -> NaturalGradientLearner:
        """Restore :meth:`state_dict` output (the model and optimizer must match)."""
        if state["model"] != self.model.config():
            raise CheckpointError(
                f"checkpoint is for model {state['model'].get('name')!r} with "
                f"{state['model'].get('n_features')} features, not "
                f"{self.model.name!r} with {self.model.n_features}")
        _check_optimizer(state, self.effective_options["optimizer"])
        loaded = LearnerState.from_dict(state, defaults=self.state)
        P = self.model.n_params
        if loaded.theta.shape != (P,):
            raise CheckpointError(f"checkpoint θ has shape {loaded.theta.shape}, expected "
                                  f"({P},)")
        self.state = loaded
        self._last_good, self._window_start = (
            None if state.get(key) is None else
            LearnerState.from_dict(state[key], defaults=loaded).snapshot()
            for key in ("guard_rollback_point", "guard_window_start"))
        return self

    @classmethod
    def from_state_dict(cls, state: dict, **overrides) -> NaturalGradientLearner:
        """Rebuild a learner (model and options) from :meth:`state_dict` output;
        ``overrides`` replace recorded options.
        """
        options = {**_recorded_options(state), **overrides}
        return make_learner(model_from_config(state["model"]), cls=cls,
                            **options).load_state_dict(state)


def make_learner(model: Model, *, cls=None, **options) -> NaturalGradientLearner:
    """The learner for ``options``: :class:`NaturalLBFGS` for ``optimizer="lbfgs"``, else
    ``cls`` (default :class:`NaturalGradientLearner`).
    """
    cls = NaturalGradientLearner if cls is None else cls
    if options.get("optimizer") == "lbfgs" and not issubclass(cls, NaturalLBFGS):
        cls = NaturalLBFGS
    return cls(model, **options)


def _check_optimizer(state: dict, want: str) -> None:
    got = _recorded_options(state).get("optimizer")
    if got != want:
        what = "the L-BFGS optimizer (optimizer lbfgs)" if want == "lbfgs" else \
            f"optimizer {want!r}"
        raise CheckpointError(f"checkpoint was not written by {what}: its optimizer is "
                              f"{got!r}")


def _recorded_options(state: dict) -> dict:
    """The effective learner options of a checkpoint (also from the layout before the
    options table, where ``options["optimizer"]`` held the optimizer's own options).
    """
    if "fit_options" in state:
        return opts.upgrade_recorded(state["fit_options"])
    legacy = dict(state["options"])
    optimizer = dict(legacy.pop("optimizer"))
    if "schedule" in optimizer:
        optimizer["step_schedule"] = optimizer.pop("schedule")
    name = optimizer.pop("name")
    out = opts.upgrade_recorded({**legacy, **optimizer, "optimizer": name})
    return {k: v for k, v in out.items() if k in opts.LEARNER_OPTIONS}


class NaturalLBFGS(NaturalGradientLearner):
    """The learner with ``optimizer="lbfgs"``: batch L-BFGS on ``J(φ)``,
    ``φ = G(θ_fixed)^½ θ``, re-whitened every round (see the module docstring).

    Examples
    --------
    >>> from natgrad_stream.models import make_model
    >>> X = np.random.default_rng(1).standard_normal((1000, 2)) * [1.0, 50.0]
    >>> noise = np.random.default_rng(2).logistic(size=1000)
    >>> y = (X @ [1.0, 0.02] + noise > 0).astype(float)
    >>> NaturalLBFGS(make_model("logistic", 2)).fit((X, y)).converged
    True
    """

    def __init__(self, model: Model, **options):
        if options.setdefault("optimizer", "lbfgs") != "lbfgs":
            raise ValueError("NaturalLBFGS runs optimizer 'lbfgs'")
        super().__init__(model, **options)

    @classmethod
    def from_state_dict(cls, state: dict, **overrides) -> NaturalLBFGS:
        """Rebuild from :meth:`state_dict` output of an L-BFGS run."""
        _check_optimizer(state, "lbfgs")
        return super().from_state_dict(state, **overrides)


# -- strategies ------------------------------------------------------------------------------
class _Strategy:
    """How :meth:`NaturalGradientLearner.fit` spends the data: the loop's one variable part.

    ``make_optimizer(options)`` the update rule (None: no state to transport);
    ``plan(epochs=, rounds=, **stream)`` the fit's extent; ``check_source(source)``;
    ``total_rows(source, plan)``; ``run(source, plan, callbacks, max_samples) ->
    interrupted``; ``result(source, seconds=, interrupted=, rows=)``; ``cursor()`` and
    ``status()`` for callbacks and progress lines.
    """

    def __init__(self, learner: NaturalGradientLearner):
        self.learner = learner

    def require_steps(self) -> None:
        """Raise unless :meth:`NaturalGradientLearner.step` applies."""

    def check_source(self, source) -> None:
        """Raise if the strategy cannot read ``source``."""

    def settle(self, plan: dict, source) -> None:
        """Complete ``plan`` once the source is known (in place)."""


class _Streaming(_Strategy):
    """Per-batch steps of a streaming optimizer of φ (sgd, momentum, adam)."""

    def make_optimizer(self, eff: dict):
        return make_optimizer(eff["optimizer"], lr=eff["lr"], schedule=eff["step_schedule"])

    def cursor(self) -> Cursor:
        return self.learner.state.cursor

    def status(self) -> str:
        """``epoch k/E | rewhitens n``, for people: while fitting, the pass under way
        counted from 1 (records keep the cursor's 0-based epoch) of the fit's ``E``; once
        the fit has returned, the last pass it worked in.
        """
        s = self.learner.state
        total = getattr(self, "epochs", None)
        if getattr(self, "running", False):
            current = s.cursor.epoch + 1 if total is None else min(s.cursor.epoch + 1, total)
        else:
            current = max(1, s.cursor.epoch + (1 if s.cursor.mid_epoch else 0))
        of = "" if total is None else f"/{total}"
        return f"epoch {current}{of} | rewhitens {s.rewhitens}"

    def plan(self, *, epochs, rounds, **stream) -> dict:
        if rounds is not None:
            raise ValueError("rounds applies only to optimizer 'lbfgs'")
        epochs = None if epochs is None else opts.BY_NAME["epochs"].parse(epochs)
        self.running = True  # for status()
        return {"epochs": epochs, **stream}

    def settle(self, plan: dict, source) -> None:
        """A fit left without ``epochs`` runs until its stopping rule holds, at most
        :data:`AUTO_MAX_EPOCHS` passes (or the model's
        :attr:`~natgrad_stream.models.Model.auto_max_epochs`), where its later passes
        converge (Fisher scoring on a model whose
        :attr:`~natgrad_stream.models.Model.scoring_converges`, or the L-BFGS hand-over) on
        a source that can be read again; otherwise it makes one pass.
        """
        if plan["epochs"] is None:
            lr = self.learner
            again = _rereadable(source) and source.n_rows is not None
            converges = lr.refine in ("lbfgs", "newton-cg") or (
                lr.model.scoring_converges and lr.refine == "scoring")
            cap = lr.model.auto_pass_cap(source.n_rows or 1) or AUTO_MAX_EPOCHS
            plan["epochs"] = cap if again and converges and lr.forget is None else 1
        lr = self.learner
        if lr.forget is not None and plan["epochs"] > 1 and lr.refine != "stream":
            raise OptionError(f"forget applies to streaming steps (--follow, one pass, or "
                              f"--refine stream); the passes after the first ({lr.refine}) "
                              "fit the whole data with equal weights: give --epochs 1 or "
                              "--refine stream")
        if lr.forget is not None and _rereadable(source):  # a stored stream: forgetting
            plan["shuffle"] = False  # weighs its rows by their age in stored order
        self.epochs = plan["epochs"]  # for status()

    def total_rows(self, source, plan) -> int | None:
        return None if source.n_rows is None else source.n_rows * plan["epochs"]

    def run(self, source, plan, callbacks, max_samples) -> bool:
        """Stream the batches of ``plan``; returns whether the run was interrupted.

        An epoch planned over fewer rows than the source now has (rows appended since a
        checkpoint) finishes over the rows it planned; the new rows join at the next epoch.
        """
        s = self.learner.state
        n_rows = source.n_rows
        self._check_lanes_resume()
        if n_rows is not None and s.epoch_rows is not None and s.epoch_rows != n_rows \
                and s.cursor.mid_epoch:
            if s.epoch_rows > n_rows:
                raise DataError(f"has {n_rows} rows, fewer than the {s.epoch_rows} the "
                                "interrupted epoch planned: the data changed",
                                array=source.names[0])
            if self._stream(row_prefix(source, s.epoch_rows), plan, callbacks, max_samples,
                            epochs=s.cursor.epoch + 1):
                return True
        lr = self.learner
        if lr.refine == "stream" or plan["epochs"] <= 1 or n_rows is None \
                or not _rereadable(source):
            return self._stream(source, plan, callbacks, max_samples, epochs=plan["epochs"])
        if self._stream(source, plan, callbacks, max_samples, epochs=1):
            return True
        if lr.refine == "lbfgs":
            return self._handover(source, plan, callbacks, max_samples)
        return self._refine(source, plan, callbacks, max_samples)

    def _handover(self, source, plan, callbacks, max_samples) -> bool:
        """Passes after the first by L-BFGS in the natural space (``refine="lbfgs"``):
        rounds of the L-BFGS strategy, each re-whitened at its start, until its rules hold
        (``lbfgs_tol``, ``lbfgs_gtol``) or the pass cap. Every evaluation is a pass, and the
        cap is exact: a round it stops returns its best point evaluated (a resumed run then
        starts a new round there; rounds are the exact restart points otherwise).
        """
        lr = self.learner
        s = lr.state
        rounds = _LBFGSRounds(lr)
        cap = s.samples + (plan["epochs"] - s.cursor.epoch) * source.n_rows
        budget = cap if max_samples is None else min(cap, max_samples)
        while s.cursor.epoch < plan["epochs"] and not s.converged and not _stalled(s):
            if lr._out_of_budget(max_samples):
                return True
            if lr._round_limit is not None and s.rounds >= lr._round_limit:
                return False  # a restart's screen (training/restarts.py): paused at a
                # round's end, the exact point a later fit() continues from
            complete = rounds._round(source, callbacks, budget)
            s = lr.state  # a round cut by a stop request put its start back
            if not complete and lr._stop_requested:
                return True
            s.cursor = Cursor(1 + s.evaluations, 0, 0, s.samples)
            s.epoch_rows = source.n_rows
            if not complete:  # stopped by max_samples or the cap
                return lr._out_of_budget(max_samples)
        return False

    def _refine(self, source, plan, callbacks, max_samples) -> bool:
        """Passes after the first: Fisher scoring in φ (module docstring of
        :mod:`natgrad_stream.training.learner`): each pass evaluates ``J``, ``∇J`` and ``G``
        at θ on the whole data; an accepted point re-whitens there and takes the Newton
        step ``θ ← θ − G_reg⁻¹∇J`` (Fisher scoring; IRLS for GLMs with the model metric),
        a rejected one (Armijo on ``J``) halves the step. The low-rank structure's pass
        also sketches the whole data's ``G`` with the running estimate's test matrix
        (:meth:`_sketch_test`), re-whitens by it and preconditions Newton–CG by it. With
        ``tol`` the passes stop, with no further step, once ``½∇Jᵀ G⁻¹ ∇J ≤ tol·|J|``, so
        θ is then the point measured. Each pass depends only on the state at its start, so
        a run resumed at any pass equals an uninterrupted one whatever its ``epochs``.
        """
        lr = self.learner
        s = lr.state
        tol = _refine_tol(lr)
        if s.converged and not s.decrement <= tol * abs(s.train_loss):
            s.converged = False  # resumed with a stricter tolerance: go on
        while s.cursor.epoch < plan["epochs"] and not s.converged and s.unbounded is None:
            if lr._out_of_budget(max_samples):
                return True
            k = s.cursor.epoch
            counted = (s.samples, s.evaluations)  # restored when a pass is interrupted
            res = full_pass(lr, source, s.theta, metric=lr.metric,
                            rng_key=(lr.seed, k, RNG_LEARNER),
                            batch_rows=max(lr.batch_size, REFINE_BATCH_ROWS),
                            should_stop=lambda: lr._stop_requested,
                            progress=pass_progress(lr, callbacks), sketch=self._sketch_test())
            if res is None:  # stopped mid-pass: the state is as at the pass's start
                return True
            J, g, G, rows = res
            if not (math.isfinite(J) and np.all(np.isfinite(g))):
                raise NumericalError(f"non-finite loss ({J}) or gradient in pass {k + 1}; "
                                     f"|θ|max = {np.abs(s.theta).max():.3g}")
            event = {"event": "pass", "pass": k + 1, "samples": s.samples, "loss": J}
            refresh = None
            slack = REFINE_ROUNDOFF * abs(s.refine_loss)
            rejected = s.refine_dir is not None and not (
                J <= s.refine_loss + REFINE_ARMIJO * s.refine_t * s.refine_slope + slack)
            newton = None
            if not rejected and lr.refine == "newton-cg":
                cap = s.cg_cap or CG_MAX_ITERATIONS
                newton = self._newton_cg(source, g, G, J, cap)
                if newton is None:  # interrupted: the state is as at the pass's start
                    s.samples, s.evaluations = counted
                    return True
                event.update(cg_products=newton[1], cg_curvature_ok=newton[2], cg_cap=cap)
                if newton[3] and newton[2]:  # the cap cut the solve: more for the next
                    s.cg_cap = min(2 * cap, CG_MAX_ITERATIONS_LIMIT)
            if rejected:
                # the step did not decrease J enough: shorten it where the quadratic through
                # J(0), J'(0) and J(t) is least, within REFINE_SHRINK of its length
                t, slope, rise = s.refine_t, s.refine_slope, J - s.refine_loss
                curv = rise - slope * t
                frac = -slope * t / (2.0 * curv) if curv > 0 and math.isfinite(curv) else 0.0
                s.refine_t = t * min(max(frac, REFINE_SHRINK[0]), REFINE_SHRINK[1])
                stalled = s.refine_t < 0.5 ** REFINE_MAX_HALVINGS
                if stalled:  # back to the best point measured
                    s.theta, J = s.refine_theta.copy(), s.refine_loss
                    s.refine_dir = None
                else:
                    s.theta = s.refine_theta + s.refine_t * s.refine_dir
                s.refine_growth = 0
                event.update(accepted=False, step=s.refine_t)
                if stalled:
                    event["stalled"] = True
            else:
                # a parameter with no metric but a gradient (predictions saturated on its
                # rows) is one no Newton step can move: the decrement does not see it
                stuck = (_metric_diagonal(G) <= 0) & (g != 0)
                # (the pass's metric is factored in place: no copy of it beside W)
                refresh = lr.refresh(reason="pass", metric=G, consume=True,
                                     **{"pass": k + 1})
                del G
                gphi = s.whitener.grad_phi(g)
                # the Newton decrement ½ gᵀH⁻¹g: by the metric's factor (scoring), or by
                # the solved direction (newton-cg: H d = −g)
                s.decrement = 0.5 * float(gphi @ gphi) if newton is None else \
                    max(0.0, -0.5 * float(g @ newton[0]))
                s.grad = g
                tol = _refine_tol(lr)
                s.converged = s.decrement <= tol * abs(J) and not stuck.any()
                s.refine_dir = None
                if stuck.any():
                    # back to their starting values, where their rows' predictions are not
                    # saturated and the metric sees them again; the next pass measures it
                    start = lr.model.init_params()
                    s.theta = s.theta.copy()
                    s.theta[stuck] = start[stuck]
                    event["reset_parameters"] = np.flatnonzero(stuck).tolist()
                    warnings.warn(f"pass {k + 1}: parameter(s) "
                                  f"{np.flatnonzero(stuck).tolist()} had a zero metric but "
                                  "a nonzero gradient (predictions saturated on their "
                                  "rows); reset to their starting values", RuntimeWarning,
                                  stacklevel=2)
                elif not s.converged and self._unbounded(
                        J, -s.whitener.theta(gphi) if newton is None else newton[0], event):
                    pass  # the fit stops here, at the point measured (no further step)
                elif not s.converged:
                    d = -s.whitener.theta(gphi) if newton is None else newton[0]
                    s.refine_theta, s.refine_dir, s.refine_t = s.theta.copy(), d, 1.0
                    s.refine_loss, s.refine_slope = J, float(g @ d)
                    s.theta = s.theta + d
                    s.steps += 1
                event.update(accepted=True, decrement=s.decrement, converged=s.converged)
            s.phi = s.whitener.phi(s.theta)
            s.train_loss = s.last_epoch_loss = J
            s.cursor = Cursor(k + 1, 0, 0, s.samples)
            s.epoch_rows = source.n_rows
            gphi = s.whitener.grad_phi(g)
            lr._report(callbacks, StepInfo(
                loss=J, grad_norm=float(np.linalg.norm(g)),
                natural_grad_norm=float(np.linalg.norm(gphi)), rows=rows, samples=s.samples,
                steps=s.steps, refresh=refresh, full_pass=True, events=(event,)))
            if event.get("stalled"):
                break
        return False

    def _sketch_test(self) -> np.ndarray | None:
        """The low-rank structure's test matrix ``T`` (P, k) for a whole-data pass to
        sketch its metric with: the running estimate's (checkpointed with it) widened to
        ``k = min(P, REFINE_RANK_FACTOR·rank)`` columns
        (:func:`~natgrad_stream.geometry.lowrank.widen_test_matrix`); None for the other
        structures.
        """
        lr = self.learner
        if lr.structure != "lowrank" or lr.rank < 1:
            return None
        P = lr.model.n_params
        return widen_test_matrix(lr.state.fisher.test_for(np.ones(P)),
                                 min(P, REFINE_RANK_FACTOR * lr.rank))

    def _newton_cg(self, source, g: np.ndarray, G, J: float, cap: int):
        """The Newton direction at θ for ``refine="newton-cg"``
        (:func:`~natgrad_stream.optim.newton_cg.newton_direction`): conjugate gradients on
        ``H v`` passes over the data (the metric, penalty included), preconditioned by
        the pass's own metric: its diagonal-plus-low-rank model for a sketched ``G``
        (:func:`~natgrad_stream.optim.newton_cg.lowrank_preconditioner`), the inverse
        ``W⁻¹W⁻ᵀ`` of the Kronecker structure's measured factors (K-FAC), else the
        measured diagonal with the intercept's column; at most ``cap`` conjugate-gradient
        products. Returns ``(d, products, curvature_ok, capped)`` (``capped``: the solve
        used all ``cap`` products), or None when a pass was interrupted.
        """
        lr = self.learner
        theta = lr.state.theta

        def hess_vec(v):
            return metric_vector_pass(lr, source, theta, v,
                                      should_stop=lambda: lr._stop_requested)

        def solve(precond, extra: int = 0):
            out = newton_direction(g, precond, hess_vec, scale=J, max_iter=cap)
            return None if out is None else (out[0], out[1] + extra, out[2], out[1] >= cap)

        if isinstance(G, KroneckerMetric):
            W = whiten_kronecker(G, method=lr.whitening, damping=lr.damping, floor=lr.floor)
            return solve(W.natural_gradient)
        if isinstance(G, SketchedMetric):
            precond = lowrank_preconditioner(G, damping=lr.damping, floor=lr.floor)
            if precond is not None:
                return solve(precond)
            G = G.diagonal  # (a sketch that cannot be factored: the diagonal's)
        precond = np.diag(G).copy() if G.ndim == 2 else G.copy()
        positive = precond > 0
        precond[~positive] = precond[positive].mean() if positive.any() else 1.0
        k = lr.model.intercept_index
        products = 0
        if k is not None and G.ndim == 1:  # the intercept's column: one more pass
            e = np.zeros_like(g)
            e[k] = 1.0
            column = hess_vec(e)
            if column is None:
                return None
            products = 1
            precond = arrow_preconditioner(precond, column, k)
        return solve(precond, products)

    def _unbounded(self, J: float, d: np.ndarray, event: dict) -> bool:
        """Whether the coefficients grow without bound: :data:`UNBOUNDED_PASSES` accepted
        passes in a row whose Newton step ``d`` (shape (P,)) lengthens θ while the
        decrement stays above :data:`UNBOUNDED_DECREMENT`·|J| (an unpenalized fit only: a
        penalty bounds θ). Then ``state.unbounded`` (and ``event["unbounded_parameters"]``)
        holds the parameters the step moves most, at most 10, and the fit stops at θ.
        """
        s, lr = self.learner.state, self.learner
        if lr.penalty.active:
            return False
        growing = s.decrement > UNBOUNDED_DECREMENT * abs(J) and \
            np.linalg.norm(s.theta + d) > np.linalg.norm(s.theta)
        s.refine_growth = s.refine_growth + 1 if growing else 0
        if s.refine_growth < UNBOUNDED_PASSES:
            return False
        s.unbounded = _moving_most(d)
        event["unbounded_parameters"] = s.unbounded
        return True

    def _check_lanes_resume(self) -> None:
        """Refuse to continue an epoch mid-way under the other way of streaming (a lanes
        plan cannot be continued by one stream, nor the reverse; at an epoch boundary
        either may take over).
        """
        lr = self.learner
        s = lr.state
        mid_epoch = s.cursor.mid_epoch
        if lr._backend is None and s.lanes is not None and mid_epoch:
            raise OptionError("this run was streaming on a Dask cluster and stopped "
                              f"mid-epoch (epoch {s.cursor.epoch + 1}): resume it with "
                              "--dask or --dask-workers")
        if lr._backend is not None and s.lanes is None and mid_epoch:
            raise OptionError("this run was streaming in one process and stopped mid-epoch "
                              f"(epoch {s.cursor.epoch + 1}): resume it without --dask")

    def _forget_other_mode(self) -> None:
        """At an epoch boundary where the other way of streaming takes over: drop its lane
        cursors (one process) and a divergence rollback point it recorded mid-epoch (its
        cursor means something else in this mode).
        """
        lr = self.learner
        s = lr.state
        on_cluster = lr._backend is not None
        if not on_cluster:
            s.lanes = None
        good = lr._last_good
        if good is not None:
            g = good.restore()
            if g.cursor.mid_epoch and (g.lanes is not None) != on_cluster:
                lr._last_good = s.snapshot()

    def _stream(self, source, plan, callbacks, max_samples, *, epochs) -> bool:
        """Stream batches up to ``epochs``; after a divergence rollback the stream reopens
        at the restored cursor, so the rolled-back rows are learned again (with the shorter
        step) and ``samples`` stays the rows learned.
        """
        lr = self.learner
        self._forget_other_mode()
        if lr._backend is not None:
            return self._stream_lanes(source, plan, callbacks, max_samples, epochs=epochs)
        while True:
            s = lr.state
            epoch = s.cursor.epoch
            if s.cursor.epoch >= epochs:
                return False
            stream = source.batches(batch_size=lr.batch_size, epochs=epochs, seed=lr.seed,
                                    shuffle=plan["shuffle"], start=s.cursor,
                                    **stream_plan(lr, source, prefetch=plan["prefetch"],
                                                  chunks_per_read=plan["chunks_per_read"],
                                                  batch_size=lr.batch_size,
                                                  shuffle=plan["shuffle"]),
                                    read_buffer_bytes=lr.read_buffer_bytes,
                                    digests=s.digests, **lr.model.data_checks())
            rolled_back = False
            with stream:
                for batch in stream:
                    if max_samples is not None and lr.state.samples >= max_samples:
                        return True
                    info = lr.step(batch.X, batch.y, batch.w)
                    s = lr.state
                    if any(e.get("event") == "rollback" for e in info.events):
                        lr._report(callbacks, info)
                        rolled_back = True
                        break
                    s.epoch_rows = source.n_rows
                    if batch.cursor.epoch != epoch:
                        self._close_epoch(s, self.learner._weights_label)
                        epoch = batch.cursor.epoch
                    s.cursor = batch.cursor
                    lr._report(callbacks, info)
                    if lr._stop_requested or (max_samples is not None and
                                              s.samples >= max_samples):
                        return True
            if rolled_back:
                continue
            if lr._stop_requested:  # a stop while a followed source waited for rows
                return True
            _refuse_weightless(lr.state, lr._weights_label)
            lr._check_divergence(final=True)
            return False

    def _stream_lanes(self, source, plan, callbacks, max_samples, *, epochs) -> bool:
        """:meth:`_stream` on a Dask cluster: synchronous data-parallel steps, each on the
        merged next batch of every lane (:class:`~natgrad_stream.distributed.DaskBackend`).
        The cursor counts steps in the epoch (``read_index``); the lanes' own cursors are
        in the state, so a resume, a retried task and a rollback all re-read exactly.
        """
        lr = self.learner
        backend = lr._backend
        per_read = plan["chunks_per_read"]
        while True:
            s = lr.state
            epoch = s.cursor.epoch
            if epoch >= epochs:
                return False
            if s.lanes is None:  # a new epoch, on the run's lanes
                if s.lane_count is None:  # the run's first: one lane per worker, for good
                    workers = backend.await_workers(lambda: lr._stop_requested)
                    if workers is None:
                        return True
                    s.lane_count = len(workers)
                s.lanes = [Cursor().to_dict()] * s.lane_count
                log.info("epoch %d on %d lanes: steps of %d × %d = %d rows", epoch + 1,
                         len(s.lanes), len(s.lanes), lr.batch_size,
                         len(s.lanes) * lr.batch_size)
            if s.data_init and s.steps == 0:
                lr._take_data_start(backend.lane_batch(
                    lr, epoch, s.lanes, "initial_params", chunks_per_read=per_read,
                    n_rows=source.n_rows))
            if max_samples is not None and s.samples >= max_samples:
                return True
            need_metric = lr._metric_due()
            got = backend.lane_step(lr, epoch, s.lanes, s.theta,
                                    metric=lr.metric if need_metric else None,
                                    chunks_per_read=per_read,
                                    rng_key=(lr.seed, epoch, s.cursor.read_index,
                                             RNG_LEARNER),
                                    should_stop=lambda: lr._stop_requested,
                                    n_rows=source.n_rows)
            if got is None:  # stopped while the step's tasks ran: the state is as before
                return True
            stats, lanes = got
            if stats is None:  # every lane is exhausted: the epoch is over
                self._close_epoch(s, self.learner._weights_label)
                s.cursor = Cursor(epoch + 1, 0, 0, s.samples)
                s.lanes = None
                if epoch + 1 >= epochs:
                    lr._check_divergence(final=True)
                continue
            before_lanes = s.lanes

            def power_iteration(v, lanes=before_lanes, epoch=epoch):
                st = lr.state
                return backend.lane_batch(lr, epoch, lanes, "curvature", st.theta,
                                          st.whitener, v, lr.metric,
                                          CURVATURE_POWER_ITERATIONS, lr.penalty,
                                          chunks_per_read=per_read, n_rows=source.n_rows)

            info = lr.step_sums(stats.loss, stats.weight, stats.grad, stats.metric,
                                stats.rows, power_iteration=power_iteration,
                                extra_state={"lanes": lanes})
            s = lr.state
            if any(e.get("event") == "rollback" for e in info.events):
                lr._report(callbacks, info)
                continue
            s.epoch_rows = source.n_rows
            s.cursor = Cursor(epoch, s.cursor.read_index + 1, 0, s.samples)
            lr._report(callbacks, info)
            if lr._stop_requested or (max_samples is not None and s.samples >= max_samples):
                return True

    @staticmethod
    def _close_epoch(s: LearnerState, weights: str = "w") -> None:
        _refuse_weightless(s, weights)
        if s.epoch_loss_weight:
            s.last_epoch_loss = s.epoch_loss_sum / s.epoch_loss_weight
        s.epoch_loss_sum = s.epoch_loss_weight = 0.0

    def unconverged_note(self, source, plan) -> str | None:
        """One line when the pass cap ended a fit before its stopping rule held (None when
        the rule held, or for sources that cannot be streamed again).
        """
        s, lr = self.learner.state, self.learner
        if s.converged or not _rereadable(source) or source.n_rows is None:
            return None
        if lr.forget is not None and lr.refine != "stream":
            return None  # one forgetting pass by design: later passes would be refused
        more = max(2, 2 * plan["epochs"])
        how = (f"continue with --resume --epochs {more} (Python: fit(..., epochs={more}) on "
               "the same learner)")
        if lr.refine == "lbfgs":
            r = s.last_round or {}
            if _stalled(s):
                return _stall_note(r)
            if not r:  # the cap ended the fit before the hand-over measured anything
                return (f"stopped by the pass cap (epochs={plan['epochs']}) before any "
                        "convergence check (the L-BFGS rounds that check it start after "
                        f"the first pass); {how}")
            last = ("the last improving the loss by" if r.get("complete", True) else
                    "then one cut short by the cap (not checked), improving the loss by")
            done = f"after {s.rounds} complete L-BFGS round(s), {last}" if s.rounds else \
                "in its first L-BFGS round, cut short by the cap (not checked), improving " \
                "the loss by"
            return (f"not converged: stopped by the pass cap (epochs={plan['epochs']}) "
                    f"{done} {r.get('relative_improvement', math.nan):.3g} relative "
                    f"(lbfgs_tol {lr.lbfgs_tol:g}), max natural gradient "
                    f"{r.get('max_natural_grad', math.nan):.3g} (lbfgs_gtol "
                    f"{lr.lbfgs_gtol:g}); {how}")
        if lr.refine not in ("scoring", "newton-cg"):
            return (f"stopped by the pass cap (epochs={plan['epochs']}): streaming passes "
                    f"(refine='stream') check no stopping rule; {how}")
        if s.unbounded is not None:
            return _unbounded_note(s)
        if math.isnan(s.decrement):
            return (f"stopped by the pass cap (epochs={plan['epochs']}) before any "
                    "convergence check (the Newton decrement is measured by the passes "
                    f"after the first); {how}")
        tol = _refine_tol(lr)
        why = f"the {'Newton' if lr.refine == 'newton-cg' else 'Fisher-scoring'} step " \
            "stalled" if s.refine_dir is None and \
            s.cursor.epoch < plan["epochs"] else f"stopped by the pass cap " \
            f"(epochs={plan['epochs']})"
        loss = s.refine_loss if s.refine_dir is not None else s.train_loss
        return (f"not converged: {why} with the Newton decrement at "
                f"{s.decrement / abs(loss or 1.0):.3g}·|J|, above tol "
                f"{tol:.3g}·|J|; {how}")

    def result(self, source, *, seconds, interrupted, rows) -> FitResult:
        s = self.learner.state
        refine = self.learner.refine
        measured = not s.epoch_loss_weight and (
            (refine in ("scoring", "newton-cg") and not math.isnan(s.decrement))
            or (refine == "lbfgs" and (s.evaluations > 0 or s.stopped_theta is not None)))
        if measured:  # the loss of the fitted θ, which a scoring pass measured
            train, running = (s.refine_loss if s.refine_dir is not None else
                              s.fitted_loss), None
        else:  # streaming passes only: the mean of the batch losses, at moving θ
            train = None
            running = s.epoch_loss_sum / s.epoch_loss_weight if s.epoch_loss_weight else \
                s.last_epoch_loss
        train, objective = _split_objective(self.learner, train)
        return FitResult(samples=s.samples, steps=s.steps, rewhitens=s.rewhitens,
                         seconds=seconds, rows_per_s=rows / seconds if seconds else 0.0,
                         train_loss=train,
                         running_loss=None if running is None else float(running),
                         epochs=s.cursor.epoch, interrupted=interrupted,
                         converged=bool(s.converged),
                         decrement=None if math.isnan(s.decrement) else s.decrement,
                         objective=objective,
                         skipped_zero_weight_batches=s.skipped_zero_weight)


def _refuse_weightless(s: LearnerState, weights: str = "w") -> None:
    """Refuse data whose sample weights (the array named ``weights``), over a whole pass,
    sum to zero: every batch was skipped
    (:meth:`NaturalGradientLearner._skip_zero_weight`) and nothing was learned.
    """
    if s.steps == 0 and s.skipped_zero_weight:
        raise DataError(f"every sample weight of the pass is zero ({s.skipped_zero_weight} "
                        "batches, no step): data of zero total weight cannot be fitted",
                        array=weights)


class _LBFGSRounds(_Strategy):
    """Rounds of L-BFGS evaluations over a pass or a window of chunks."""

    def make_optimizer(self, eff: dict):
        return None  # L-BFGS keeps no state across rounds: nothing to transport

    def require_steps(self) -> None:
        raise TypeError("optimizer 'lbfgs' is a batch method: call fit(), not step()")

    def plan(self, *, epochs, rounds, **stream) -> dict:
        if epochs is not None:
            raise ValueError("epochs does not apply to optimizer 'lbfgs': pass rounds")
        total = self.learner.lbfgs_rounds if rounds is None else \
            opts.BY_NAME["lbfgs_rounds"].check_value("rounds", rounds)
        self.rounds, self.running = total, True  # for status()
        return {"rounds": total}

    def check_source(self, source) -> None:
        if not _rereadable(source):
            raise TypeError("L-BFGS streams its data many times: pass arrays, a Zarr group or "
                            f"path, or an ArraySource, not a one-shot {type(source).__name__}")

    def total_rows(self, source, plan) -> None:
        return None

    def cursor(self) -> Cursor:
        s = self.learner.state
        return Cursor(epoch=s.rounds, samples=s.samples)

    def status(self) -> str:
        """``round k/R | evaluations n`` while fitting (the round under way, from 1);
        ``rounds done k/R | ...`` once the fit has returned.
        """
        s = self.learner.state
        total = getattr(self, "rounds", None)
        of = "" if total is None else f"/{total}"
        if getattr(self, "running", False):
            current = s.rounds + 1 if total is None else min(s.rounds + 1, total)
            return f"round {current}{of} | evaluations {s.evaluations}"
        return f"rounds done {s.rounds}{of} | evaluations {s.evaluations}"

    def run(self, source, plan, callbacks, max_samples) -> bool:
        lr = self.learner
        if lr.window is not None and lr._backend is None:
            # window rounds may never read again a chunk an earlier round learned
            compare_recorded(source, lr.state.digests, read_buffer_bytes=lr.read_buffer_bytes)
        while lr.state.rounds < plan["rounds"] and not lr.state.converged \
                and not _stalled(lr.state):
            if lr._out_of_budget(max_samples) or \
                    not self._round(source, callbacks, max_samples):
                return True
        return False

    def unconverged_note(self, source, plan) -> str | None:
        """One line when the round cap ended a fit before its stopping rules held."""
        s = self.learner.state
        if s.converged or getattr(self.learner, "window", None) is not None:
            return None  # window mode runs every round by design
        if _stalled(s):
            return _stall_note(s.last_round)
        more = 2 * plan["rounds"]
        return (f"not converged: stopped by the round cap (lbfgs_rounds={plan['rounds']}) "
                "before a round improved the loss by at most lbfgs_tol or reached "
                f"lbfgs_gtol; continue with --resume --lbfgs-rounds {more} (Python: "
                f"fit(..., rounds={more}) on the same learner)")

    def result(self, source, *, seconds, interrupted, rows) -> LBFGSResult:
        s = self.learner.state
        grad = s.fitted_grad
        gphi = s.whitener.grad_phi(grad) if s.whitener is not None else grad
        train, objective = _split_objective(self.learner, s.fitted_loss)
        return LBFGSResult(
            samples=s.samples, steps=s.steps, rewhitens=s.rewhitens, seconds=seconds,
            rows_per_s=rows / seconds if seconds else 0.0, train_loss=train,
            objective=objective,
            epochs=round(s.samples / source.n_rows, 4), interrupted=interrupted,
            rounds=s.rounds, evaluations=s.evaluations, converged=s.converged,
            grad_norm=float(np.linalg.norm(grad)),
            natural_grad_norm=float(np.linalg.norm(gphi)))

    # -- one round ----------------------------------------------------------------------
    def _round(self, source: ArraySource, callbacks, max_samples) -> bool:
        """One round; returns False when it was interrupted."""
        lr = self.learner
        s = lr.state
        k, t0 = s.rounds, time.perf_counter()
        evals0, steps0 = s.evaluations, s.steps
        R = source.chunk_rows
        chunks = window_chunks(math.ceil(source.n_rows / R), lr.window, lr.seed, k)
        src = source if chunks is None else chunk_window(source, chunks)
        rng_key = (lr.seed, k, RNG_LEARNER)
        if k == 0 and s.data_init:
            self._start_from_data(source)
        start = s.snapshot()
        theta0 = s.theta.copy()
        lr._round_start = start
        try:
            return self._round_at(src, chunks, rng_key, theta0, callbacks, max_samples,
                                  k, t0, evals0, steps0)
        except DistributedError:
            # the cluster failed mid-round: back to the round's start, as a checkpoint
            # written after the last round holds it (this state is saved, and resumes)
            lr.state = start.restore()
            raise
        finally:
            lr._round_start = None

    def _round_tol_floor(self, J0: float) -> float:
        """The floor of a round's relative improvement's denominator: 1, or for a model
        with ``round_tol_from_start`` the |J| at the start of the fit's first round
        (recorded by the first round, kept in the checkpoint).
        """
        lr = self.learner
        if not lr.model.round_tol_from_start:
            return 1.0
        s = lr.state
        if not math.isfinite(s.round_tol_scale):
            s.round_tol_scale = abs(float(J0))
        return s.round_tol_scale

    def _round_at(self, src, chunks, rng_key, theta0, callbacks, max_samples, k, t0,
                  evals0, steps0) -> bool:
        lr = self.learner
        s = lr.state
        J0, g0, G, rows = self._pass(src, theta0, chunks=chunks, metric=lr.round_metric,
                                     rng_key=rng_key, callbacks=callbacks)
        if not (math.isfinite(J0) and np.all(np.isfinite(g0))):
            raise NumericalError(f"non-finite loss ({J0}) or gradient at the start of round "
                                 f"{k + 1}; |θ|max = {np.abs(theta0).max():.3g}")
        event = lr.refresh(reason="round", metric=G, round=k + 1)
        W = s.whitener
        self._report(callbacks, J0, g0, rows)
        for cb in callbacks:
            cb.on_refresh(lr, event)
        last_rows = [rows]

        def evaluate(theta):
            J, g, _, last_rows[0] = self._pass(src, theta, chunks=chunks,
                                               callbacks=callbacks)
            return J, g

        def in_domain(theta) -> bool:
            try:
                lr.model.check_params(theta)
            except ValueError:
                return False
            return True

        def count_iteration():
            s.steps += 1

        # lbfgs_tol is the rule between rounds (_round_verdict); inside a round L-BFGS-B's
        # per-iteration test stays at the default (a looser one, e.g. the mlp's 1e-5 a
        # round, stopped rounds after a few iterations at a plateau of the line search)
        res = lbfgs_round(evaluate, W, theta0, J0, g0, iters=lr.lbfgs_iters,
                          memory=lr.lbfgs_memory, tol=min(lr.lbfgs_tol, LBFGS_TOL),
                          gtol=lr.lbfgs_gtol,
                          in_domain=in_domain,
                          should_stop=lambda: lr._out_of_budget(max_samples),
                          on_evaluation=lambda J, g: self._report(callbacks, J, g,
                                                                  last_rows[0]),
                          on_iteration=count_iteration)
        s.theta, s.train_loss, s.grad = res.theta, res.J, res.grad
        start, lr._round_start = lr._round_start, None  # the round is over: its end is the
        # state to save (or its start, for a round a stop request cut short: below)
        s.phi = W.phi(s.theta)
        gphi = W.grad_phi(res.grad)
        rel = (J0 - res.J) / max(abs(J0), abs(res.J), self._round_tol_floor(J0))
        stalled = False
        if res.complete:
            s.rounds += 1
            s.converged, stalled = _round_verdict(res.J < J0, rel, gphi, lr,
                                                  full=chunks is None)
        record = {
            "event": "round", "round": k + 1, "complete": res.complete, "loss_start": J0,
            "loss": res.J, "relative_improvement": rel,
            "grad_norm": float(np.linalg.norm(res.grad)),
            "natural_grad_norm": float(np.linalg.norm(gphi)),
            "max_natural_grad": float(np.abs(gphi).max()),
            "iterations": s.steps - steps0, "evaluations": s.evaluations - evals0,
            "total_evaluations": s.evaluations, "samples": s.samples,
            "rows_per_evaluation": rows,
            "window": None if chunks is None else chunks.tolist(),
            "nonfinite_trials": res.nonfinite_trials, "status": res.status,
            "converged": s.converged, "stalled": stalled,
            "rewhiten": {k_: v for k_, v in event.items() if k_ not in ("event", "round")},
            "seconds": time.perf_counter() - t0,
        }
        if not res.complete and lr._stop_requested:
            self._keep_round_start(start, res)
        else:
            s.last_round = record
            s.stopped_theta = s.stopped_grad = None
            s.stopped_loss = math.nan
        for cb in callbacks:
            hook = getattr(cb, "on_round", None)  # callbacks need not subclass Callback
            if hook is not None:
                hook(lr, record)
        return res.complete

    def _keep_round_start(self, start, res) -> None:
        """A round a stop request (SIGINT, SIGTERM) cut short: the state goes back to the
        round's start, which a resume (or the next fit) continues from exactly as after a
        kill, since L-BFGS's memory and line search exist only inside a round; the best
        point the cut round evaluated (or a better one an earlier cut of this round found)
        is kept as what the run reports (:attr:`LearnerState.fitted_theta`).
        """
        lr = self.learner
        s = lr.state = start.restore()
        if s.stopped_theta is None or res.J < s.stopped_loss:
            s.stopped_theta, s.stopped_loss, s.stopped_grad = res.theta, res.J, res.grad

    def _start_from_data(self, source: ArraySource) -> None:
        """Apply the model's data-informed start (:meth:`Model.initial_params`) from the
        first evaluation batch, as the streaming strategy does.
        """
        lr = self.learner
        if lr._backend is not None:
            start = lr._backend.initial_params(lr.batch_size, lr.read_buffer_bytes)
        else:
            with source.batches(batch_size=lr.batch_size, epochs=1, shuffle=False,
                                read_buffer_bytes=lr.read_buffer_bytes,
                                digests=lr.state.digests,
                                **lr.model.data_checks()) as stream:
                first = next(iter(stream), None)
                start = None if first is None else \
                    lr.model.initial_params(first.X, first.y, first.w)
        lr._take_data_start(start)  # once known: a failed read keeps data_init

    def _pass(self, source: ArraySource, theta: np.ndarray, *, chunks=None, metric=None,
              rng_key=None, callbacks=()):
        """One streaming pass: ``(J, ∇θJ, metric or None, rows)``, averaged by weight."""
        lr = self.learner
        # --optimizer lbfgs reads batch_size rows at a time (its own option); the hand-over
        # after a streaming pass reads whole-pass batches, as Fisher scoring does
        rows = lr.batch_size if lr.optimizer is None else max(lr.batch_size, REFINE_BATCH_ROWS)
        return full_pass(lr, source, theta, metric=metric, rng_key=rng_key,
                         batch_rows=rows, chunks=chunks, progress=pass_progress(lr, callbacks))

    def _report(self, callbacks, J, g, rows) -> None:
        if not callbacks:
            return
        lr = self.learner
        gphi = lr.state.whitener.grad_phi(g)
        info = StepInfo(loss=J, grad_norm=float(np.linalg.norm(g)),
                        natural_grad_norm=float(np.linalg.norm(gphi)), rows=rows,
                        samples=lr.state.samples, steps=lr.state.steps, full_pass=True)
        lr._report(callbacks, info)


def _split_objective(lr: NaturalGradientLearner, objective) -> tuple:
    """``(train_loss, objective)`` of the summary from the measured objective ``J`` at the
    fitted θ (None: not measured): the data loss ``J − λ/2‖θ_S‖²`` and, with an L2
    penalty, ``J`` itself (None without one).
    """
    if objective is None:
        return None, None
    J = float(objective)
    if not lr.penalty.active:
        return J, None
    return J - lr.penalty.value(lr.theta), J


def _stalled(s: LearnerState) -> bool:
    """Whether the last L-BFGS round stalled (:func:`_round_verdict`)."""
    return bool((s.last_round or {}).get("stalled"))


def _as_slice(idx: np.ndarray):
    """``idx`` (sorted ints) as a slice when they are contiguous, else as they are."""
    if idx.size and int(idx[-1]) - int(idx[0]) == idx.size - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _moving_most(d: np.ndarray, most: int = 10) -> list[int]:
    """Indices of the parameters a move ``d`` (shape (P,)) changes most: at most ``most``,
    each by at least a tenth of the largest change (empty when nothing moved).
    """
    d = np.nan_to_num(np.abs(np.asarray(d, dtype=np.float64)), nan=np.inf)
    if d.size == 0 or not d.max() > 0:
        return []
    order = np.argsort(-d, kind="stable")
    return order[d[order] >= 0.1 * d[order[0]]][:most].tolist()


def _unbounded_note(s: LearnerState) -> str:
    """The warning line of a fit stopped because its coefficients grow without bound."""
    J = s.train_loss
    return (f"not converged: the coefficients grow without bound (max |θ| = "
            f"{np.abs(s.theta).max():.3g} after {s.cursor.epoch} passes; the last "
            f"{UNBOUNDED_PASSES} Newton steps each lengthened θ while the loss fell to "
            f"{J:.3g} with the decrement still {s.decrement / abs(J or 1.0):.2g}·|J|): the "
            "data look separable (a direction along which the classes are split and the loss "
            "only approaches its infimum at infinity), or the parameters they move most, "
            f"{s.unbounded}, are not identified; "
            "no finite optimum exists: set an L2 penalty (--l2 λ; the estimators' C or "
            "alpha)")


def _stall_note(record: dict) -> str:
    """The warning line of a fit that a stalled L-BFGS round ended (:func:`_round_verdict`)."""
    return (f"not converged: L-BFGS round {record.get('round')} stalled (no point below its "
            f"start; {record.get('status')}) with max natural gradient "
            f"{record.get('max_natural_grad', math.nan):.3g}; more passes would repeat it "
            "(another model seed starts elsewhere)")


def _round_verdict(descended: bool, rel: float, gphi: np.ndarray, lr, *,
                   full: bool) -> tuple[bool, bool]:
    """``(converged, stalled)`` after a complete L-BFGS round on the whole data (``full``).

    ``descended``: the round found a point below its start; ``rel`` its relative
    improvement; ``gphi`` (P,) the natural gradient at the round's best point. The gradient
    rule (``max |∇φJ| ≤ lbfgs_gtol``) always certifies convergence. The improvement rule
    (``rel ≤ lbfgs_tol``) does only for a round that descended: a round whose best point is
    its start had its first line search fail (e.g. every trial far above ``J``, as when
    parameters of saturated units have run off to huge values and ``θ = W⁻¹φ`` loses them
    to round-off), which says nothing about stationarity. Such a round is *stalled*: the
    next round would re-whiten at the same θ and repeat it exactly, so the fit stops there,
    not converged. Window rounds (``full`` False) never converge nor stall.
    """
    if not full:
        return False, False
    if float(np.abs(gphi).max()) <= lr.lbfgs_gtol:
        return True, False
    if descended:
        return rel <= lr.lbfgs_tol, False
    return False, True


def pass_progress(lr: NaturalGradientLearner, callbacks):
    """``progress(rows)`` for :func:`full_pass`: the callbacks' ``on_pass_progress``
    hooks (callbacks need not subclass Callback), or None when none has one.
    """
    hooks = [h for h in (getattr(cb, "on_pass_progress", None) for cb in callbacks)
             if h is not None]
    if not hooks:
        return None

    def progress(rows: int) -> None:
        for hook in hooks:
            hook(lr, rows)
    return progress


def _metric_diagonal(G) -> np.ndarray:
    """The diagonal (P,) of a whole-data pass's metric: (P, P), (P,), sketched, or the
    Kronecker structure's factors with the measured diagonal beside them.
    """
    if isinstance(G, SketchedMetric):
        return G.diagonal
    if isinstance(G, KroneckerMetric):
        return G.exact_diagonal
    return np.diag(G) if G.ndim == 2 else G


def model_structure(structure: str) -> str:
    """The structure the model accumulates for a learner's ``structure``: the low-rank
    structure's batch sums are the diagonal's plus its own sketch (:meth:`_sketched_sum`)
    and its whole-data passes measure the diagonal; the Kronecker structure's batches sum
    its factors only (the model's ``kronecker_sums``) and its passes both
    (:func:`full_pass`).
    """
    return "diagonal" if structure in ("lowrank", "kronecker") else structure


#: Parameters of a full metric from which older metric sums of undo and rollback points
#: are kept in temporary files while a refresh or a drift check runs (P × P: 32 MiB).
SPILL_METRIC_PARAMS = WIDE_METRIC_PARAMS


def reads_ahead(lr: NaturalGradientLearner, prefetch: int, *, metric: bool = True) -> int:
    """Reads a stream of ``lr``'s queues ahead: ``prefetch``, but fewer for a full metric of
    at least ``WIDE_METRIC_PARAMS`` parameters, where each buffer not held is 123 MB at
    d = 3,000. A stream that accumulates the metric gets -1 (dense data; sparse streams
    keep two buffers): one read buffer, the next read decoded once the rows of the last
    are consumed, as its O(P²) work a row (the metric's batches, the refreshes: about 500
    rows/s there) dwarfs the decoding (reads of 10,240 rows in well under a second); one
    that does not (the loss and metric-vector passes, decoding-bound) gets 0: two
    buffers, the next read decoded while one is consumed. The rows' order does not
    depend on it (:func:`stream_plan`).
    """
    if lr.structure == "full" and lr.model.n_params >= WIDE_METRIC_PARAMS:
        return -1 if metric else min(int(prefetch), 0)
    return prefetch


def stream_plan(lr: NaturalGradientLearner, source, *, prefetch: int, chunks_per_read: int,
                batch_size: int, shuffle: bool, metric: bool = True) -> dict:
    """``prefetch`` and ``chunks_per_read`` of a stream of ``lr`` over ``source``: the
    reads of the plan the requested ``prefetch`` gets within the byte budget, with the
    buffers of :func:`reads_ahead`. Fewer buffers would let larger reads fit; they are
    not taken, so the reads, the batches and a shuffled order are those of the requested
    plan whatever the buffers.
    """
    ahead = reads_ahead(lr, prefetch, metric=metric)
    plan = getattr(source, "read_plan", None)
    if ahead < prefetch and plan is not None:
        chunks_per_read = plan(chunks_per_read=chunks_per_read, prefetch=prefetch,
                               batch_size=batch_size, shuffle=shuffle,
                               read_buffer_bytes=lr.read_buffer_bytes).chunks_per_read
    return {"prefetch": ahead, "chunks_per_read": chunks_per_read}


def full_pass(lr: NaturalGradientLearner, source: ArraySource, theta: np.ndarray, *,
              metric=None, rng_key=None, batch_rows: int, chunks=None, should_stop=None,
              progress=None, sketch: np.ndarray | None = None):
    """One pass over ``source`` (or its chunks ``chunks``) at a fixed ``theta`` in chunk
    order, fused: ``(J, ∇θJ, metric or None, rows)`` averaged by weight, with the learner's
    L2 penalty added (``J``, ``∇θJ`` shape (P,), metric (P, P) or (P,), or for the
    Kronecker structure a :class:`~natgrad_stream.geometry.kronecker.KroneckerMetric` of
    the factors with the measured diagonal as its ``exact_diagonal``); None when
    ``should_stop()`` turned True mid-pass (nothing counted). Counts the rows and the
    evaluation. ``rng_key`` seeds Monte Carlo draws. ``progress(rows)``, if given, is
    called after each batch with the rows read so far in the pass. On a Dask fit the pass
    runs on the cluster (:meth:`~natgrad_stream.distributed.DaskBackend.pass_stats`),
    with no progress inside it. With ``sketch`` (a test matrix ``T``, shape (P, k)) and a
    diagonal metric, the metric is the whole data's
    :class:`~natgrad_stream.geometry.lowrank.SketchedMetric` (its diagonal and ``G T``,
    one block product of k columns a batch, the read shared with the pass; one process).
    """
    if lr._backend is not None:
        return _dask_pass(lr, source, theta, metric=metric, rng_key=rng_key, chunks=chunks,
                          should_stop=should_stop)
    rng = None if rng_key is None else np.random.default_rng(list(rng_key))
    P = lr.model.n_params
    ws = lr._workspace
    grad = np.zeros(P)
    loss = wsum = 0.0
    rows = 0
    # the pass's metric sum, added to in place (a running estimate's batches make a new
    # array each, for a rejected step to keep the old one: no step here)
    gsum = None if metric is None else np.zeros(ws.fisher.shape)
    ysum = None if metric is None or sketch is None else np.zeros(sketch.shape)
    # the Kronecker structure's factors, beside the diagonal (which the passes check)
    factors = [0.0, 0.0] if gsum is not None and lr.structure == "kronecker" else None
    per_read = max(1, batch_rows // source.chunk_rows)
    if progress is not None:
        progress(0)  # a pass starts
    try:
        with source.batches(batch_size=batch_rows, epochs=1, shuffle=False,
                            **stream_plan(lr, source, prefetch=2, chunks_per_read=per_read,
                                          batch_size=batch_rows, shuffle=False,
                                          metric=metric is not None),
                            read_buffer_bytes=lr.read_buffer_bytes,
                            digests=lr.state.digests, **lr.model.data_checks()) as stream:
            for batch in stream:
                if should_stop is not None and should_stop():
                    return None
                n = batch.X.shape[0]
                ls, wt = lr.model.accumulate(
                    batch.X, batch.y, batch.w, theta, metric=metric,
                    structure=model_structure(lr.structure), ws=ws, rng=rng,
                    mc_samples=lr.mc_samples)
                loss += ls
                wsum += wt
                grad += ws.grad
                rows += n
                if gsum is not None:
                    gsum += ws.fisher
                if ysum is not None and wt > 0:
                    ysum += wt * lr.model.metric_matvec(batch.X, batch.y, batch.w, theta,
                                                        sketch, metric=metric)
                if factors is not None:
                    F, S, _ = lr.model.kronecker_sums(batch.X, batch.y, batch.w, theta,
                                                      metric=metric, rng=rng,
                                                      mc_samples=lr.mc_samples)
                    factors = [factors[0] + F, factors[1] + S]
                if progress is not None:
                    progress(rows)
    except DataError as exc:
        if chunks is None:
            raise
        raise locate_in_full_data(exc, chunks, source.chunk_rows) from exc
    lr.state.samples += rows
    lr.state.evaluations += 1
    if not wsum > 0:
        raise DataError(_weightless_evaluation(chunks), array=source.names[2])
    G = None
    if gsum is not None:
        ws.release_metric()  # (folded in: the refresh that factors G need not hold it)
        G = gsum
        G /= wsum
    J, g, G = lr.penalty.penalize(loss / wsum, grad / wsum, G, theta)
    if ysum is not None:  # (G + λI_S) T = G T + λ I_S T
        G = SketchedMetric(G, lr.penalty.add_matvec(ysum / wsum, sketch), sketch)
    if factors is not None:
        G = KroneckerMetric(factors[0] / wsum, factors[1] / wsum, lr.penalty.lam,
                            exact_diagonal=G)
    return J, g, G, rows


def metric_vector_pass(lr: NaturalGradientLearner, source, theta: np.ndarray,
                       v: np.ndarray, *, should_stop=None) -> np.ndarray | None:
    """``G v`` (shape (P,)) of the whole data's metric at ``theta``, penalty included,
    streamed in whole-pass batches (the model's ``metric_matvec``, O(non-zeros) a batch
    for CSR rows); None when ``should_stop()`` turned True mid-pass. Counts the rows.
    """
    whole = getattr(source, "resident_rows", lambda: None)()
    if whole is not None:  # every row in memory, checked when read: one kernel call
        if should_stop is not None and should_stop():
            return None
        X, y, w = whole
        lr.state.samples += X.shape[0]
        Gv = lr.model.metric_matvec(X, y, w, theta, v[:, None], metric=lr.metric)
        return lr.penalty.add_matvec(Gv, v[:, None])[:, 0]
    out = np.zeros(lr.model.n_params)
    wsum = 0.0
    rows = 0
    rows_per_batch = max(lr.batch_size, REFINE_BATCH_ROWS)
    with source.batches(batch_size=rows_per_batch, epochs=1, shuffle=False,
                        **stream_plan(lr, source, prefetch=2, chunks_per_read=2,
                                      batch_size=rows_per_batch, shuffle=False, metric=False),
                        read_buffer_bytes=lr.read_buffer_bytes,
                        digests=lr.state.digests, **lr.model.data_checks()) as stream:
        for batch in stream:
            if should_stop is not None and should_stop():
                return None
            n = batch.X.shape[0]
            wt = float(n if batch.w is None else np.sum(batch.w))
            if wt > 0:
                out += wt * lr.model.metric_matvec(batch.X, batch.y, batch.w, theta,
                                                   v[:, None], metric=lr.metric)[:, 0]
            wsum += wt
            rows += n
    lr.state.samples += rows
    if not wsum > 0:
        raise DataError(_weightless_evaluation(None), array=source.names[2])
    return lr.penalty.add_matvec((out / wsum)[:, None], v[:, None])[:, 0]


def _weightless_evaluation(chunks) -> str:
    """The message for an evaluation set (the data, or a window of chunks) of zero weight."""
    if chunks is None:
        return "every sample weight of the data is zero: nothing to fit"
    return (f"every sample weight of this round's window of {len(chunks)} chunks (drawn by "
            "--seed) is zero: a larger --window, or none, reads more of the data")


def _dask_pass(lr, source, theta, *, metric, rng_key, chunks, should_stop):
    """:func:`full_pass` on the learner's Dask backend."""
    stats = lr._backend.pass_stats(theta, metric=metric,
                                   structure=model_structure(lr.structure),
                                   mc_samples=lr.mc_samples, chunks=chunks,
                                   rng_key=None if rng_key is None else tuple(rng_key),
                                   should_stop=should_stop)
    if stats is None:
        return None
    lr.state.samples += stats.rows
    lr.state.evaluations += 1
    if not stats.weight > 0:
        raise DataError(_weightless_evaluation(chunks), array=source.names[2])
    G = None if stats.metric is None else stats.metric / stats.weight
    return (*lr.penalty.penalize(stats.loss / stats.weight, stats.grad / stats.weight, G,
                                 theta), stats.rows)


_STRATEGIES = {opts.STREAM: _Streaming, opts.LBFGS: _LBFGSRounds}


def _signature() -> inspect.Signature:
    """``NaturalGradientLearner(model, *, option=default, ...)`` from the options table."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                 default=opts.BY_NAME[name].default)
               for name in opts.LEARNER_OPTIONS]
    return inspect.Signature(params)


NaturalGradientLearner.__init__.__signature__ = _signature()
