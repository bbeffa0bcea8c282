"""The options table: every fit option declared once.

Each :class:`Option` holds the name, how a value is checked and converted (from a Python
value or a command-line string), the default, the allowed values, the help text, which
optimizers it applies to, whether a model may recommend it, and whether it may change on
``--resume``. Everything else is derived from :data:`OPTIONS`:

- the ``natgrad-stream fit`` flags (:func:`add_arguments`),
- the learner's keyword arguments and their validation (:func:`resolve`),
- the effective options recorded in ``run.json`` and checkpoints, and the comparison of a
  resumed run's options with them (:func:`check_resume`).

Resolution of a learner option, the same under every optimizer: a value the user sets
wins; an option left unset takes the model's recommendation
(:attr:`natgrad_stream.models.Model.learner_defaults`), then the optimizer's own default
(e.g. L-BFGS evaluates 65,536-row batches), then the table's default. Options that do not
apply to the chosen optimizer are refused when set to anything but their default, and
have no effective value.

This module imports no kernels, so ``natgrad-stream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natgrad_stream._constants import (
    AUTO_FULL_HESSIAN_MAX_PARAMS,
    AUTO_FULL_MAX_PARAMS,
    AUTO_FULL_MIN_ROWS_PER_PARAM,
    AUTO_MAX_EPOCHS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DAMPING,
    DEFAULT_DRIFT_PROBES,
    DEFAULT_EIGEN_FLOOR,
    DEFAULT_KEEP_CHECKPOINTS,
    DEFAULT_LOG_EVERY,
    DEFAULT_LOWRANK_RANK,
    DEFAULT_MC_SAMPLES,
    DEFAULT_POLL_SECONDS,
    DEFAULT_PROGRESS_SECONDS,
    DEFAULT_READ_BUFFER_BYTES,
    DIVERGENCE_FACTOR,
    FISHER_EVERY_PARAMS,
    LBFGS_EVAL_BATCH_ROWS,
    LBFGS_GTOL,
    LBFGS_ITERS,
    LBFGS_MEMORY,
    LBFGS_ROUNDS,
    LBFGS_TOL,
    REFINE_RANK_FACTOR,
)
from natgrad_stream.errors import OptionError

#: Registries mirrored literally (a test checks them against ``natgrad_stream.models`` and
#: ``natgrad_stream.data.datasets``) so that reading the table imports no kernels.
MODEL_CHOICES = ("logistic", "linear", "poisson", "softmax", "gaussian", "gaussian-mean",
                 "ising", "ica", "mlp")
METRIC_CHOICES = ("model", "empirical", "monte-carlo", "loss-gradient", "energy",
                  "gauss-newton", "amari", "kfac")
STRUCTURE_CHOICES = ("auto", "full", "diagonal", "block", "lowrank", "kronecker")
STREAMING_OPTIMIZERS = ("sgd", "momentum", "adam")
OPTIMIZER_CHOICES = STREAMING_OPTIMIZERS + ("lbfgs",)
STEP_SCHEDULE_CHOICES = ("harmonic", "sqrt", "constant")
WHITENING_CHOICES = ("eigh", "ridge", "robust")
PROGRESS_CHOICES = ("auto", "always", "never")
REFINE_CHOICES = ("auto", "scoring", "stream", "lbfgs", "newton-cg")

#: Strategies of the training loop: per-batch steps of a streaming optimizer, or rounds of
#: L-BFGS evaluations.
STREAM, LBFGS = "stream", "lbfgs"
BOTH = (STREAM, LBFGS)

#: Option groups: what an option configures.
DATA, MODEL, LEARNER, RUN = "data", "model", "learner", "run"


def strategy_of(optimizer: str) -> str:
    """The loop strategy of an optimizer name."""
    return LBFGS if optimizer == "lbfgs" else STREAM


# -- value checks: each takes a Python value or a command-line string ----------------------
def _number(name: str, value, kind=float):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise OptionError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                              f"got {value!r}") from None
    if kind is int:
        if not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None


def positive_int(name, value) -> int:
    v = _number(name, value, int)
    if v < 1:
        raise OptionError(f"{name} must be >= 1, got {value}")
    return v


def nonnegative_int(name, value) -> int:
    v = _number(name, value, int)
    if v < 0:
        raise OptionError(f"{name} must be >= 0, got {value}")
    return v


def positive_float(name, value) -> float:
    v = _number(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise OptionError(f"{name} must be a finite number > 0, got {value}")
    return v


def positive_float_or_none(name, value):
    """A finite number > 0, or None (``"none"``)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    return positive_float(name, value)


