"""L-BFGS in the natural parameter space φ = Wθ (paper section 2.7 and footnote 2).

For a metric held fixed at ``θ_fixed``, the coordinates ``φ = W θ`` with
``WᵀW = G_reg(θ_fixed)`` are those in which steepest descent is natural-gradient descent.
A batch optimizer that needs the true gradient of the function it descends (L-BFGS and its
line search) can therefore run unchanged on ``J(φ) = J(W⁻¹φ)`` with ``∇φJ = W⁻ᵀ∇θJ``.
:class:`NaturalLBFGS` does this in *rounds*:

1. one streaming pass over the evaluation set (all the data, or a *window* of chunks)
   at ``θ`` gives ``J``, ``∇θJ`` and the metric sum ``G``, fused;
2. ``W = whiten(G)`` re-whitens at ``θ_fixed = θ``;
3. SciPy's L-BFGS-B minimizes ``J(φ)`` from ``φ₀ = Wθ`` for at most ``iters``
   iterations; every function/gradient evaluation streams the evaluation set at
   ``θ = W⁻¹φ`` (the first one is the fused pass of step 1);
4. the best point evaluated becomes ``θ``.

Rounds stop once a round improves ``J`` by at most ``tol`` relative
(``(J_start − J_end) / max(|J_start|, |J_end|, 1)``, L-BFGS-B's own measure) or ends with
``max |∇φJ| ≤ gtol``, or after ``rounds`` rounds. Because ``|∇φJ|² = ∇θJᵀ G_reg⁻¹ ∇θJ``,
``gtol`` is a scale-free (natural-gradient) tolerance. L-BFGS's curvature memory is
dropped at each re-whitening, so a round boundary is an exact restart point: a resumed
run continues exactly as an uninterrupted one.

Evaluations are deterministic: passes stream chunks in order without shuffling. In window
mode each round draws its own ``window`` chunks from ``(seed, round)``, so rounds see
different data (a stochastic batch method); it then runs all its rounds.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream._constants import (
    DEFAULT_DAMPING,
    DEFAULT_EIGEN_FLOOR,
    DEFAULT_MC_SAMPLES,
    LBFGS_EVAL_BATCH_ROWS,
    LBFGS_GTOL,
    LBFGS_ITERS,
    LBFGS_MEMORY,
    LBFGS_ROUNDS,
    LBFGS_TOL,
    NONFINITE_RISE,
)
from natgrad_stream.callbacks import CheckpointEvery, MetricsLogger, ProgressBar
from natgrad_stream.data import ArraySource, Cursor, as_source
from natgrad_stream.errors import CheckpointError, DataError
from natgrad_stream.fisher import RunningFisher
from natgrad_stream.learner import FitResult, NumericalError, StepInfo
from natgrad_stream.models import Model, model_from_config
from natgrad_stream.models.base import check_metric_structure
from natgrad_stream.whitening import METHODS, Whitener, WhiteningError, whiten

#: Registry name of the algorithm, stored as ``options["optimizer"]["name"]``.
NAME = "lbfgs"
#: Defaults (from :mod:`natgrad_stream._constants`; the command line uses these names).
DEFAULT_ROUNDS, DEFAULT_ITERS, DEFAULT_TOL = LBFGS_ROUNDS, LBFGS_ITERS, LBFGS_TOL
DEFAULT_GTOL, DEFAULT_MEMORY = LBFGS_GTOL, LBFGS_MEMORY
DEFAULT_EVAL_BATCH_ROWS = LBFGS_EVAL_BATCH_ROWS


def is_lbfgs_state(state: dict) -> bool:
    """True when a checkpoint state was written by :class:`NaturalLBFGS`."""
    opt = state.get("options", {}).get("optimizer")
    return isinstance(opt, dict) and opt.get("name") == NAME


@dataclass
class LBFGSResult(FitResult):
    """Summary of :meth:`NaturalLBFGS.fit`: the SGD learner's keys plus L-BFGS ones.

    ``samples`` counts rows streamed by all passes, ``steps`` L-BFGS iterations,
    ``rewhitens`` metric passes and ``epochs`` data-pass equivalents (``samples / n_rows``,
    a float in window mode); ``train_loss`` is ``J`` at ``θ`` on the last round's
    evaluation set (the whole data unless a window is used).
    """

    rounds: int = 0
    evaluations: int = 0
    converged: bool = False
    grad_norm: float = math.nan
    natural_grad_norm: float = math.nan

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = super().to_dict()
        out.update(rounds=self.rounds, evaluations=self.evaluations, converged=self.converged,
                   grad_norm=self.grad_norm, natural_grad_norm=self.natural_grad_norm)
        return out


class _Interrupt(Exception):
    """Raised inside an evaluation to leave L-BFGS (stop request or sample budget)."""


class _RowSpans:
    """Read-only array-like: the row ranges ``spans`` of ``arr``, concatenated.

    Supports ``shape``, ``dtype`` and contiguous slicing, which is what
    :class:`ArraySource` needs; used to stream a window of chunks.
    """

    def __init__(self, arr, spans):
        self.arr = arr
        self.spans = [(int(a), int(b)) for a, b in spans]
        self.starts = np.cumsum([0] + [b - a for a, b in self.spans])
        self.shape = (int(self.starts[-1]),) + tuple(arr.shape[1:])
        self.dtype = arr.dtype

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a chunk window supports contiguous row slices only")
        start, stop, _ = key.indices(self.shape[0])
        parts = []
        for (a, b), s0 in zip(self.spans, self.starts[:-1], strict=True):
            lo, hi = max(start, s0), min(stop, s0 + b - a)
            if lo < hi:
                parts.append(np.asarray(self.arr[a + lo - s0:a + hi - s0]))
        return np.concatenate(parts) if parts else np.asarray(self.arr[0:0])


def window_chunks(n_chunks: int, window: int | None, seed: int, round_index: int):
    """Chunks evaluated in round ``round_index`` (0-based), sorted; None for all of them.

    A pure function of its arguments: ``window`` distinct chunks drawn with the generator
    ``(seed, round_index, 5)``; None when no window is set or it covers every chunk.
    """
    if window is None or int(window) >= int(n_chunks):
        return None
    rng = np.random.default_rng([int(seed), int(round_index), 5])
    return np.sort(rng.choice(int(n_chunks), int(window), replace=False))


def _relocate(exc: DataError, chunks: np.ndarray, chunk_rows: int) -> DataError:
    """A data error found in a window, with its chunk and row in the full data."""
    if exc.chunk is None or not 0 <= exc.chunk < len(chunks):
        return exc
    prefix = str(DataError("", array=exc.array, chunk=exc.chunk, row=exc.row,
                           column=exc.column))
    text = str(exc)
    message = text[len(prefix):] if text.startswith(prefix) else text
    c = int(chunks[exc.chunk])
    row = None if exc.row is None else c * chunk_rows + exc.row - exc.chunk * chunk_rows
    return DataError(message, array=exc.array, chunk=c, row=row, column=exc.column)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _nonnegative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value) >= 0 or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


class NaturalLBFGS:
    """Batch L-BFGS on ``J(φ)``, ``φ = G(θ_fixed)^½ θ``, re-whitened every round.

    Every function and gradient evaluation streams the evaluation set (all the data, or a
    window of chunks) through ``model.accumulate``; memory stays that of a few batches.

    Parameters
    ----------
    model : Model
    metric : str, optional
        Metric kind (default: the model's ``default_metric``); see
        :class:`~natgrad_stream.learner.NaturalGradientLearner`.
    structure : {"full", "diagonal", "block"}
    rounds : int
        Total rounds (re-whitenings) of the run; a resumed run continues up to it.
    iters : int
        L-BFGS iterations per round at most.
    window : int, optional
        Evaluate each round on this many chunks of the data (drawn per round from the
        seed) instead of all of them.
    tol : float
        Stop once a round improves ``J`` by at most this, relative (also L-BFGS-B's
        ``ftol`` within a round).
    gtol : float
        Stop once ``max |∇φJ|`` is at most this (also L-BFGS-B's ``gtol``).
    memory : int
        Correction pairs kept by L-BFGS (``maxcor``).
    whitening : {"eigh", "ridge", "robust"}
    damping, floor : float
        Regularization of the whitener (:func:`~natgrad_stream.whitening.whiten`).
    batch_size : int
        Rows per evaluation batch (memory, not results, depends on it).
    seed : int
        Seeds the windows and the Monte Carlo metric.
    blas_threads : int or None
        Threads of the BLAS pools during :meth:`fit` (None leaves them alone).
    mc_samples : int
        Targets sampled per row for ``metric="monte-carlo"``.

    Attributes
    ----------
    theta : ndarray, shape (P,)
        Current parameters (the best point evaluated).
    whitener : Whitener or None
        ``W`` of the last round.
    rounds_done, evaluations, samples, steps, rewhitens : int
        Completed rounds, data passes (each gives ``J`` and ``∇J``), rows streamed,
        L-BFGS iterations and metric passes.
    converged : bool
    train_loss : float
        ``J(θ)`` on the last round's evaluation set.
    result : LBFGSResult
        Summary of the last :meth:`fit`.

    Examples
    --------
    >>> from natgrad_stream.models import make_model
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 3)) * [1.0, 10.0, 100.0]
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-X @ [1.0, 0.1, 0.01]))).astype(float)
    >>> opt = NaturalLBFGS(make_model("logistic", 3)).fit((X, y))
    >>> opt.converged
    True
    """

    def __init__(self, model: Model, *, metric: str | None = None, structure: str = "full",
                 rounds: int = DEFAULT_ROUNDS, iters: int = DEFAULT_ITERS,
                 window: int | None = None, tol: float = DEFAULT_TOL,
                 gtol: float = DEFAULT_GTOL, memory: int = DEFAULT_MEMORY,
                 whitening: str = "eigh", damping: float = DEFAULT_DAMPING,
                 floor: float = DEFAULT_EIGEN_FLOOR,
                 batch_size: int = DEFAULT_EVAL_BATCH_ROWS, seed: int = 0,
                 blas_threads: int | None = 1, mc_samples: int = DEFAULT_MC_SAMPLES):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a Model, got {type(model).__name__}")
        metric = model.default_metric if metric is None else metric
        check_metric_structure(metric, structure, model)
        if whitening not in METHODS:
            raise ValueError(f"whitening must be one of {METHODS}, got {whitening!r}")
        self.model, self.metric, self.structure = model, metric, structure
        self.rounds = _positive_int("rounds", rounds)
        self.iters = _positive_int("iters", iters)
        self.window = None if window is None else _positive_int("window", window)
        self.tol = _nonnegative_float("tol", tol)
        self.gtol = _nonnegative_float("gtol", gtol)
        self.memory = _positive_int("memory", memory)
        self.whitening = whitening
        self.damping = _nonnegative_float("damping", damping)
        self.floor = _nonnegative_float("floor", floor)
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        self.seed = int(seed)
        self.blas_threads = None if blas_threads is None else \
            _positive_int("blas_threads", blas_threads)
        self.mc_samples = _positive_int("mc_samples", mc_samples)
        self._workspace = model.new_workspace(structure)
        self.result: LBFGSResult | None = None
        self.reset()

    # -- state --------------------------------------------------------------------------
    def reset(self, theta0: np.ndarray | None = None) -> NaturalLBFGS:
        """Forget everything learned; start from ``theta0`` (model default if None)."""
        P = self.model.n_params
        theta = self.model.start_params(theta0)
        self.theta = theta
        self._data_init = theta0 is None  # the first round may start from the data
        self.whitener: Whitener | None = None
        self.rounds_done = self.evaluations = self.samples = self.steps = self.rewhitens = 0
        self.converged = False
        self.train_loss = math.nan
        self.grad = np.full(P, np.nan)
        self.last_round: dict | None = None
        self._stop_requested = False
        return self

    @property
    def phi(self) -> np.ndarray:
        """``φ = W θ`` in the last round's coordinates (θ before any round)."""
        return self.theta.copy() if self.whitener is None else self.whitener.phi(self.theta)

    @property
    def cursor(self) -> Cursor:
        """Progress as a :class:`Cursor` for generic callbacks: ``epoch`` is the round."""
        return Cursor(epoch=self.rounds_done, samples=self.samples)

    def options(self) -> dict:
        """JSON-ready options (stored in checkpoints)."""
        return {
            "optimizer": {"name": NAME, "rounds": self.rounds, "iters": self.iters,
                          "window": self.window, "tol": self.tol, "gtol": self.gtol,
                          "memory": self.memory},
            "metric": self.metric, "structure": self.structure, "whitening": self.whitening,
            "damping": self.damping, "floor": self.floor, "batch_size": self.batch_size,
            "seed": self.seed, "blas_threads": self.blas_threads,
            "mc_samples": self.mc_samples,
        }

    def request_stop(self) -> None:
        """Ask :meth:`fit` to stop before its next data pass (safe from a signal handler).

        ``θ`` becomes the best point evaluated so far; an interrupted round is not
        counted, so a resumed run starts a new round (re-whitening) at that ``θ``.
        """
        self._stop_requested = True

    # -- data ---------------------------------------------------------------------------
    def _open(self, data, x, y, w) -> ArraySource:
        source = as_source(data, x=x, y=y if self.model.requires_targets else None, w=w)
        if not isinstance(source, ArraySource):
            raise TypeError("L-BFGS streams its data many times: pass arrays, a Zarr group or "
                            f"path, or an ArraySource, not a one-shot {type(source).__name__}")
        if source.n_features != self.model.n_features:
            raise DataError(f"has {source.n_features} features but the model was built for "
                            f"{self.model.n_features}", array=x)
        if self.model.requires_targets and not source.has_targets:
            raise DataError(f"model {self.model.name!r} needs targets but the source has none",
                            array=y)
        return source

    def _round_source(self, source: ArraySource, round_index: int):
        """The evaluation set of a round: ``(source, chunks)``; chunks None for all data."""
        R = source.chunk_rows
        chunks = window_chunks(math.ceil(source.n_rows / R), self.window, self.seed,
                               round_index)
        if chunks is None:
            return source, None
        # sorted, so a short last chunk stays last and chunk boundaries stay aligned
        spans = [(c * R, min((c + 1) * R, source.n_rows)) for c in chunks]
        parts = [None if a is None else _RowSpans(a, spans)
                 for a in (source.X, source.y, source.w)]
        view = ArraySource(*parts, chunk_rows=R, names=source.names,
                           name=f"{source.name} window")
        return view, chunks

    def _pass(self, source: ArraySource, theta: np.ndarray, *, chunks=None, metric=None,
              rng=None):
        """One streaming pass: ``(J, ∇θJ, metric or None, rows)``, averaged by weight."""
        P = self.model.n_params
        ws = self._workspace
        grad = np.zeros(P)
        loss = wsum = 0.0
        rows = 0
        fisher = None if metric is None else \
            RunningFisher(P, structure=self.structure, half_life=None)
        checks = self.model.data_checks()
        per_read = max(1, self.batch_size // source.chunk_rows)
        try:
            with source.batches(batch_size=self.batch_size, epochs=1, shuffle=False,
                                chunks_per_read=per_read, **checks) as stream:
                for batch in stream:
                    n = batch.X.shape[0]
                    ls, wt = self.model.accumulate(
                        batch.X, batch.y, batch.w, theta, metric=metric,
                        structure=self.structure, ws=ws, rng=rng, mc_samples=self.mc_samples)
                    loss += ls
                    wsum += wt
                    grad += ws.grad
                    rows += n
                    if fisher is not None:
                        fisher.add(ws.fisher, weight=wt, rows=n)
        except DataError as exc:
            if chunks is None:
                raise
            raise _relocate(exc, chunks, source.chunk_rows) from exc
        self.samples += rows
        self.evaluations += 1
        if not wsum > 0:
            raise DataError("the evaluation set has zero total sample weight",
                            array=source.names[2])
        G = None if fisher is None else fisher.estimate()
        return loss / wsum, grad / wsum, G, rows

    def _rewhiten(self, G: np.ndarray, round_index: int) -> dict:
        event = {"event": "rewhiten", "reason": "round", "round": round_index + 1,
                 "samples": self.samples, "step": self.steps, "drift": None}
        try:
            new = whiten(G, method=self.whitening, damping=self.damping, floor=self.floor,
                         center=self.model.center_indices or None,
                         blocks=self.model.param_bounds() if self.structure == "block" else None)
        except (WhiteningError, ValueError) as exc:
            event.update(ok=False, error=str(exc))
            warnings.warn(f"re-whitening in round {round_index + 1} failed ({exc}); keeping "
                          "the previous whitener", RuntimeWarning, stacklevel=4)
            if self.whitener is None:
                self.whitener = Whitener.identity(self.model.n_params,
                                                  diagonal=self.structure == "diagonal")
        else:
            self.whitener = new
            self.rewhitens += 1
            event.update(ok=True, **new.diagnostics.to_dict())
        return event

    # -- fitting ------------------------------------------------------------------------
    def fit(self, data, *, rounds: int | None = None, callbacks=(),
            max_samples: int | None = None, x: str = "X", y: str | None = "y",
            w: str | None = None) -> NaturalLBFGS:
        """Run rounds until convergence or ``rounds`` rounds in total.

        Continues from the current state (call :meth:`reset` to start over).

        Parameters
        ----------
        data : path, zarr.Group, (X, y[, w]) arrays or ArraySource
            Data that can be streamed repeatedly (not a one-shot iterator). For arrays
            the chunks of a window are 65,536 rows; pass an
            ``ArraySource(X, y, chunk_rows=...)`` to choose.
        rounds : int, optional
            Total rounds of the run (default: the constructor's ``rounds``).
        callbacks : sequence of Callback
            The learner's callbacks: ``on_batch_end`` after each data pass (``info.steps``
            counts L-BFGS iterations), ``on_refresh`` after each re-whitening, and
            ``on_round(learner, record)`` after each round where defined.
        max_samples : int, optional
            Stop (resumably) before a pass once this many rows have been streamed in total.
        x, y, w : str
            Array names when ``data`` is a Zarr group or path.

        Raises
        ------
        NumericalError
            When ``J`` or ``∇J`` is not finite at the start of a round.
        """
        total = self.rounds if rounds is None else _positive_int("rounds", rounds)
        if max_samples is not None:
            max_samples = _positive_int("max_samples", max_samples)
        source = self._open(data, x, y, w)
        self.result = None
        for cb in callbacks:
            cb.on_fit_start(self, None)
        t0, start_samples = time.perf_counter(), self.samples
        interrupted = self._stop_requested = False
        try:
            with limited_blas_threads(self.blas_threads):
                while self.rounds_done < total and not self.converged:
                    if self._out_of_budget(max_samples) or \
                            not self._round(source, callbacks, max_samples):
                        interrupted = True
                        break
        except BaseException as exc:
            for cb in callbacks:
                cb.on_error(self, exc)
            raise
        seconds = time.perf_counter() - t0
        gphi = self.whitener.grad_phi(self.grad) if self.whitener is not None else self.grad
        self.result = LBFGSResult(
            samples=self.samples, steps=self.steps, rewhitens=self.rewhitens, seconds=seconds,
            rows_per_s=(self.samples - start_samples) / seconds if seconds else 0.0,
            train_loss=float(self.train_loss), epochs=round(self.samples / source.n_rows, 4),
            interrupted=interrupted, rounds=self.rounds_done, evaluations=self.evaluations,
            converged=self.converged, grad_norm=float(np.linalg.norm(self.grad)),
            natural_grad_norm=float(np.linalg.norm(gphi)))
        for cb in callbacks:
            cb.on_fit_end(self, self.result)
        return self

    def _start_from_data(self, source: ArraySource) -> None:
        """Apply the model's data-informed start (:meth:`Model.initial_params`) from the
        first evaluation batch, as the streaming learner does.
        """
        self._data_init = False
        with source.batches(batch_size=self.batch_size, epochs=1, shuffle=False,
                            **self.model.data_checks()) as stream:
            first = next(iter(stream), None)
            if first is not None:
                start = self.model.initial_params(first.X, first.y, first.w)
                if start is not None:
                    self.theta = np.asarray(start, dtype=np.float64)

    def _out_of_budget(self, max_samples) -> bool:
        return self._stop_requested or (max_samples is not None and self.samples >= max_samples)

    def _round(self, source: ArraySource, callbacks, max_samples) -> bool:
        """One round; returns False when it was interrupted."""
        k, t0 = self.rounds_done, time.perf_counter()
        evals0, steps0 = self.evaluations, self.steps
        src, chunks = self._round_source(source, k)
        rng = np.random.default_rng([self.seed, k, 7])
        if k == 0 and getattr(self, "_data_init", False):
            self._start_from_data(source)
        theta0 = self.theta.copy()
        J0, g0, G, rows = self._pass(src, theta0, chunks=chunks, metric=self.metric, rng=rng)
        if not (math.isfinite(J0) and np.all(np.isfinite(g0))):
            raise NumericalError(f"non-finite loss ({J0}) or gradient at the start of round "
                                 f"{k + 1}; |θ|max = {np.abs(theta0).max():.3g}")
        event = self._rewhiten(G, k)
        W = self.whitener
        phi0 = W.phi(theta0)
        self._report(callbacks, J0, g0, rows)
        for cb in callbacks:
            cb.on_refresh(self, event)
        best = {"J": J0, "g": g0, "theta": theta0, "phi": phi0}
        nonfinite = 0

        def fun(phi):
            nonlocal nonfinite
            if np.array_equal(phi, phi0):  # L-BFGS starts with φ₀: reuse the fused pass
                return J0, W.grad_phi(g0)
            if self._out_of_budget(max_samples):
                raise _Interrupt
            theta = W.theta(phi)
            try:  # a trial point outside the model's domain is a failed trial, like NaN
                self.model.check_params(theta)
                inside = True
            except ValueError:
                inside = False
            if inside:
                J, g, _, n = self._pass(src, theta, chunks=chunks)
            else:
                J, g = math.nan, np.full_like(phi, np.nan)
            if not (math.isfinite(J) and np.all(np.isfinite(g))):
                nonfinite += 1
                rise = NONFINITE_RISE * max(1.0, abs(best["J"]))
                d = phi - best["phi"]
                return best["J"] + rise, 2.0 * rise * d / max(float(d @ d), 1e-300)
            if J < best["J"]:
                best.update(J=J, g=g, theta=theta, phi=phi.copy())
            self._report(callbacks, J, g, n)
            return J, W.grad_phi(g)

        def count_iteration(*_):
            self.steps += 1

        complete, message = True, "interrupted"
        try:
            res = scipy.optimize.minimize(
                fun, phi0, jac=True, method="L-BFGS-B", callback=count_iteration,
                options={"maxiter": self.iters, "maxcor": self.memory, "ftol": self.tol,
                         "gtol": self.gtol})
            message = str(res.message)
        except _Interrupt:
            complete = False
        self.theta, self.train_loss, self.grad = best["theta"], best["J"], best["g"]
        gphi = W.grad_phi(best["g"])
        rel = (J0 - best["J"]) / max(abs(J0), abs(best["J"]), 1.0)
        if complete:
            self.rounds_done += 1
            self.converged = chunks is None and (rel <= self.tol or
                                                 float(np.abs(gphi).max()) <= self.gtol)
        record = {
            "event": "round", "round": k + 1, "complete": complete, "loss_start": J0,
            "loss": best["J"], "relative_improvement": rel,
            "grad_norm": float(np.linalg.norm(best["g"])),
            "natural_grad_norm": float(np.linalg.norm(gphi)),
            "max_natural_grad": float(np.abs(gphi).max()),
            "iterations": self.steps - steps0, "evaluations": self.evaluations - evals0,
            "total_evaluations": self.evaluations, "samples": self.samples,
            "rows_per_evaluation": rows,
            "window": None if chunks is None else chunks.tolist(),
            "nonfinite_trials": nonfinite, "status": message, "converged": self.converged,
            "rewhiten": {k_: v for k_, v in event.items() if k_ not in ("event", "round")},
            "seconds": time.perf_counter() - t0,
        }
        self.last_round = record
        for cb in callbacks:
            hook = getattr(cb, "on_round", None)
            if hook is not None:
                hook(self, record)
        return complete

    def _report(self, callbacks, J, g, rows) -> None:
        if not callbacks:
            return
        gphi = self.whitener.grad_phi(g)
        info = StepInfo(loss=J, grad_norm=float(np.linalg.norm(g)),
                        natural_grad_norm=float(np.linalg.norm(gphi)), rows=rows,
                        samples=self.samples, steps=self.steps)
        for cb in callbacks:
            cb.on_batch_end(self, info, self.cursor)

    # -- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue: a nested dict of arrays and JSON values.

        Its ``model`` and ``theta`` entries are those of the SGD learner's state, so
        ``evaluate`` and ``params`` read either.
        """
        return {
            "model": self.model.config(),
            "options": self.options(),
            "theta": self.theta.copy(),
            "phi": self.phi,
            "grad": self.grad.copy(),
            "whitener": None if self.whitener is None else self.whitener.state_dict(),
            "counters": {"samples": self.samples, "steps": self.steps,
                         "rewhitens": self.rewhitens, "rounds": self.rounds_done,
                         "evaluations": self.evaluations, "converged": self.converged,
                         "train_loss": self.train_loss},
            "last_round": self.last_round,
        }

    def load_state_dict(self, state: dict) -> NaturalLBFGS:
        """Restore :meth:`state_dict` output (the model must match)."""
        if not is_lbfgs_state(state):
            raise CheckpointError("checkpoint was not written by the L-BFGS optimizer "
                                  "(optimizer lbfgs)")
        if state["model"] != self.model.config():
            raise CheckpointError(
                f"checkpoint is for model {state['model'].get('name')!r} with "
                f"{state['model'].get('n_features')} features, not "
                f"{self.model.name!r} with {self.model.n_features}")
        P = self.model.n_params
        theta = np.array(state["theta"], dtype=np.float64)
        if theta.shape != (P,):
            raise CheckpointError(f"checkpoint θ has shape {theta.shape}, expected ({P},)")
        self.theta = theta
        self.grad = np.array(state["grad"], dtype=np.float64)
        wst = state.get("whitener")
        self.whitener = None if not wst else Whitener.from_state(wst)
        c = state["counters"]
        self.samples, self.steps = int(c["samples"]), int(c["steps"])
        self.rewhitens, self.rounds_done = int(c["rewhitens"]), int(c["rounds"])
        self.evaluations, self.converged = int(c["evaluations"]), bool(c["converged"])
        self.train_loss = math.nan if c["train_loss"] is None else float(c["train_loss"])
        self.last_round = state.get("last_round")
        return self

    @classmethod
    def from_state_dict(cls, state: dict, **overrides) -> NaturalLBFGS:
        """Rebuild from :meth:`state_dict` output; ``overrides`` replace stored options."""
        if not is_lbfgs_state(state):
            raise CheckpointError("checkpoint was not written by the L-BFGS optimizer "
                                  "(optimizer lbfgs)")
        opts = dict(state["options"])
        algo = dict(opts.pop("optimizer"))
        algo.pop("name")
        kwargs = {**opts, **algo, **overrides}
        return cls(model_from_config(state["model"]), **kwargs).load_state_dict(state)


class RoundLogger(MetricsLogger):
    """:class:`MetricsLogger` that also writes one ``{"event": "round", ...}`` per round."""

    def on_round(self, learner, record: dict) -> None:
        """Append the round record."""
        self._write(record)


class RoundCheckpoint(CheckpointEvery):
    """:class:`CheckpointEvery` that saves after every round (when ``per_round``) and at the
    end.
    """

    def __init__(self, path, *, per_round: bool = True, extra: dict | None = None):
        super().__init__(path, every=None, extra=extra)
        self.per_round = bool(per_round)

    def on_round(self, learner, record: dict) -> None:
        """Save after the round."""
        if self.per_round:
            self.save(learner)


class RoundProgress(ProgressBar):
    """Status line of an L-BFGS run: rows streamed, rate, the last loss, round, passes."""

    def on_batch_end(self, learner, info, cursor):
        """Show the loss of the pass just made (each is a full evaluation, not a batch)."""
        self.loss = info.loss
        super().on_batch_end(learner, info, cursor)
        self.loss = info.loss

    def _draw(self, learner, now, end=""):
        rate = (learner.samples - self.start_samples) / max(now - self.t0, 1e-9)
        self.stream.write(f"\r{learner.samples:,} rows | {rate / 1e6:.2f} M rows/s | "
                          f"loss {self.loss:.8g} | rounds {learner.rounds_done} | "
                          f"evaluations {learner.evaluations}" + end)
        self.stream.flush()
