"""The streaming natural-gradient learner: composes model, metric, whitener, schedule and
optimizer; holds no numerics of its own.

One step on a batch ``(X, y, w)`` at parameters θ:

1. one fused kernel pass gives the loss, ``∇θJ`` and the batch's metric sum;
2. the running metric ``G`` folds the batch in (time constant in samples);
3. the schedule decides whether to refresh ``W = G^½`` at ``θ_fixed = θ``; on a refresh the
   optimizer's state is carried into the new coordinates and ``φ = W θ``;
4. the optimizer steps ``φ`` with ``∇φJ = W⁻ᵀ∇θJ`` and ``θ = W⁻¹φ``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream._constants import (
    CURVATURE_POWER_ITERATIONS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DAMPING,
    DEFAULT_DRIFT_PROBES,
    DEFAULT_EIGEN_FLOOR,
    DEFAULT_MC_SAMPLES,
    FISHER_EVERY_PARAMS,
)
from natgrad_stream.data import Cursor, as_source
from natgrad_stream.errors import CheckpointError, DataError
from natgrad_stream.fisher import RunningFisher
from natgrad_stream.models import Model, model_from_config
from natgrad_stream.models.base import check_metric_structure
from natgrad_stream.optim import make_optimizer
from natgrad_stream.schedule import RefreshSchedule, ScheduleState
from natgrad_stream.whitening import METHODS, Whitener, WhiteningError, whiten


class NumericalError(FloatingPointError):
    """Learning produced a non-finite loss or gradient; the state before it is kept."""


@dataclass
class StepInfo:
    """What one step did (passed to callbacks)."""

    loss: float
    grad_norm: float
    natural_grad_norm: float
    rows: int
    samples: int
    steps: int
    refresh: dict | None = None


@dataclass
class FitResult:
    """Summary of one :meth:`NaturalGradientLearner.fit` call (the CLI's last JSON line)."""

    samples: int
    steps: int
    rewhitens: int
    seconds: float
    rows_per_s: float
    train_loss: float
    epochs: int
    interrupted: bool = False

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = {
            "samples": self.samples, "steps": self.steps, "rewhitens": self.rewhitens,
            "seconds": round(self.seconds, 4), "rows_per_s": round(self.rows_per_s, 1),
            "train_loss": self.train_loss, "epochs": self.epochs,
            "interrupted": self.interrupted,
        }
        return out


class Callback:
    """Hooks called by :meth:`NaturalGradientLearner.fit`; override what you need."""

    def on_fit_start(self, learner, total_rows: int | None) -> None:
        """Before the first batch."""

    def on_batch_end(self, learner, info: StepInfo, cursor: Cursor) -> None:
        """After each step; ``cursor`` says where the stream stands."""

    def on_refresh(self, learner, event: dict) -> None:
        """After each re-whitening attempt (``event["ok"]`` tells whether it succeeded)."""

    def on_fit_end(self, learner, result: FitResult) -> None:
        """After the last batch (also after an interruption)."""

    def on_error(self, learner, error: BaseException) -> None:
        """When fitting stops on an exception (the learner's state is the last good one)."""


class NaturalGradientLearner:
    """Learn θ by natural-gradient steps in a periodically re-whitened space φ = Wθ.

    Parameters
    ----------
    model : Model
    metric : str, optional
        Metric kind (:data:`natgrad_stream.models.METRICS`, among ``model.metrics``):
        ``model`` (eq. 30, closed form), ``monte-carlo`` (eq. 30/41 by sampling targets),
        ``empirical`` (eq. 31), ``loss-gradient`` (eq. 39), ``energy`` (eq. 33),
        ``gauss-newton`` (eq. 40–41) or ``amari`` (eq. 43). Default: the model's
        ``default_metric``.
    structure : {"full", "diagonal", "block"}
        Full metric, its diagonal (eq. 34), or block-diagonal over the model's parameter
        groups (``model.param_groups()``, e.g. one block per layer).
    mc_samples : int
        Targets sampled per row for ``metric="monte-carlo"``.
    optimizer : {"sgd", "momentum", "adam"}
        Optimizer stepping φ. The default SGD with the harmonic schedule needs no tuning.
    lr : float, optional
        Step-size scale (optimizer default if None).
    step_schedule : {"harmonic", "sqrt", "constant"}, optional
    rewhiten : str, int or RefreshSchedule
        ``"auto"`` (geometric + drift), ``"never"``, an interval in samples, or a spec
        accepted by :meth:`RefreshSchedule.parse`.

    Options left as None (``lr``, ``step_schedule``, ``rewhiten``, ``damping``,
    ``fisher_every``) take the model's :attr:`~natgrad_stream.models.Model.learner_defaults`
    first, then the global defaults (``"auto"``, ``DEFAULT_DAMPING``, ``"auto"``).
    half_life : float, "auto" or None
        Running-metric half-life in samples (:class:`RunningFisher`).
    whitening : {"eigh", "ridge", "robust"}
        Regularized factorization (:func:`whiten`).
    damping, floor : float
        Relative damping ε and eigenvalue floor of the whitener.
    batch_size : int
    seed : int
        Seeds the data order and the drift probes: one seed gives identical runs.
    average : bool
        Also keep the Polyak–Ruppert average of θ over the run (reported by
        :attr:`theta_average`; :attr:`theta` stays the last iterate).
    fisher_every : int or "auto"
        Accumulate the metric on one batch in this many (the gradient uses every batch).
        ``"auto"`` takes ``max(1, round(P / 16))``, which keeps the O(P²)-per-row metric
        update near the O(P) cost of the gradient; the running metric averages over many
        batches anyway, so it loses little (measured at P = 101 on 1M rows: held-out gap
        after one pass −0.0002% at 3, +0.0006% at 6, +0.0016% at 12).
    drift_probes : int
        Probe vectors per drift estimate.
    blas_threads : int or None
        Threads of the BLAS pools during :meth:`fit` (None leaves them alone). One is
        fastest: the dense algebra is small and its spinning workers would contend with
        the kernels' threads and the reader.

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

    def __init__(self, model: Model, *, metric: str | None = None, structure: str = "full",
                 optimizer: str = "sgd", lr: float | None = None,
                 step_schedule: str | None = None, rewhiten=None, half_life="auto",
                 whitening: str = "eigh", damping: float | None = None,
                 floor: float = DEFAULT_EIGEN_FLOOR, batch_size: int = DEFAULT_BATCH_SIZE,
                 seed: int = 0, average: bool = False, fisher_every=None,
                 drift_probes: int = DEFAULT_DRIFT_PROBES, blas_threads: int | None = 1,
                 mc_samples: int = DEFAULT_MC_SAMPLES):
        metric = model.default_metric if metric is None else metric
        # options left unset take the model's recommendation, then the global default
        unset = {"lr": lr, "step_schedule": step_schedule, "rewhiten": rewhiten,
                 "damping": damping, "fisher_every": fisher_every}
        fallback = {"lr": None, "step_schedule": None, "rewhiten": "auto",
                    "damping": DEFAULT_DAMPING, "fisher_every": "auto"}
        for key, value in unset.items():
            if value is None:
                unset[key] = model.learner_defaults.get(key, fallback[key])
        lr, step_schedule, rewhiten = unset["lr"], unset["step_schedule"], unset["rewhiten"]
        damping, fisher_every = unset["damping"], unset["fisher_every"]
        check_metric_structure(metric, structure, model)
        if int(mc_samples) < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.mc_samples = int(mc_samples)
        if whitening not in METHODS:
            raise ValueError(f"whitening must be one of {METHODS}, got {whitening!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if fisher_every == "auto":
            fisher_every = max(1, round(model.n_params / FISHER_EVERY_PARAMS))
        if int(fisher_every) < 1:
            raise ValueError(f"fisher_every must be >= 1 or 'auto', got {fisher_every}")
        self.model = model
        self.metric, self.structure = metric, structure
        self.optimizer = make_optimizer(optimizer, lr=lr, schedule=step_schedule)
        self.schedule = RefreshSchedule.parse(rewhiten)
        self.half_life = half_life
        self.whitening, self.damping, self.floor = whitening, float(damping), float(floor)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.average, self.fisher_every = bool(average), int(fisher_every)
        self.drift_probes = int(drift_probes)
        self.blas_threads = blas_threads
        self._workspace = model.new_workspace(structure)
        self.reset()

    # -- state --------------------------------------------------------------------------
    def reset(self, theta0: np.ndarray | None = None) -> NaturalGradientLearner:
        """Forget everything learned; start from ``theta0`` (model default if None)."""
        P = self.model.n_params
        theta = self.model.start_params(theta0)
        self.theta = theta
        self._data_init = theta0 is None  # the first batch may pick a better start
        self.whitener: Whitener | None = None
        self.phi = theta.copy()
        self.fisher = RunningFisher(P, structure=self.structure, half_life=self.half_life)
        self.opt_state = self.optimizer.init(P)
        self.schedule.state = ScheduleState()
        self.rng = np.random.default_rng([self.seed, 7])
        self.samples = 0
        self.steps = 0
        self.rewhitens = 0
        self.cursor = Cursor()
        self.theta_sum = np.zeros(P)
        self.average_weight = 0.0
        self.last_refresh: dict | None = None
        self._epoch_loss = [0.0, 0.0]  # (Σ loss, Σ weight) over the current epoch
        self._last_epoch_loss = math.nan
        self._stop_requested = False
        self.step_cap = 1.0
        return self

    @property
    def theta_average(self) -> np.ndarray:
        """Polyak–Ruppert average of θ over all steps (needs ``average=True``)."""
        if not self.average:
            raise AttributeError("theta_average needs average=True")
        return self.theta_sum / self.average_weight if self.average_weight else self.theta.copy()

    def options(self) -> dict:
        """JSON-ready options (stored in checkpoints)."""
        return {
            "metric": self.metric, "structure": self.structure,
            "optimizer": self.optimizer.config(), "rewhiten": self.schedule.config(),
            "half_life": self.half_life, "whitening": self.whitening, "damping": self.damping,
            "floor": self.floor, "batch_size": self.batch_size, "seed": self.seed,
            "average": self.average, "fisher_every": self.fisher_every,
            "drift_probes": self.drift_probes, "blas_threads": self.blas_threads,
            "mc_samples": self.mc_samples,
        }

    # -- one step -----------------------------------------------------------------------
    def step(self, X, y=None, w=None) -> StepInfo:
        """One natural-gradient step on a batch; returns what it did.

        Raises
        ------
        NumericalError
            If the loss or gradient is not finite; the learner's state is unchanged.
        """
        n = X.shape[0]
        if n == 0:
            raise ValueError("empty batch")
        if self.model.requires_targets and y is None:
            raise ValueError(f"model {self.model.name!r} needs targets y")
        if self._data_init and self.steps == 0:
            start = self.model.initial_params(X, y, w)
            self._data_init = False
            if start is not None:  # before anything is learned: nothing to keep
                self.theta = np.asarray(start, dtype=np.float64)
                self.phi = self.theta.copy()
        need_metric = self.whitener is None or self.steps % self.fisher_every == 0
        ws = self._workspace
        loss_sum, wsum = self.model.accumulate(
            X, y, w, self.theta, metric=self.metric if need_metric else None,
            structure=self.structure, ws=ws, rng=self.rng, mc_samples=self.mc_samples)
        if not wsum > 0:
            raise DataError("batch has zero total sample weight", array="w")
        grad = ws.grad / wsum
        if not (math.isfinite(loss_sum) and np.all(np.isfinite(grad))):
            raise NumericalError(
                f"non-finite loss ({loss_sum}) or gradient at step {self.steps}, "
                f"samples {self.samples}; |θ|max = {np.abs(self.theta).max():.3g}. "
                "Try a smaller lr or stronger damping."
            )
        before = self._snapshot()
        try:
            refresh, gphi, phi, theta = self._advance(X, y, w, grad, wsum, n, need_metric)
        except NumericalError:
            self._restore(before)  # a rejected step changes nothing
            raise
        self.phi, self.theta = phi, theta
        self.steps += 1
        if self.average:
            self.theta_sum += n * theta
            self.average_weight += n
        loss = loss_sum / wsum
        self._epoch_loss[0] += loss_sum
        self._epoch_loss[1] += wsum
        return StepInfo(loss=loss, grad_norm=float(np.linalg.norm(grad)),
                        natural_grad_norm=float(np.linalg.norm(gphi)), rows=n,
                        samples=self.samples, steps=self.steps, refresh=refresh)

    partial_fit = step

    def _advance(self, X, y, w, grad, wsum, n, need_metric):
        """Fold the batch into the metric, maybe re-whiten, and take the optimizer step;
        returns ``(refresh, ∇φJ, φ, θ)`` for :meth:`step` to commit.
        """
        if need_metric:
            self.fisher.add(self._workspace.fisher, weight=wsum, rows=n)
        self.samples += n
        refresh = self._maybe_refresh()
        if refresh is not None and refresh.get("ok") and self.structure == "diagonal":
            self.step_cap = self._curvature_cap(X, y, w, refresh)
        gphi = self.whitener.grad_phi(grad) * self.step_cap
        phi = self.optimizer.step(self.phi, gphi, self.opt_state, rows=n, samples=self.samples)
        theta = self.whitener.theta(phi)
        if not np.all(np.isfinite(theta)):
            raise NumericalError(f"step {self.steps} produced non-finite parameters")
        try:
            self.model.check_params(theta)
        except ValueError as exc:
            raise NumericalError(
                f"step {self.steps} (samples {self.samples}) left the model's domain: {exc}. "
                "The learner's state before the step is kept; try a smaller lr or stronger "
                "damping."
            ) from exc
        return refresh, gphi, phi, theta

    def _snapshot(self) -> tuple:
        """What a step may change before it is accepted (O(P) to take: the running metric
        is replaced, not updated in place, by :meth:`RunningFisher.add`).
        """
        f = self.fisher
        opt = {k: (v.copy() if isinstance(v, np.ndarray) else v)
               for k, v in self.opt_state.items()}
        return (f.sum, f.weight, f.samples, self.samples, opt, copy.copy(self.schedule.state),
                self.rng.bit_generator.state, self.whitener, self.phi, self.rewhitens,
                self.last_refresh, self.step_cap)

    def _restore(self, snap: tuple) -> None:
        f = self.fisher
        (f.sum, f.weight, f.samples, self.samples, self.opt_state, self.schedule.state,
         self.rng.bit_generator.state, self.whitener, self.phi, self.rewhitens,
         self.last_refresh, self.step_cap) = snap

    def _maybe_refresh(self) -> dict | None:
        reason, drift = None, None
        if self.whitener is None:
            reason = "initial"
        elif self.schedule.clock_due(self.samples):
            reason = "schedule"
        elif self.schedule.drift_check_due():
            drift = self.whitener.drift(self.fisher.estimate(), self.rng,
                                        probes=self.drift_probes)
            if self.schedule.drift_exceeded(drift):
                reason = "drift"
        return None if reason is None else self.refresh(reason=reason, drift=drift)

    def refresh(self, *, reason: str = "manual", drift: float | None = None) -> dict:
        """Re-whiten now at ``θ_fixed = θ``; returns the refresh event.

        A failed factorization keeps the last good whitener (or the identity, before the
        first success) and reports ``ok: False`` with the reason, with a warning.
        """
        event = {"event": "rewhiten", "reason": reason, "samples": self.samples,
                 "step": self.steps, "drift": drift}
        try:
            new = whiten(self.fisher.estimate(), method=self.whitening, damping=self.damping,
                         floor=self.floor, center=self.model.center_indices or None,
                         blocks=self.model.param_bounds() if self.structure == "block" else None)
        except (WhiteningError, ValueError) as exc:
            event.update(ok=False, error=str(exc))
            warnings.warn(f"re-whitening at sample {self.samples} failed ({exc}); keeping the "
                          "previous whitener", RuntimeWarning, stacklevel=3)
            if self.whitener is None:
                self.whitener = Whitener.identity(self.model.n_params,
                                                  diagonal=self.structure == "diagonal")
                self.phi = self.whitener.phi(self.theta)
            self.schedule.refreshed(self.samples)
        else:
            if self.whitener is not None:
                self.optimizer.transport(self.opt_state, self.whitener.vector_map_to(new),
                                         self.whitener.covector_map_to(new))
            self.whitener = new
            self.phi = new.phi(self.theta)
            self.rewhitens += 1
            self.schedule.refreshed(self.samples)
            event.update(ok=True, **new.diagnostics.to_dict())
        self.last_refresh = event
        return event

    # -- streaming ----------------------------------------------------------------------
    def fit(self, data, *, epochs: int = 1, callbacks=(), max_samples: int | None = None,
            shuffle: bool = True, prefetch: int = 2, chunks_per_read: int = 2,
            x: str = "X", y: str | None = "y", w: str | None = None) -> NaturalGradientLearner:
        """Stream ``data`` for ``epochs`` passes (continuing from :attr:`cursor`).

        Parameters
        ----------
        data : path, zarr.Group, (X, y[, w]) arrays, Source or iterable of batches
        epochs : int
            Total passes of the run; a resumed run continues up to this count.
        callbacks : sequence of Callback
        max_samples : int, optional
            Stop (resumably) once this many samples have been seen in total.
        shuffle, prefetch, chunks_per_read
            Passed to the source's batch stream.
        x, y, w : str
            Array names when ``data`` is a Zarr group or path.
        """
        source = as_source(data, x=x, y=y if self.model.requires_targets else None, w=w)
        if source.n_features != self.model.n_features:
            raise DataError(
                f"has {source.n_features} features but the model was built for "
                f"{self.model.n_features}", array=x)
        if self.model.requires_targets and not source.has_targets:
            raise DataError(f"model {self.model.name!r} needs targets but the source has none",
                            array=y)
        checks = self.model.data_checks()
        total = None if source.n_rows is None else source.n_rows * epochs
        self.result = None
        for cb in callbacks:
            cb.on_fit_start(self, total)
        start_samples, t0 = self.samples, time.perf_counter()
        interrupted = self._stop_requested = False
        epoch = self.cursor.epoch
        try:
            stream = source.batches(batch_size=self.batch_size, epochs=epochs, seed=self.seed,
                                    shuffle=shuffle, start=self.cursor, prefetch=prefetch,
                                    chunks_per_read=chunks_per_read, **checks)
            with limited_blas_threads(self.blas_threads), stream:
                for batch in stream:
                    if max_samples is not None and self.samples >= max_samples:
                        interrupted = True
                        break
                    info = self.step(batch.X, batch.y, batch.w)
                    if batch.cursor.epoch != epoch:
                        self._close_epoch()
                        epoch = batch.cursor.epoch
                    self.cursor = batch.cursor
                    if info.refresh is not None:
                        for cb in callbacks:
                            cb.on_refresh(self, info.refresh)
                    for cb in callbacks:
                        cb.on_batch_end(self, info, self.cursor)
                    if self._stop_requested:
                        interrupted = True
                        break
        except BaseException as exc:
            for cb in callbacks:
                cb.on_error(self, exc)
            raise
        seconds = time.perf_counter() - t0
        done = self.samples - start_samples
        loss = self._epoch_loss[0] / self._epoch_loss[1] if self._epoch_loss[1] else \
            self._last_epoch_loss
        self.result = FitResult(samples=self.samples, steps=self.steps, rewhitens=self.rewhitens,
                                seconds=seconds, rows_per_s=done / seconds if seconds else 0.0,
                                train_loss=float(loss), epochs=self.cursor.epoch,
                                interrupted=interrupted)
        for cb in callbacks:
            cb.on_fit_end(self, self.result)
        return self

    def _curvature_cap(self, X, y, w, event: dict) -> float:
        """Step factor ``min(1, 1/ρ)`` for a diagonal whitener.

        ρ is the largest eigenvalue of this batch's metric seen in φ coordinates,
        ``W⁻ᵀ G_batch W⁻¹``, by power iteration (O(n P) per product). A full whitener makes
        it about 1; a diagonal one ignores the correlations, and with correlated or
        non-centred features ρ reaches tens to hundreds, where the default step of 1 would
        diverge. The estimate is recorded in the refresh event.
        """
        v = self.rng.standard_normal((self.model.n_params, 1))
        rho = 1.0
        for _ in range(CURVATURE_POWER_ITERATIONS):
            v /= np.linalg.norm(v)
            u = self.whitener.theta(v[:, 0])[:, None]
            Gu = self.model.metric_matvec(X, y, w, self.theta, u, metric=self.metric)
            v = self.whitener.grad_phi(Gu[:, 0])[:, None]
            rho = float(np.linalg.norm(v))
        if not np.isfinite(rho) or rho <= 0:
            return self.step_cap
        event["curvature"] = rho
        return min(1.0, 1.0 / rho)

    def request_stop(self) -> None:
        """Ask :meth:`fit` to stop after the current batch (safe from a signal handler).

        The state stays consistent at a batch boundary, so it can be checkpointed and
        resumed.
        """
        self._stop_requested = True

    def _close_epoch(self) -> None:
        if self._epoch_loss[1]:
            self._last_epoch_loss = self._epoch_loss[0] / self._epoch_loss[1]
        self._epoch_loss = [0.0, 0.0]

    # -- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: a nested dict of arrays and JSON values."""
        return {
            "model": self.model.config(),
            "options": self.options(),
            "theta": self.theta.copy(),
            "phi": self.phi.copy(),
            "whitener": None if self.whitener is None else self.whitener.state_dict(),
            "fisher": self.fisher.state_dict(),
            "optimizer": dict(self.opt_state),
            "schedule": self.schedule.state.to_dict(),
            "rng": self.rng.bit_generator.state,
            "counters": {"samples": self.samples, "steps": self.steps,
                         "rewhitens": self.rewhitens, "step_cap": self.step_cap},
            "cursor": self.cursor.to_dict(),
            "average": {"theta_sum": self.theta_sum.copy(), "weight": self.average_weight},
            "epoch_loss": {"sum": self._epoch_loss[0], "weight": self._epoch_loss[1],
                           "last": self._last_epoch_loss},
            "last_refresh": self.last_refresh,
        }

    def load_state_dict(self, state: dict) -> NaturalGradientLearner:
        """Restore :meth:`state_dict` output (the model and options must match)."""
        if state["model"] != self.model.config():
            raise CheckpointError(
                f"checkpoint is for model {state['model'].get('name')!r} with "
                f"{state['model'].get('n_features')} features, not "
                f"{self.model.name!r} with {self.model.n_features}")
        P = self.model.n_params
        self.theta = np.array(state["theta"], dtype=np.float64)
        self.phi = np.array(state["phi"], dtype=np.float64)
        if self.theta.shape != (P,):
            raise CheckpointError(f"checkpoint θ has shape {self.theta.shape}, expected ({P},)")
        w = state.get("whitener")
        self.whitener = None if not w else Whitener.from_state(w)
        self.fisher = RunningFisher.from_state(state["fisher"])
        self.opt_state = {k: (np.array(v, dtype=np.float64) if isinstance(v, np.ndarray) else v)
                          for k, v in state["optimizer"].items()}
        self.schedule.state = ScheduleState.from_dict(state["schedule"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        c = state["counters"]
        self.samples, self.steps, self.rewhitens = int(c["samples"]), int(c["steps"]), \
            int(c["rewhitens"])
        self.step_cap = float(c.get("step_cap", 1.0))
        self.cursor = Cursor.from_dict(state["cursor"])
        self.theta_sum = np.array(state["average"]["theta_sum"], dtype=np.float64)
        self.average_weight = float(state["average"]["weight"])
        el = state["epoch_loss"]
        self._epoch_loss = [float(el["sum"]), float(el["weight"])]
        self._last_epoch_loss = math.nan if el["last"] is None else float(el["last"])
        self.last_refresh = state.get("last_refresh")
        self._data_init = False
        return self

    @classmethod
    def from_state_dict(cls, state: dict, **overrides) -> NaturalGradientLearner:
        """Rebuild a learner (model and options) from :meth:`state_dict` output."""
        opts = dict(state["options"])
        opt_cfg = dict(opts.pop("optimizer"))
        sched = opts.pop("rewhiten")
        kwargs = dict(opts)
        kwargs["optimizer"] = opt_cfg.pop("name")
        kwargs["lr"] = opt_cfg.pop("lr")
        kwargs["step_schedule"] = opt_cfg.pop("schedule")
        kwargs["rewhiten"] = RefreshSchedule(**sched)
        kwargs.update(overrides)
        learner = cls(model_from_config(state["model"]), **kwargs)
        if opt_cfg:  # optimizer-specific options (beta, ...)
            learner.optimizer = type(learner.optimizer)(lr=learner.optimizer.lr,
                                                        schedule=learner.optimizer.schedule,
                                                        **opt_cfg)
        return learner.load_state_dict(state)