def nonnegative_float_or_none(name, value):
    """A finite number >= 0, or None (``"none"``)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    return nonnegative_float(name, value)


def nonnegative_float(name, value) -> float:
    v = _number(name, value)
    if not (v >= 0 and math.isfinite(v)):
        raise OptionError(f"{name} must be a finite number >= 0, got {value}")
    return v


#: Units of a byte size (binary: ``1K`` = 1,024 bytes), with an optional ``B`` or ``iB``.
_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_BYTE_SIZE = re.compile(r"(?P<number>\d+(\.\d*)?)\s*(?P<unit>[kKmMgGtT])?(i?[bB])?")


def byte_size(name, value):
    """A byte count >= 1 from an int or a string (``"536870912"``, ``"512M"``, ``"1G"``,
    ``"1.5GiB"``; binary units K, M, G, T), or None (``"none"``).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{name} must be a byte count such as 512M or 1G, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _BYTE_SIZE.fullmatch(value.strip())
        if m is None:
            raise OptionError(f"{name} must be a byte count such as 512M or 1G, got "
                              f"{value!r}")
        n = int(float(m["number"]) * _BYTE_UNITS[(m["unit"] or "").upper()])
    if n < 1:
        raise OptionError(f"{name} must be at least 1 byte, got {value!r}")
    return n


def show_bytes(n: int) -> str:
    """``n`` bytes the way :func:`byte_size` reads them, shortest exact form (``512M``)."""
    for unit in ("T", "G", "M", "K"):
        if n % _BYTE_UNITS[unit] == 0:
            return f"{n // _BYTE_UNITS[unit]}{unit}"
    return str(n)


