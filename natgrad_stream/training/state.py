"""The learner's state: one typed object holding everything a step or a round changes.

Every field declares where it lives in a checkpoint (a key path such as
``("counters", "samples")``) and how it is encoded, so :meth:`LearnerState.to_dict`,
:meth:`LearnerState.from_dict` and :meth:`LearnerState.snapshot` (taken before a step, put
back when the step is rejected) all derive from the field list: a new field is declared in
one place.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field, fields

import numpy as np

from natgrad_stream._constants import RNG_LEARNER
from natgrad_stream.data import Cursor
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.geometry.fisher import RunningFisher
from natgrad_stream.geometry.lowrank import whitener_from_state
from natgrad_stream.geometry.schedule import ScheduleState
from natgrad_stream.geometry.whitening import Whitener


def _array(v):
    return np.array(v, dtype=np.float64)


def _nan_or_float(v):
    return math.nan if v is None else float(v)


def _revive_rng(saved: dict) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = saved
    return rng


def _load_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


#: Codecs: name -> (to checkpoint, from checkpoint, snapshot): the snapshot is None for
#: values never modified in place (a step replaces them), else ``(save, revive)`` with
#: ``save(value) -> saved`` and ``revive(saved) -> a new value``.
_CODECS = {
    "array": (lambda v: v.copy(), _array, None),
    "int": (int, int, None),
    "float": (float, float, None),
    "bool": (bool, bool, None),
    "nan_float": (lambda v: v, _nan_or_float, None),
    "json": (lambda v: v, lambda v: v, None),
    "optimizer": (dict, lambda d: {k: (_array(v) if isinstance(v, np.ndarray) else v)
                                   for k, v in d.items()}, None),
    "whitener": (lambda w: None if w is None else w.state_dict(),
                 lambda d: whitener_from_state(d) if d else None, None),
    "fisher": (lambda f: f.state_dict(), RunningFisher.from_state, (copy.copy, copy.copy)),
    "schedule": (lambda s: s.to_dict(), ScheduleState.from_dict, (copy.copy, copy.copy)),
    "rng": (lambda r: r.bit_generator.state, _load_rng,
            (lambda r: r.bit_generator.state, _revive_rng)),
    "cursor": (lambda c: c.to_dict(), Cursor.from_dict, None),
    # facts about the data, not learning progress: a rejected step keeps them
    "digests": (lambda d: d.to_dict(), ChunkDigests.from_dict, None),
}


def _f(key, codec, **kw):
    """A state field stored at checkpoint key path ``key`` (None: not persisted)."""
    return field(metadata={"key": key, "codec": codec}, **kw)


@dataclass
class LearnerState:
    """Everything that learning changes; see the module docstring.

    Streaming steps use ``phi``, ``fisher``, ``optimizer``, ``schedule``, the averages and
    the epoch loss; L-BFGS rounds use ``grad``, ``rounds``, ``evaluations``,
    ``converged``, ``train_loss`` and ``last_round``. Arrays are float64, shape (P,)
    unless noted.
    """

    theta: np.ndarray = _f(("theta",), "array")
    phi: np.ndarray = _f(("phi",), "array")
    whitener: Whitener | None = _f(("whitener",), "whitener")
    fisher: RunningFisher = _f(("fisher",), "fisher")
    optimizer: dict = _f(("optimizer",), "optimizer")
    schedule: ScheduleState = _f(("schedule",), "schedule")
    rng: np.random.Generator = _f(("rng",), "rng")
    cursor: Cursor = _f(("cursor",), "cursor")
    #: Rows of the data the current epoch's plan covers (rows appended later join at the
    #: next epoch); None before the first batch.
    epoch_rows: int | None = _f(("counters", "epoch_rows"), "int", default=None)
    samples: int = _f(("counters", "samples"), "int", default=0)
    steps: int = _f(("counters", "steps"), "int", default=0)
    rewhitens: int = _f(("counters", "rewhitens"), "int", default=0)
    #: Batches skipped because their sample weights sum to zero (no step, no metric).
    skipped_zero_weight: int = _f(("counters", "skipped_zero_weight"), "int", default=0)
    #: Step factor min(1, 1/ρ) of a diagonal whitener (see the learner's curvature cap).
    step_cap: float = _f(("counters", "step_cap"), "float", default=1.0)
    rounds: int = _f(("counters", "rounds"), "int", default=0)
    evaluations: int = _f(("counters", "evaluations"), "int", default=0)
    converged: bool = _f(("counters", "converged"), "bool", default=False)
    train_loss: float = _f(("counters", "train_loss"), "nan_float", default=math.nan)
    #: ∇θJ at θ on the last L-BFGS evaluation set (or the last refinement pass).
    grad: np.ndarray | None = _f(("grad",), "array", default=None)
    #: Refinement passes (``refine="scoring"``): the base point of the current Newton step,
    #: its direction, step fraction, loss and slope ∇Jᵀd there, and the last decrement.
    refine_theta: np.ndarray | None = _f(("refine", "theta"), "array", default=None)
    refine_dir: np.ndarray | None = _f(("refine", "direction"), "array", default=None)
    refine_t: float = _f(("refine", "step"), "float", default=1.0)
    refine_loss: float = _f(("refine", "loss"), "nan_float", default=math.nan)
    refine_slope: float = _f(("refine", "slope"), "float", default=0.0)
    decrement: float = _f(("refine", "decrement"), "nan_float", default=math.nan)
    #: Accepted scoring passes in a row whose step lengthened θ with a large decrement, and
    #: once they reach UNBOUNDED_PASSES (the fit then stops: separable data), the indices
    #: of the parameters the last step moved most (else None).
    refine_growth: int = _f(("refine", "growth"), "int", default=0)
    #: Newton–CG's product cap for the next direction; 0 before any direction used the
    #: base cap (:data:`~natgrad_stream.optim.newton_cg.CG_MAX_ITERATIONS`) in full.
    cg_cap: int = _f(("refine", "cg_cap"), "int", default=0)
    unbounded: list | None = _f(("refine", "unbounded"), "json", default=None)
    #: An L-BFGS round cut short by a stop request (SIGINT, SIGTERM): the state is the
    #: round's start (the exact restart point, as after a kill) and these are the best
    #: point the cut round evaluated, its loss and ∇θJ, which the run reports until a
    #: round completes (None when no round was cut).
    stopped_theta: np.ndarray | None = _f(("stopped_round", "theta"), "array", default=None)
    stopped_loss: float = _f(("stopped_round", "loss"), "nan_float", default=math.nan)
    stopped_grad: np.ndarray | None = _f(("stopped_round", "grad"), "array", default=None)
    theta_sum: np.ndarray | None = _f(("average", "theta_sum"), "array", default=None)
    average_weight: float = _f(("average", "weight"), "float", default=0.0)
    epoch_loss_sum: float = _f(("epoch_loss", "sum"), "float", default=0.0)
    epoch_loss_weight: float = _f(("epoch_loss", "weight"), "float", default=0.0)
    last_epoch_loss: float = _f(("epoch_loss", "last"), "nan_float", default=math.nan)
    #: Divergence guard: the loss at the run's start and the current window's sums.
    loss_start: float = _f(("guard", "loss_start"), "nan_float", default=math.nan)
    window_loss_sum: float = _f(("guard", "loss_sum"), "float", default=0.0)
    window_weight: float = _f(("guard", "weight"), "float", default=0.0)
    window_batches: int = _f(("guard", "batches"), "int", default=0)
    #: Forgetting (``forget``): the rows behind the step schedules' clock, each decayed
    #: by half every ``forget`` rows since it was seen (the samples without forgetting).
    forget_rows: float = _f(("forget", "rows"), "float", default=0.0)
    #: The guard under forgetting: the samples where the windows above its threshold
    #: began (an excursion a drift may cause), None while they are below it.
    excursion_from: int | None = _f(("forget", "excursion_from"), "int", default=None)
    #: The drift alarm's running level: the guard windows' mean losses, weighted by their
    #: rows and forgotten as the data are (sums of rows·m and rows·m², the rows), the
    #: windows folded in, and whether an alarm is raised (one line until it clears).
    level_sum: float = _f(("forget", "level_sum"), "float", default=0.0)
    level_sq: float = _f(("forget", "level_sq"), "float", default=0.0)
    level_rows: float = _f(("forget", "level_rows"), "float", default=0.0)
    level_windows: int = _f(("forget", "level_windows"), "int", default=0)
    drift_alarm: bool = _f(("forget", "alarm"), "bool", default=False)
    #: Step factor after divergence rollbacks, and how many there were.
    step_scale: float = _f(("guard", "step_scale"), "float", default=1.0)
    rollbacks: int = _f(("guard", "rollbacks"), "int", default=0)
    last_refresh: dict | None = _f(("last_refresh",), "json", default=None)
    last_round: dict | None = _f(("last_round",), "json", default=None)
    #: |J| at the start of the first L-BFGS round, for models whose round improvements are
    #: measured against it (``Model.round_tol_from_start``); NaN until then.
    round_tol_scale: float = _f(("counters", "round_tol_scale"), "nan_float",
                                default=math.nan)
    #: Synchronous data-parallel streaming (Dask): each lane's stream cursor in the current
    #: epoch (a :meth:`Cursor.to_dict`, None once the lane is exhausted); None otherwise.
    lanes: list | None = _f(("distributed", "lanes"), "json", default=None)
    #: Lanes of the run's synchronous data-parallel streaming, fixed at its first epoch on
    #: a cluster (the workers then), so that later epochs and resumes keep them.
    lane_count: int | None = _f(("distributed", "lane_count"), "int", default=None)
    #: The first batch may still pick a data-informed start (only before the first step).
    data_init: bool = _f(("counters", "data_init"), "bool", default=False)
    #: Content digest of every chunk the run has read (:mod:`natgrad_stream.data.digests`).
    digests: ChunkDigests = _f(("digests",), "digests", default_factory=ChunkDigests)

    @property
    def fitted_theta(self) -> np.ndarray:
        """The parameters a fit returns: the last point whose whole-data loss was measured
        while a Fisher-scoring step from it awaits its check (``theta`` is then that
        unverified step, kept so that a resumed run continues exactly), the best point of
        an L-BFGS round cut short by a stop (``theta`` is then the round's start), else
        ``theta``.
        """
        if self.refine_dir is not None and self.refine_theta is not None:
            return self.refine_theta
        if self.stopped_theta is not None:
            return self.stopped_theta
        return self.theta

    @property
    def fitted_loss(self) -> float:
        """The loss measured at :attr:`fitted_theta` by the last L-BFGS evaluation set."""
        return self.train_loss if self.stopped_theta is None else self.stopped_loss

    @property
    def fitted_grad(self) -> np.ndarray | None:
        """``∇θJ`` at :attr:`fitted_theta` on the last L-BFGS evaluation set."""
        return self.grad if self.stopped_theta is None else self.stopped_grad

    @classmethod
    def fresh(cls, theta: np.ndarray, *, structure: str, half_life, optimizer_state: dict,
              seed: int, data_init: bool, forget: float | None = None,
              rank: int = 0, factors=None) -> LearnerState:
        """The state of a new run starting at ``theta`` (``forget``: the running metric's
        half-life at most this; ``rank``: the low-rank structure's sketch columns;
        ``factors``: the Kronecker structure's factor sizes ``(D, m)``).
        """
        P = theta.shape[0]
        return cls(theta=theta, phi=theta.copy(), whitener=None,
                   fisher=RunningFisher(P, structure=structure, half_life=half_life,
                                        limit=forget, rank=rank, factors=factors),
                   optimizer=optimizer_state, schedule=ScheduleState(),
                   rng=np.random.default_rng([seed, RNG_LEARNER]), cursor=Cursor(),
                   grad=np.full(P, np.nan), theta_sum=np.zeros(P), data_init=data_init)

    def snapshot(self) -> Snapshot:
        """What to put back if a step is rejected (O(P), a few µs: arrays are replaced by
        steps, never modified in place; only the members a step mutates are saved).
        """
        return Snapshot(copy.copy(self), [(name, revive, save(getattr(self, name)))
                                          for name, save, revive in _mutable_fields()])

    def to_dict(self) -> dict:
        """The persisted fields as a nested dict of arrays and JSON values."""
        out: dict = {}
        for f in fields(self):
            key = f.metadata["key"]
            if key is None:
                continue
            value = getattr(self, f.name)
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = None if value is None else _CODECS[f.metadata["codec"]][0](value)
        return out

    @classmethod
    def from_dict(cls, state: dict, *, defaults: LearnerState) -> LearnerState:
        """Inverse of :meth:`to_dict`; fields absent from ``state`` (a checkpoint of an
        older layout or of the other strategy) keep their value in ``defaults``.
        """
        values = {}
        for f in fields(cls):
            key = f.metadata["key"]
            node = state
            for part in key or ():
                if not isinstance(node, dict) or part not in node:
                    node = _MISSING
                    break
                node = node[part]
            if key is None or node is _MISSING:
                values[f.name] = getattr(defaults, f.name)
            else:
                values[f.name] = None if node is None and f.metadata["codec"] != "nan_float" \
                    else _CODECS[f.metadata["codec"]][1](node)
        if "data_init" not in state.get("counters", {}):  # an older checkpoint: past it
            values["data_init"] = False
        return cls(**values)


_MISSING = object()


def _mutable_fields() -> list:
    """``(name, save, revive)`` of the fields a step modifies in place (computed once)."""
    global _MUTABLE
    if _MUTABLE is None:
        _MUTABLE = [(f.name, *_CODECS[f.metadata["codec"]][2]) for f in fields(LearnerState)
                    if _CODECS[f.metadata["codec"]][2] is not None]
    return _MUTABLE


_MUTABLE = None


class SpilledArray:
    """An array moved to an unlinked temporary file (in ``TMPDIR``), read back on
    :meth:`load`: what a snapshot holds for a rejected step or a rollback, rarely read.
    """

    def __init__(self, a: np.ndarray):
        self._file = tempfile.TemporaryFile()
        np.save(self._file, a, allow_pickle=False)

    def load(self) -> np.ndarray:
        """The array, as a new one."""
        self._file.seek(0)
        return np.load(self._file, allow_pickle=False)

    def __del__(self):  # (the file, unlinked, goes with it)
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


class Snapshot:
    """A :class:`LearnerState` as it was; :meth:`restore` gives it back."""

    def __init__(self, state: LearnerState, saved: list):
        self._state, self._saved = state, saved

    def restore(self) -> LearnerState:
        """The state at the snapshot, as a new object (the snapshot stays usable: it may
        be restored again, e.g. as a rollback point).
        """
        out = copy.copy(self._state)
        for name, revive, saved in self._saved:
            setattr(out, name, revive(saved))
        if isinstance(out.fisher.sum, SpilledArray):  # (a new RunningFisher: revived)
            out.fisher.sum = out.fisher.sum.load()
        return out

    def spill(self, current: LearnerState, spilled: dict) -> None:
        """Move the running metric's sum this snapshot holds to a temporary file
        (:class:`SpilledArray`) when it is not ``current``'s; ``spilled`` maps the ids of
        arrays already moved (by other snapshots sharing them) to their files.

        A temporary directory that cannot take the file (full, read-only, missing) leaves
        the sum in memory: the spill saves memory, no answer depends on it.
        """
        for name, _, saved in self._saved:
            a = saved.sum if name == "fisher" else None
            if isinstance(a, np.ndarray) and a is not current.fisher.sum:
                if id(a) not in spilled:
                    try:
                        file = SpilledArray(a)
                    except OSError:
                        continue
                    spilled[id(a)] = (a, file)  # (a kept: ids stay unique)
                saved.sum = spilled[id(a)][1]
