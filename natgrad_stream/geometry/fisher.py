"""Running estimates of the metric G(θ) from minibatch sums.

Statistics are kept as *sums* and a total weight, never as averages, so they merge: one
batch, many batches, a resumed run and many Dask workers all go through :meth:`add`.
The exponential moving average has its time constant in **samples** (rows), so the
estimate does not depend on batch or chunk size; normalizing by the decayed total weight
is the bias correction (no zero-initialization bias).
"""

from __future__ import annotations

import math

import numpy as np

from natgrad_stream._constants import HALF_LIFE_FRACTION, HALF_LIFE_MIN_PER_PARAM


class RunningFisher:
    """Exponentially weighted running metric, full or block ``(P, P)``, diagonal ``(P,)``,
    or low-rank: the diagonal ``(P,)`` and the sketch ``G T`` ``(P, rank)`` of
    :mod:`natgrad_stream.geometry.lowrank` (decayed alike; ``T`` is drawn from the first
    batch's diagonal, :meth:`test_for`), or Kronecker: the feature factor ``(D, D)`` as
    ``sum`` and the class factor ``(m, m)`` of :mod:`natgrad_stream.geometry.kronecker`.

    Parameters
    ----------
    n_params : int
        ``P``.
    structure : {"full", "diagonal", "block", "lowrank", "kronecker"}
    half_life : float, "auto" or None
        Half-life in samples. ``None`` or ``inf`` keeps plain sums (no forgetting);
        ``"auto"`` uses ``max(20·P, 0.25·t)`` with ``t`` the samples seen so far, so the
        estimate forgets the early, far-from-optimal θ quickly and averages over more data
        as learning settles.
    rank : int
        Columns of the low-rank sketch (``structure="lowrank"``).
    factors : (int, int)
        ``(D, m)``, the Kronecker factors' sizes (``structure="kronecker"``).

    Examples
    --------
    >>> f = RunningFisher(2, half_life=None)
    >>> f.add(np.eye(2) * 4.0, weight=2.0, rows=2)
    >>> f.estimate()
    array([[2., 0.],
           [0., 2.]])
    """

    def __init__(self, n_params: int, *, structure: str = "full", half_life="auto",
                 limit: float | None = None, rank: int = 0, factors=None):
        if structure not in ("full", "diagonal", "block", "lowrank", "kronecker"):
            raise ValueError("structure must be 'full', 'diagonal', 'block', 'lowrank' or "
                             f"'kronecker', got {structure!r}")
        if half_life not in (None, "auto") and not float(half_life) > 0:
            raise ValueError(f"half_life must be > 0 samples, 'auto' or None, got {half_life!r}")
        self.n_params = int(n_params)
        self.structure = structure
        self.half_life = half_life
        #: The half-life at most this many samples (forgetting a drifting stream), or None.
        self.limit = None if limit is None else float(limit)
        # a block-diagonal metric is stored as a (P, P) array whose off-block entries stay 0
        shape = (self.n_params,) if structure in ("diagonal", "lowrank") \
            else (self.n_params, self.n_params)
        #: Kronecker: ``(D, m)``; ``sum`` is then the feature factor's (D, D), ``classes``
        #: the class factor's (m, m) and ``penalty`` the penalty's (a scalar).
        self.factors = None if structure != "kronecker" else tuple(int(f) for f in factors)
        if self.factors is not None:
            shape = (self.factors[0], self.factors[0])
        self.classes = None if self.factors is None else np.zeros((self.factors[1],) * 2)
        self.penalty = 0.0
        self.sum = np.zeros(shape)
        self.rank = int(rank) if structure == "lowrank" else 0
        #: Low-rank: the sketch's sum ``Σ G_batch T`` (P, rank) and ``T`` (None until the
        #: first batch).
        self.sketch = np.zeros((self.n_params, self.rank)) if self.rank else None
        self.test = None
        self.weight = 0.0
        self.samples = 0
        #: Rows in the estimate, decayed as the sums are (the evidence behind it).
        self.rows = 0.0

    def current_half_life(self) -> float:
        """Half-life in samples in force now (``inf`` for plain sums), at most ``limit``."""
        if self.half_life is None:
            hl = math.inf
        elif self.half_life == "auto":
            hl = max(HALF_LIFE_MIN_PER_PARAM * self.n_params, HALF_LIFE_FRACTION * self.samples)
        else:
            hl = float(self.half_life)
        return hl if self.limit is None else min(hl, self.limit)

    def test_for(self, batch_diagonal: np.ndarray) -> np.ndarray:
        """Low-rank: the test matrix ``T`` (P, rank), drawn from ``batch_diagonal`` (the
        first batch's, shape (P,)) the first time (a new array: a rejected step's snapshot
        keeps the old state).
        """
        if self.test is None:
            from natgrad_stream.geometry.lowrank import draw_test_matrix

            self.test = draw_test_matrix(batch_diagonal, self.rank)
        return self.test

    def add(self, batch_sum, *, weight: float, rows: int) -> None:
        """Fold in one batch: decay by ``0.5 ** (rows / half_life)``, then add.

        Parameters
        ----------
        batch_sum : ndarray, shape (P, P) or (P,), or SketchedMetric
            Sum of per-sample metric contributions over the batch (low-rank: a
            :class:`~natgrad_stream.geometry.lowrank.SketchedMetric` of sums with this
            estimate's test matrix).
        weight : float
            Sum of the batch's sample weights (the normalizer of ``batch_sum``).
        rows : int
            Number of rows in the batch (the clock of the moving average).
        """
        sketch = None
        if self.structure == "lowrank":
            if getattr(batch_sum, "sketch", None) is None or batch_sum.test is not self.test:
                raise ValueError("a low-rank running metric adds a SketchedMetric made with "
                                 "its own test matrix (test_for)")
            batch_sum, sketch = batch_sum.diagonal, batch_sum.sketch
        classes = penalty = None
        if self.structure == "kronecker":
            if getattr(batch_sum, "classes", None) is None:
                raise ValueError("a Kronecker running metric adds a KroneckerMetric")
            batch_sum, classes, penalty = (batch_sum.features, batch_sum.classes,
                                           batch_sum.penalty)
        if batch_sum.shape != self.sum.shape:
            raise ValueError(f"batch metric has shape {batch_sum.shape}, expected {self.sum.shape}")
        decay = 0.5 ** (rows / self.current_half_life())
        if sketch is not None:  # (a new array, as the sum's)
            self.sketch = self.sketch * decay + sketch
        if classes is not None:  # (a new array, as the sum's)
            self.classes = self.classes * decay + classes
            self.penalty = self.penalty * decay + float(penalty)
        # a new array, not an in-place update: a learner can keep the old one to undo a step
        new = self.sum * decay if decay != 1.0 else self.sum.copy()
        new += batch_sum
        self.sum = new
        self.weight *= decay
        self.weight += float(weight)
        self.samples += int(rows)
        self.rows = self.rows * decay + int(rows)

    def merge(self, other: RunningFisher) -> RunningFisher:
        """Add another estimate's sums (statistics of the same period, e.g. other workers)."""
        if other.sum.shape != self.sum.shape:
            raise ValueError("cannot merge metrics of different shapes")
        out = RunningFisher(self.n_params, structure=self.structure, half_life=self.half_life,
                            limit=self.limit, factors=self.factors)
        out.sum = self.sum + other.sum
        if self.factors is not None:
            out.classes = self.classes + other.classes
            out.penalty = self.penalty + other.penalty
        if self.rank:
            if other.test is not self.test and not np.array_equal(other.test, self.test):
                raise ValueError("cannot merge low-rank sketches of different test matrices")
            out.rank, out.test, out.sketch = self.rank, self.test, self.sketch + other.sketch
        out.weight = self.weight + other.weight
        out.samples = self.samples + other.samples
        out.rows = self.rows + other.rows
        return out

    @property
    def empty(self) -> bool:
        """True before any weight has been added."""
        return self.weight <= 0.0

    def estimate(self):
        """The bias-corrected metric ``sum / weight``, shape (P, P) or (P,) (low-rank: a
        :class:`~natgrad_stream.geometry.lowrank.SketchedMetric` of means; Kronecker: a
        :class:`~natgrad_stream.geometry.kronecker.KroneckerMetric` of means).
        """
        if self.empty:
            raise ValueError("the running metric has seen no data yet")
        if self.factors is not None:
            from natgrad_stream.geometry.kronecker import KroneckerMetric

            return KroneckerMetric(self.sum / self.weight, self.classes / self.weight,
                                   self.penalty / self.weight)
        if self.rank:
            from natgrad_stream.geometry.lowrank import SketchedMetric

            return SketchedMetric(self.sum / self.weight, self.sketch / self.weight, self.test)
        return self.sum / self.weight

    # -- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Arrays and scalars that :meth:`from_state` restores exactly."""
        hl = self.half_life
        # the sum itself, not a copy (P × P for a full metric: a checkpoint of a wide
        # model made one for the state and one for each rollback point): a fold makes a
        # new sum, nothing changes one in place
        return {"sum": self.sum, "weight": self.weight, "samples": self.samples,
                "rows": self.rows, "structure": self.structure, "half_life": hl,
                "n_params": self.n_params, "limit": self.limit,
                **({"rank": self.rank, "sketch": self.sketch.copy(),
                    "test": None if self.test is None else self.test.copy()}
                   if self.rank else {}),
                **({"factors": list(self.factors), "classes": self.classes.copy(),
                    "penalty": self.penalty} if self.factors is not None else {})}

    @classmethod
    def from_state(cls, state: dict) -> RunningFisher:
        """Rebuild from :meth:`state_dict`."""
        out = cls(int(state["n_params"]), structure=state["structure"],
                  half_life=state["half_life"], limit=state.get("limit"),
                  rank=int(state.get("rank", 0)), factors=state.get("factors"))
        out.sum = np.array(state["sum"], dtype=np.float64)
        if out.factors is not None:
            out.classes = np.array(state["classes"], dtype=np.float64)
            out.penalty = float(state["penalty"])
        if out.rank:
            out.sketch = np.array(state["sketch"], dtype=np.float64)
            out.test = None if state.get("test") is None else \
                np.array(state["test"], dtype=np.float64)
        out.weight = float(state["weight"])
        out.samples = int(state["samples"])
        # a checkpoint from before the decayed row count: its samples (no decay)
        out.rows = float(state.get("rows", out.samples))
        return out