def text(name, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def flag(name, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def half_life(name, value):
    """``"auto"``, None (``"none"``/``"inf"``: plain sums) or a positive number of samples."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "inf")):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    return positive_float(name, value)


def fisher_every(name, value):
    """``"auto"`` or a positive number of batches."""
    return "auto" if value == "auto" else positive_int(name, value)


def auto_or_count(name, value):
    """``"auto"`` or a positive count (restarts)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return positive_int(name, value)


def rewhiten(name, value):
    """A re-whitening schedule spec, returned as the schedule's constructor arguments."""
    from natgrad_stream.geometry.schedule import RefreshSchedule

    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        return RefreshSchedule.parse(value).config()
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{name}: {exc}") from None


def _every_samples(name, value):  # --rewhiten-every N: the schedule every:N
    return rewhiten(name, positive_int(name, value))


def at_most(name, value, maximum, given=None):
    """``value`` if it is at most ``maximum`` (a number; for a dict value, such as a
    re-whitening schedule's, a dict of maxima by key), else :class:`OptionError`.
    """
    given = value if given is None else given
    if maximum is None or value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, dict):
        for key, top in maximum.items():
            if value.get(key) is not None and value[key] > top:
                raise OptionError(f"{name} must have {key} <= {_show_bound(top)}, got "
                                  f"{given}")
        return value
    if value > maximum:
        raise OptionError(f"{name} must be <= {_show_bound(maximum)}, got {given}")
    return value


def _show_bound(maximum) -> str:
    return f"{maximum:,}" if isinstance(maximum, int) else f"{maximum:g}"


@dataclass(frozen=True)
class Option:
    """One fit option.

    Attributes
    ----------
    name : str
        Python keyword (``step_schedule``); the flag is ``--step-schedule`` unless ``flag``.
    check : callable
        ``check(name, value) -> value``: validates and converts a Python value or a string.
    default
        The default when unset (None for values resolved from the model or optimizer).
    help : str
    group : {"data", "model", "learner", "run"}
    applies : tuple of {"stream", "lbfgs"}
        Strategies the option applies to.
    choices : tuple, optional
    resumable : bool
        May change on ``--resume`` (it does not change what has been learned).
    recommendable : bool
        A model may recommend it (``Model.learner_defaults``).
    nullable : bool
        None is a value of its own (else None means "unset").
    flag : str or None
        Command-line flag; "" derives it from ``name``; None: Python only.
    lbfgs_default
        The L-BFGS strategy's own default, where it differs.
    inherit : bool
        A resumed run left without it keeps the recorded value (else: the default; for
        per-invocation options such as ``max_samples`` and ``progress``).
    maximum : number or dict, optional
        The largest value accepted (a sanity bound: far beyond any useful value, short of
        what would hang, overflow or exhaust memory); for ``rewhiten``, maxima by key of
        the schedule. Every numeric option has one (a test checks it).
    """

    name: str
    check: Callable[[str, Any], Any]
    default: Any
    help: str
    group: str = LEARNER
    applies: tuple[str, ...] = BOTH
    choices: tuple | None = None
    resumable: bool = False
    recommendable: bool = False
    nullable: bool = False
    flag: str | None = ""
    metavar: str | None = None
    lbfgs_default: Any = None
    inherit: bool = True
    maximum: Any = None

    @property
    def cli_flag(self) -> str | None:
        """The command-line flag, or None."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, value):
        """Check and convert ``value`` (None passes through when nullable)."""
        if value is None and self.nullable:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise OptionError(f"{self.name} must be one of {list(self.choices)}, got "
                                  f"{value!r}")
            return value
        return self.check_value(self.name, value)

    def check_value(self, name: str, value):
        """``check`` then the upper bound, with ``name`` (a flag or keyword) in messages."""
        return at_most(name, self.check(name, value), self.maximum, value)

    def default_for(self, strategy: str):
        """The default under ``strategy``."""
        if strategy == LBFGS and self.lbfgs_default is not None:
            return self.lbfgs_default
        return self.default


def _choice(name, value):  # used with Option.choices, which parse() checks first
    return value


def _o(name, check, default, help, **kw) -> Option:  # noqa: A002 (help: argparse's word)
    return Option(name, check, default, help, **kw)


_LB = (LBFGS,)
_ST = (STREAM,)

#: Upper bounds shared by several options (sanity bounds, far beyond any useful value): rows
#: held in memory at once (a batch, a shuffle window), units of a model layer or classes,
#: samples (a counter that must stay an int64), counts of passes, rounds and batches,
#: threads and workers, seeds (32 bits, as every generator takes them), wall-clock seconds
#: (a year), and seconds of one wait (a day: waits wake up for signals, but an interval
#: longer than this is a typo).
MAX_ROWS_IN_MEMORY = 1 << 26
MAX_UNITS = 100_000
MAX_SAMPLES = 10**18
MAX_COUNT = 10**9
MAX_THREADS = 1_024
MAX_SEED = 2**32 - 1
MAX_SECONDS = 366 * 86_400.0
MAX_WAIT_SECONDS = 86_400.0

#: Every option of ``fit``, in ``--help`` order.
OPTIONS: tuple[Option, ...] = (
    # -- data ------------------------------------------------------------------------------
    _o("x", text, "X", "features array; for a table, columns: names or globs, "
       "comma-separated, e.g. 'f*' (default every column but y and w)", group=DATA,
       metavar="NAME"),
    _o("y", text, "y", "targets array (table: column; .npy: a second .npy file or a column "
       "index)", group=DATA, metavar="NAME"),
    _o("w", text, None, "optional sample-weight array (or column)", group=DATA, nullable=True,
       metavar="NAME"),
    _o("one_hot", flag, False, "tables: one-hot the string and dictionary columns of --x "
       "(sparse rows; the same as ending --x in ';onehot')", group=DATA),
    _o("hash_bits", positive_int, None, "tables: hash the columns of --x into 2**B sparse "
       "features (categories as 'column=value'; the same as ending --x in ';hash=B')",
       group=DATA, nullable=True, metavar="B", maximum=31),
    _o("follow", flag, False, "learn rows as another process appends them (committed with "
       "natgrad_stream.data.append_rows), each once, in arrival order; stops on SIGINT/"
       "SIGTERM (resumable) or after --idle-timeout", group=DATA, applies=_ST),
    _o("shuffle_window", positive_int, None, "--follow: shuffle rows within windows of N "
       "arriving rows (default: arrival order)", group=DATA, applies=_ST, nullable=True,
       metavar="N", maximum=MAX_ROWS_IN_MEMORY),
    # -- model -----------------------------------------------------------------------------
    _o("model", _choice, None, "model family (required unless --resume)", group=MODEL,
       choices=MODEL_CHOICES),
    _o("mixing", text, None, "gaussian-mean: mixing-matrix array in DATA (default A if "
       "present)", group=MODEL, nullable=True, metavar="NAME"),
    _o("classes", positive_int, None, "softmax: number of classes (default: from the data)",
       group=MODEL, nullable=True, metavar="K", maximum=MAX_UNITS),
    _o("hidden", positive_int, None, "mlp: hidden units (default 16)", group=MODEL,
       nullable=True, metavar="H", maximum=MAX_UNITS),
    _o("density", _choice, None, "ica: source density; adaptive (the default) learns each "
       "source's shape (sub- or super-Gaussian), sech is the fixed prior of --sharpness",
       group=MODEL, nullable=True, choices=("adaptive", "sech")),
    _o("sharpness", positive_float, None, "ica: the sech density p(s) ∝ cosh(B·s)^(−1/B) "
       "(implies --density sech); default 0.5, the logistic density; larger B is closer to "
       "a Laplace prior", group=MODEL, nullable=True, metavar="B", maximum=1e3),
    # -- learner ---------------------------------------------------------------------------
    _o("optimizer", _choice, "sgd", "optimizer of φ; lbfgs: batch L-BFGS in the natural "
       "space, re-whitened every round (paper section 2.7)", choices=OPTIMIZER_CHOICES),
    _o("metric", _choice, None, "metric kind (default: the model's own; see the README)",
       choices=METRIC_CHOICES),
    _o("round_metric", _choice, None, "metric kind the L-BFGS rounds whiten by (--optimizer "
       "lbfgs, --refine lbfgs; default: --metric if given, else the model's own for them: "
       "the mlp's kfac; run.json records it, so a resumed run whitens alike)",
       nullable=True, choices=METRIC_CHOICES),
    _o("structure", _choice, "auto", "full, diagonal (eq. 34), block-diagonal by "
       "parameter group, or lowrank (the diagonal plus a rank --rank Nyström sketch of the "
       "metric, O(P·rank) memory; later passes as the diagonal's), or kronecker (softmax: "
       "the K-FAC factors, (d+1)² + (K−1)² memory; later passes Newton–CG preconditioned "
       "by the whole data's factors); auto: "
       f"full up to {AUTO_FULL_MAX_PARAMS:,} parameters (up to "
       f"{AUTO_FULL_HESSIAN_MAX_PARAMS:,} for the GLMs, softmax and the Gaussians on dense "
       f"data of {AUTO_FULL_MIN_ROWS_PER_PARAM}+ rows per parameter), beyond: lowrank on "
       "dense data for the GLMs and softmax, else diagonal (kronecker only when asked for) "
       "(run.json records the structure used)", choices=STRUCTURE_CHOICES),
    _o("rank", positive_int, DEFAULT_LOWRANK_RANK, "columns of --structure lowrank's "
       "sketch of the metric (its rank; memory 16·P·rank bytes; the passes after the first "
       f"sketch the whole data's with {REFINE_RANK_FACTOR}·K)", metavar="K",
       maximum=MAX_UNITS),
    _o("mc_samples", positive_int, DEFAULT_MC_SAMPLES,
       "targets sampled per row for --metric monte-carlo", metavar="K", maximum=1_000),
    _o("whitening", _choice, "eigh", "regularized factorization of the metric: eigh, ridge "
       "(eq. 36) or robust (eq. 35)", choices=WHITENING_CHOICES),
    _o("damping", nonnegative_float, DEFAULT_DAMPING, "relative damping ε of the whitener "
       "(ridge ε of eq. 36, eq. 35's ε); default: the model's own, else this",
       recommendable=True, maximum=1e6),
    _o("floor", nonnegative_float, DEFAULT_EIGEN_FLOOR,
       "eigenvalue floor relative to the largest (eigh, robust)", maximum=1.0),
    _o("l2", nonnegative_float, 0.0, "L2 penalty λ: minimize the mean loss + λ/2·‖coef‖² "
       "(the intercepts are not penalized; added to the loss, the gradient and the metric, "
       "G + λI); the recorded λ cannot change on --resume", metavar="LAMBDA", maximum=1e12),
    _o("batch_size", positive_int, DEFAULT_BATCH_SIZE, "rows per batch (lbfgs: rows per "
       f"evaluation batch, default {LBFGS_EVAL_BATCH_ROWS})",
       lbfgs_default=LBFGS_EVAL_BATCH_ROWS, maximum=MAX_ROWS_IN_MEMORY),
    _o("seed", nonnegative_int, 0, "seeds the data order, drift probes, Monte Carlo "
       "targets and L-BFGS windows", maximum=MAX_SEED),
    _o("read_buffer_bytes", byte_size, DEFAULT_READ_BUFFER_BYTES, "bytes the read buffers "
       f"of a data stream may take ({show_bytes(DEFAULT_READ_BUFFER_BYTES)} by default; "
       "K, M, G, T: 256M, 1G; none: 4 buffers of 2 "
       "chunks whatever their size); the reader prefetches less, then reads fewer chunks "
       "at once, to fit, which changes the shuffled order only when the budget binds; a "
       "chunk too large for 3 buffers is read one at a time, over the budget (a warning)",
       nullable=True, metavar="BYTES", maximum=1 << 40),
    _o("blas_threads", positive_int, 1, "threads of the BLAS pools during fit (None leaves "
       "them alone)", nullable=True, flag=None, maximum=MAX_THREADS),
    # streaming optimizers
    _o("lr", positive_float, None, "step-size scale (default: the model's own, else the "
       "optimizer's: 1 for sgd and momentum, 0.05 for adam)", applies=_ST,
       recommendable=True, maximum=1e6),
    _o("step_schedule", _choice, None, "step sizes over samples t: harmonic b/t, sqrt "
       "√(b/t) or constant (default: the model's own, else the optimizer's)",
       applies=_ST, recommendable=True, choices=STEP_SCHEDULE_CHOICES),
    _o("rewhiten", rewhiten, "auto", "re-whitening schedule: auto, never, every:N, "
       "geometric:F, drift:T (--rewhiten-every N is every:N)", applies=_ST,
       recommendable=True, maximum={"every": MAX_SAMPLES, "factor": 1e6, "drift": 1e6}),
    _o("half_life", half_life, "auto", "running-metric half-life in samples, 'auto' or "
       "'none'", applies=_ST, nullable=True, maximum=1e18),
    _o("forget", positive_float, None, "exponential forgetting for drifting streams "
       "(--follow, one pass, --refine stream): each row's weight halves every HALF_LIFE "
       "rows after it, in the steps (the step schedule's clock is the forgotten row "
       "count), the running metric (its half-life at most this), the running loss and the "
       "Polyak average; adds a drift alarm to the log and keeps drift from tripping the "
       "divergence guard", applies=_ST, nullable=True, metavar="HALF_LIFE", maximum=1e18),
    _o("fisher_every", fisher_every, "auto", f"accumulate the metric on one batch in N "
       f"(auto: round(P/{FISHER_EVERY_PARAMS}))", applies=_ST, recommendable=True,
       metavar="N", maximum=MAX_COUNT),
    _o("average", flag, False, "keep a Polyak average of θ (params and evaluate report it)",
       applies=_ST),
    _o("refine", _choice, "auto", "passes after the first; auto: the model's own, else "
       "scoring, and with --structure diagonal newton-cg where the metric is the Hessian "
       "(the GLMs), lbfgs otherwise; scoring (each pass one "
       "natural-gradient Newton step, i.e. Fisher scoring / IRLS, on the whole data, with "
       "backtracking; for models whose metric is the Hessian, the GLMs), lbfgs (rounds of "
       "L-BFGS in the natural space, re-whitened every round, with the --lbfgs-* defaults; "
       "the models' own default otherwise), newton-cg (each pass a Newton step whose "
       "direction conjugate gradients solve on metric-vector passes, preconditioned by "
       "the diagonal; the default of --structure diagonal where the metric is the "
       "Hessian, the GLMs; lbfgs for the others) or stream (more streaming steps)", applies=_ST,
       recommendable=True, choices=REFINE_CHOICES),
    _o("n_init", auto_or_count, "auto", "fits from different random starts (models "
       "that draw one: the mlp); the run keeps the one with the lowest training loss and "
       "run.json lists them all; auto: as many as the model's budget allows on the data "
       "(mlp: up to 10 on small data, 1 on large), 1 with --epochs, --max-samples, "
       "--follow or Dask", applies=_ST, metavar="K", maximum=1_000),
    _o("tol", nonnegative_float_or_none, None, "stop once the Newton decrement "
       "½∇Jᵀ G⁻¹ ∇J over a whole pass is at most T·|J| (passes after the first; "
       "--epochs stays the cap)", applies=_ST, nullable=True, resumable=True, metavar="T",
       maximum=1.0),
    _o("divergence_factor", positive_float_or_none, DIVERGENCE_FACTOR, "stop (exit 1, state rolled "
       "back) when the mean loss of a window of batches rises more than this factor × "
       "|loss at the start| above the start; 'none' disables", applies=_ST, nullable=True,
       metavar="F", maximum=1e12),
    _o("drift_probes", positive_int, DEFAULT_DRIFT_PROBES,
       "probe vectors per drift estimate", applies=_ST, metavar="N", maximum=1_000),
    # L-BFGS
    _o("lbfgs_rounds", positive_int, LBFGS_ROUNDS, "lbfgs: total rounds (re-whitenings); a "
       "resumed run continues up to this count", applies=_LB, resumable=True, metavar="R",
       maximum=MAX_COUNT),
    _o("lbfgs_iters", positive_int, LBFGS_ITERS, "lbfgs: L-BFGS iterations per round at "
       "most", applies=_LB, metavar="N", maximum=MAX_COUNT),
    _o("lbfgs_tol", nonnegative_float, LBFGS_TOL, "lbfgs: stop when a round that descended "
       "improves the loss by at most T, relative", applies=_LB, metavar="T", maximum=1.0),
    _o("lbfgs_gtol", nonnegative_float, LBFGS_GTOL, "lbfgs: stop when max |natural gradient "
       "in φ| <= T", applies=_LB, metavar="T", maximum=1e12),
    _o("lbfgs_memory", positive_int, LBFGS_MEMORY, "lbfgs: correction pairs kept by L-BFGS",
       applies=_LB, metavar="M", maximum=1_000),
    _o("window", positive_int, None, "lbfgs: evaluate each round on this many chunks drawn "
       "by the seed (default: all the data)", applies=_LB, nullable=True,
       metavar="CHUNKS", maximum=MAX_COUNT),
    # -- run: may change on --resume --------------------------------------------------------
    _o("epochs", positive_int, None, "total passes; a resumed run continues up to this "
       "count (default: until the later passes' rule holds, at most "
       f"{AUTO_MAX_EPOCHS} passes, ica 200; one pass with --follow or --refine stream)", group=RUN,
       applies=_ST, resumable=True, maximum=MAX_COUNT),
    _o("max_samples", positive_int, None, "stop (resumably) after this many samples in "
       "total", group=RUN, resumable=True, nullable=True, inherit=False, maximum=MAX_SAMPLES),
    _o("checkpoint_every", positive_int, None, "also checkpoint every N samples",
       group=RUN, applies=_ST, resumable=True, nullable=True, metavar="N", maximum=MAX_SAMPLES),
    _o("checkpoint_seconds", positive_float, None, "also checkpoint every S seconds of "
       "wall time", group=RUN, resumable=True, nullable=True, metavar="S", maximum=MAX_SECONDS),
    _o("keep_checkpoints", positive_int, DEFAULT_KEEP_CHECKPOINTS, "checkpoints kept in "
       "RUN (the newest as checkpoint.npz, older ones as checkpoint.1.npz, …); --resume "
       "falls back to an older one when the newest is damaged", group=RUN, resumable=True,
       metavar="K", maximum=1_000),
    _o("poll_seconds", positive_float, DEFAULT_POLL_SECONDS, "--follow: seconds between "
       "looks for new rows", group=RUN, applies=_ST, resumable=True, metavar="S",
       maximum=MAX_WAIT_SECONDS),
    _o("idle_timeout", nonnegative_float_or_none, None, "--follow: end the fit (exit 0) "
       "after S seconds without new rows (default: wait until stopped)", group=RUN,
       applies=_ST, resumable=True, nullable=True, metavar="S", maximum=MAX_SECONDS),
    _o("val", text, None, "held-out data to evaluate during fit (a store with the --x/--y "
       "arrays; default: the training store when --val-x is given)", group=RUN,
       resumable=True, nullable=True, metavar="DATA"),
    _o("val_x", text, None, "held-out features array (in --val or the training store)",
       group=RUN, resumable=True, nullable=True, metavar="NAME"),
    _o("val_y", text, None, "held-out targets array", group=RUN, resumable=True,
       nullable=True, metavar="NAME"),
    _o("val_every", positive_int, None, "samples between held-out evaluations (default "
       "--log-every), logged to metrics.jsonl as validation records", group=RUN,
       resumable=True, nullable=True, metavar="N", maximum=MAX_SAMPLES),
    _o("dask", text, None, "run on the Dask scheduler at ADDRESS (tcp://host:port): the "
       "workers open the store and read their own chunks; passes equal one process's, "
       "streaming steps merge one batch per worker", group=RUN, resumable=True,
       nullable=True, inherit=False, metavar="ADDRESS"),
    _o("dask_workers", positive_int, None, "run on a local Dask cluster of N worker "
       "processes started for this fit (as --dask)", group=RUN, resumable=True,
       nullable=True, inherit=False, metavar="N", maximum=MAX_THREADS),
    _o("log_every", positive_int, DEFAULT_LOG_EVERY,
       "samples between progress records in metrics.jsonl", group=RUN, resumable=True,
       metavar="N", maximum=MAX_SAMPLES),
    _o("progress", _choice, "auto", "progress on stderr: a bar on a terminal, else a line "
       "every --progress-seconds (auto: the bar or lines; always: also a start and an end "
       "line for short runs; never)", group=RUN, resumable=True, choices=PROGRESS_CHOICES,
       inherit=False),
    _o("progress_seconds", positive_float, DEFAULT_PROGRESS_SECONDS, "without a terminal: "
       "seconds between progress lines on stderr", group=RUN, resumable=True, metavar="S",
       maximum=MAX_WAIT_SECONDS),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}

#: Python keywords and ``run.json`` keys of releases before one name per option (old name ->
#: name). Keywords are still accepted, with a DeprecationWarning; recorded runs are read
#: through :func:`upgrade_recorded`. The old ``tol`` (now ``lbfgs_tol``) cannot be an alias:
#: ``tol`` is the Newton-decrement tolerance of ``--tol``, as in the estimators.
RENAMED = {"decrement_tol": "tol", "rounds": "lbfgs_rounds", "iters": "lbfgs_iters",
           "gtol": "lbfgs_gtol", "memory": "lbfgs_memory"}


def upgrade_keywords(options: dict, *, where: str = "keyword") -> dict:
    """``options`` with the old names of :data:`RENAMED` replaced (DeprecationWarning)."""
    import warnings

    old = [k for k in options if k in RENAMED]
    if not old:
        return options
    out = dict(options)
    for name in old:
        new = RENAMED[name]
        if new in options:
            raise OptionError(f"{name} and {new} are the same option (the {where} {name} is "
                              f"the old name of {new}): give {new} only")
        warnings.warn(f"the {where} {name} is deprecated: it is now {new}", DeprecationWarning,
                      stacklevel=4)
        out[new] = out.pop(name)
    return out


def upgrade_recorded(options: dict) -> dict:
    """Recorded options (``run.json``, checkpoints) written before one name per option, under
    today's names; newer records come back unchanged. Old records always hold one of the old
    names (``decrement_tol`` for streaming runs, ``rounds`` for L-BFGS), and in them ``tol``
    was the L-BFGS tolerance. Records from before ``read_buffer_bytes`` read with buffers
    sized in rows: they get ``read_buffer_bytes = None``, so a resume reads as they did.
    """
    out = dict(options) if not any(k in options for k in RENAMED) else \
        {("lbfgs_tol" if k == "tol" else RENAMED.get(k, k)): v for k, v in options.items()}
    out.setdefault("read_buffer_bytes", None)
    return out
#: Keyword options of the learner's constructor, and the other groups.
LEARNER_OPTIONS = tuple(o.name for o in OPTIONS if o.group == LEARNER)
RUN_OPTIONS = tuple(o.name for o in OPTIONS if o.group == RUN)
DATA_OPTIONS = tuple(o.name for o in OPTIONS if o.group == DATA)
MODEL_OPTIONS = tuple(o.name for o in OPTIONS if o.group == MODEL)


# -- derived: argparse ------------------------------------------------------------------------
def _describe_default(opt: Option) -> str:
    if opt.default is None or opt.default is False:
        return ""
    text_ = f" (default {opt.default}"
    if opt.lbfgs_default is not None:
        text_ += f"; lbfgs {opt.lbfgs_default}"
    return text_ + ")"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option with a flag to ``parser``.

    Flags default to ``argparse.SUPPRESS``: an option the user does not set is absent from
    the namespace, so resolution can tell it from one set to its default.
    """
    for opt in OPTIONS:
        if opt.cli_flag is None:
            continue
        kw: dict = {"dest": opt.name, "default": argparse.SUPPRESS,
                    "help": opt.help + _describe_default(opt)}
        if opt.check is flag:
            parser.add_argument(opt.cli_flag, action="store_const", const=True, **kw)
            continue
        if opt.choices is not None:
            kw["choices"] = opt.choices
        else:
            kw["type"] = _argparse_type(opt)
        if opt.metavar:
            kw["metavar"] = opt.metavar
        if opt.name == "model":
            kw["help"] = opt.help
        parser.add_argument(opt.cli_flag, **kw)
        if opt.name == "rewhiten":
            parser.add_argument("--rewhiten-every", dest="rewhiten", metavar="N",
                                default=argparse.SUPPRESS,
                                type=_argparse_type(opt, _every_samples),
                                help="re-whiten every N samples (same as --rewhiten every:N)")


def _argparse_type(opt: Option, check=None):
    check = check or opt.check

    def convert(value: str):
        try:
            return at_most(opt.cli_flag, check(opt.cli_flag, value), opt.maximum, value)
        except (OptionError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = opt.name
    return convert


def given_options(namespace: argparse.Namespace) -> dict:
    """The table options set on the command line (unset ones are absent)."""
    return {k: v for k, v in vars(namespace).items() if k in BY_NAME}


# -- derived: resolution ---------------------------------------------------------------------
def _flag_or_name(opt: Option) -> str:
    return opt.cli_flag or opt.name


def check_known(options: dict, names) -> None:
    """Refuse keys that are not among ``names`` (TypeError, as for a bad keyword)."""
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''}: "
                        f"{', '.join(unknown)}")


