"""When to refresh the whitener ``W = G^½(θ_fixed)`` (paper section 2.7).

A schedule is a function of counters kept in a :class:`ScheduleState` that the learner
owns (samples of the next clock trigger, batches since the last drift check); it does no
linear algebra. The learner asks :meth:`RefreshSchedule.clock_due` each batch, asks for a
drift estimate when :meth:`drift_check_due` says so, and calls :meth:`refreshed` after
every refresh, each time passing its state.

Triggers (any combination):

- ``every``: a fixed interval in samples;
- ``factor``: geometric spacing, the next refresh at ``factor ×`` the samples of the last;
- ``drift``: the running metric seen in the current whitened coordinates,
  ``W⁻ᵀ G W⁻¹``, has moved from the identity by more than a threshold (rms eigenvalue
  deviation, estimated with a few probe vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from natgrad_stream._constants import DEFAULT_DRIFT_CHECK_BATCHES, DEFAULT_DRIFT_THRESHOLD


@dataclass
class ScheduleState:
    """Counters a schedule keeps; checkpointed with the run."""

    next_time: float = 0.0
    batches_since_check: int = 0

    def to_dict(self) -> dict:
        """JSON-ready (``inf`` as None)."""
        return {"next_time": None if math.isinf(self.next_time) else self.next_time,
                "batches_since_check": self.batches_since_check}

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleState:
        """Inverse of :meth:`to_dict`."""
        nt = d.get("next_time")
        return cls(math.inf if nt is None else float(nt), int(d["batches_since_check"]))


class RefreshSchedule:
    """Refresh triggers; the first refresh always happens at the first batch.

    Parameters
    ----------
    every : int, optional
        Refresh every this many samples.
    factor : float, optional
        Geometric spacing (> 1): after a refresh at ``t`` samples the next is due at
        ``factor · t``.
    drift : float, optional
        Drift threshold; ``None`` disables the drift trigger.
    check_every : int
        Estimate the drift every this many batches.
    """

    def __init__(self, *, every: int | None = None, factor: float | None = None,
                 drift: float | None = None, check_every: int = DEFAULT_DRIFT_CHECK_BATCHES):
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be >= 1 sample, got {every}")
        if factor is not None and not float(factor) > 1.0:
            raise ValueError(f"factor must be > 1, got {factor}")
        if drift is not None and not float(drift) > 0.0:
            raise ValueError(f"drift threshold must be > 0, got {drift}")
        if int(check_every) < 1:
            raise ValueError(f"check_every must be >= 1 batch, got {check_every}")
        self.every = None if every is None else int(every)
        self.factor = None if factor is None else float(factor)
        self.drift = None if drift is None else float(drift)
        self.check_every = int(check_every)

    @classmethod
    def parse(cls, spec) -> RefreshSchedule:
        """Build from a spec: ``"auto"``, ``"never"``, an int (every N samples),
        ``"every:N"``, ``"geometric:F"``, ``"drift:T"``, a :class:`RefreshSchedule`, or
        the dict of its constructor arguments (:meth:`config`).

        ``"auto"`` is geometric spacing with factor 2 plus the drift trigger at
        the default threshold: frequent refreshes early, when θ moves fast, and later only
        when the metric has actually changed.
        """
        if isinstance(spec, RefreshSchedule):
            return spec
        if isinstance(spec, dict):
            return cls(**spec)
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls(every=spec)
        text = str(spec).strip().lower()
        if text == "auto":
            return cls(factor=2.0, drift=DEFAULT_DRIFT_THRESHOLD)
        if text == "never":
            return cls()
        kind, _, value = text.partition(":")
        try:
            if kind == "every":
                return cls(every=int(value))
            if kind == "geometric":
                return cls(factor=float(value or 2.0))
            if kind == "drift":
                return cls(drift=float(value or DEFAULT_DRIFT_THRESHOLD))
        except ValueError as exc:
            raise ValueError(f"bad re-whitening schedule {spec!r}: {exc}") from None
        raise ValueError(
            f"unknown re-whitening schedule {spec!r}; use auto, never, every:N, geometric:F, "
            "drift:T or an integer number of samples"
        )

    def config(self) -> dict:
        """JSON-ready constructor arguments."""
        return {"every": self.every, "factor": self.factor, "drift": self.drift,
                "check_every": self.check_every}

    def clock_due(self, state: ScheduleState, samples: int) -> bool:
        """True when the interval or geometric trigger has come due at ``samples``."""
        return samples >= state.next_time

    def drift_check_due(self, state: ScheduleState) -> bool:
        """Count a batch in ``state``; True when the drift should be estimated now."""
        if self.drift is None:
            return False
        state.batches_since_check += 1
        if state.batches_since_check >= self.check_every:
            state.batches_since_check = 0
            return True
        return False

    def drift_exceeded(self, drift: float) -> bool:
        """True when a drift estimate calls for a refresh."""
        return self.drift is not None and drift > self.drift

    def refreshed(self, state: ScheduleState, samples: int) -> None:
        """Record in ``state`` a refresh at ``samples`` and the next clock trigger."""
        nxt = math.inf
        if self.every is not None:
            nxt = min(nxt, samples + self.every)
        if self.factor is not None:
            nxt = min(nxt, max(samples * self.factor, samples + 1))
        state.next_time = nxt
        state.batches_since_check = 0