def explicit(options: dict) -> dict:
    """The options actually set: None means unset for options where None is no value."""
    return {k: v for k, v in options.items() if not (v is None and not BY_NAME[k].nullable)}


def resolve(given: dict, model, *, names=LEARNER_OPTIONS, optimizer: str | None = None) -> dict:
    """Effective values of the options ``names`` for ``model``.

    Parameters
    ----------
    given : dict
        Options the user set (keys among ``names``; None = unset where not nullable).
    model : Model
        Its ``learner_defaults`` and ``default_metric`` fill unset options.
    names : sequence of str
        The options to resolve (default: the learner's).
    optimizer : str, optional
        The optimizer when ``names`` does not include it.

    Returns
    -------
    dict
        Every option of ``names`` that applies to the chosen optimizer, checked and
        resolved: ``metric``, ``lr``, ``step_schedule`` and ``fisher_every="auto"`` become
        the values used; ``rewhiten`` the schedule's constructor arguments.
    """
    from natgrad_stream.optim.rules import OPTIMIZERS

    given = upgrade_keywords(given)
    check_known(given, names)
    given = {k: BY_NAME[k].parse(v) for k, v in explicit(given).items()}
    optimizer = given.get("optimizer", optimizer or BY_NAME["optimizer"].default)
    strategy = strategy_of(optimizer)
    recommended = dict(getattr(model, "learner_defaults", {}) or {})
    out: dict = {}
    misplaced = []
    for name in names:
        opt = BY_NAME[name]
        if strategy not in opt.applies:
            if name in given and not (given[name] is None and opt.default is None):
                misplaced.append(_flag_or_name(opt))
            continue
        if name in given:
            out[name] = given[name]
        elif opt.recommendable and name in recommended:
            out[name] = opt.parse(recommended[name])
        else:
            out[name] = opt.parse(opt.default_for(strategy)) if opt.default is not None \
                else opt.default_for(strategy)
    if misplaced:
        raise OptionError(_misplaced_message(misplaced, optimizer))
    if out.get("structure") == "auto":
        out["structure"] = auto_structure(model)
    if "metric" in out and out["metric"] is None:
        out["metric"] = model.default_metric
    if out.get("refine") == "auto":  # the model's own, else by the structure (below)
        own = recommended.get("refine")
        out["refine"] = own if own is not None else \
            ("scoring" if out.get("structure") not in ("diagonal", "lowrank", "kronecker")
             else None)
    if "refine" in out and out["refine"] is None:
        # a diagonal metric is no Hessian (nor the low-rank structure's, whose later passes
        # measure the diagonal): Fisher scoring with it converges slowly (200k ×
        # 100 logistic, 50 passes: scoring 8.1% above the optimum, the L-BFGS hand-over
        # 1.0%). Where the model's metric is the Hessian (GLMs), Newton directions solved
        # by conjugate gradients on metric-vector passes; L-BFGS otherwise.
        hessian = model.scoring_converges and out.get("metric") in ("model", "gauss-newton")
        out["refine"] = "newton-cg" if hessian else "lbfgs"
    if strategy == STREAM and "optimizer" in out:
        cls = OPTIMIZERS[optimizer]
        if out.get("lr") is None:
            out["lr"] = float(cls.default_lr)
        if out.get("step_schedule") is None:
            out["step_schedule"] = cls.default_schedule
        if out.get("fisher_every") == "auto":
            P = model.n_params
            if out.get("structure") == "kronecker":
                # the same share of the steps' cost as the full metric's: a row costs its
                # factors D²/2 against the full metric's P²/2
                D = model.n_features + 1
                out["fisher_every"] = max(1, round(D * D / (FISHER_EVERY_PARAMS * P)))
            else:
                out["fisher_every"] = max(1, round(P / FISHER_EVERY_PARAMS))
    return out


def auto_structure(model) -> str:
    """The structure ``--structure auto`` picks for ``model`` before it sees data: ``full``
    up to :data:`AUTO_FULL_MAX_PARAMS` parameters, ``diagonal`` beyond, where a P × P
    metric's memory (8·P² bytes, 134 MB at 4,096) and its O(P³) refreshes (about 4 s at
    2,048 on this project's 2-core machines, 10 s at 4,096) outweigh what it saves in
    passes (the diagonal's later passes: ``refine`` below). A fit then settles it on its
    data (:func:`auto_structure_for_data`).
    """
    return "full" if model.n_params <= AUTO_FULL_MAX_PARAMS else "diagonal"


def auto_structure_for_data(model, n_rows: int | None, sparse: bool) -> str:
    """:func:`auto_structure` given the data: also ``full`` up to
    :data:`AUTO_FULL_HESSIAN_MAX_PARAMS` parameters for a model whose full metric is the
    Hessian (``scoring_converges``) on dense data of at least
    :data:`AUTO_FULL_MIN_ROWS_PER_PARAM` rows per parameter, where its passes are few and
    their metric accumulation, not the refreshes, is the cost; and ``lowrank`` in place of
    the diagonal on dense data for a model whose metric-vector products are O(n·P·k)
    (``fast_metric_matvec``: the GLMs, softmax), measured in
    :data:`~natgrad_stream._constants.DEFAULT_LOWRANK_RANK`'s note. ``kronecker`` is
    never picked: on wide dense softmax (d = 1,000, K = 20, ``scripts/results/kronecker.md``)
    its one pass ended 77% above the optimum where ``lowrank``'s ended 20% above, and the
    two default fits have not been compared.
    """
    P = model.n_params
    if P > AUTO_FULL_MAX_PARAMS and P <= AUTO_FULL_HESSIAN_MAX_PARAMS and not sparse \
            and getattr(model, "scoring_converges", False) and n_rows is not None \
            and n_rows >= AUTO_FULL_MIN_ROWS_PER_PARAM * P:
        return "full"
    chosen = auto_structure(model)
    if chosen == "diagonal" and not sparse and getattr(model, "fast_metric_matvec", False):
        return "lowrank"
    return chosen


def _misplaced_message(flags: list[str], optimizer: str) -> str:
    names, one = ", ".join(flags), len(flags) == 1
    if strategy_of(optimizer) == LBFGS:
        return (f"{names} {'does' if one else 'do'} not apply to --optimizer lbfgs (a batch "
                "method: it runs --lbfgs-rounds rounds of at most --lbfgs-iters L-BFGS "
                "iterations, re-whitening and checkpointing after every round; its stopping "
                "rules are --lbfgs-tol and --lbfgs-gtol)")
    return (f"{names} {'applies' if one else 'apply'} only with --optimizer lbfgs (this run "
            f"uses the streaming optimizer {optimizer})")


def check_resume(recorded: dict, given: dict, also: dict | None = None
                 ) -> tuple[dict, list[str]]:
    """Compare options given to a resumed run with the run's effective ``recorded`` ones.

    Both dicts map option names to resolved values (``given`` holds only what the user
    set). ``also`` holds values that count as the same as the recorded ones (e.g. what
    the user gave for a data or model option, before the model resolved it). Returns
    ``(changes, messages)``: the resumable options that change, and one message per
    non-resumable option that differs (the caller refuses the resume).
    """
    changes, refused, also = {}, [], also or {}
    for name, value in given.items():
        opt = BY_NAME[name]
        old = recorded.get(name, opt.default)
        if _same(value, old) or (name in also and _same(value, also[name])):
            continue
        if name in ("structure", "refine") and value == "auto":  # auto keeps the recorded
            continue
        if opt.resumable:
            changes[name] = value
        else:
            refused.append(f"{_flag_or_name(opt)} cannot be changed on --resume: the run "
                           f"was fitted with {_show(old, opt)}, given {_show(value, opt)}")
    return changes, refused


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def _show(value, opt: Option) -> str:
    if isinstance(value, dict):  # a re-whitening schedule
        parts = [f"{k}:{v}" for k, v in value.items() if v is not None and k != "check_every"]
        return " ".join(parts) or "never"
    if value is None:
        return "none" if opt.default is not None else "unset"
    return repr(value) if isinstance(value, str) else str(value)
