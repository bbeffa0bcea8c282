"""What the training loop reports: per-step information, fit summaries and the callback
interface. Shared by the learner, its strategies and the callbacks (which import no
learner).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StepInfo:
    """What one step (streaming) or one evaluation pass (L-BFGS) did.

    ``full_pass`` is True when ``loss`` is over a whole evaluation set rather than one
    batch (progress displays then show it as is instead of smoothing it); ``events`` are
    records for the log (e.g. a divergence rollback); ``skipped``: the batch's sample
    weights sum to zero, so no step was taken and ``loss`` is NaN.
    """

    loss: float
    grad_norm: float
    natural_grad_norm: float
    rows: int
    samples: int
    steps: int
    refresh: dict | None = None
    full_pass: bool = False
    events: tuple = ()
    skipped: bool = False


@dataclass
class FitResult:
    """Summary of one :meth:`NaturalGradientLearner.fit` call (the CLI's last JSON line)."""

    samples: int
    steps: int
    rewhitens: int
    seconds: float
    rows_per_s: float
    train_loss: float | None
    epochs: int | float
    interrupted: bool = False
    converged: bool = False
    decrement: float | None = None
    running_loss: float | None = None
    objective: float | None = None
    skipped_zero_weight_batches: int = 0
    restarts: list | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary. ``train_loss``: the (unpenalized) mean loss of the returned θ
        on the whole training data, measured by a pass — what ``natgrad-stream evaluate``
        reports on the training data; where no pass measured it (streaming passes only,
        e.g. ``epochs=1``) it is absent and ``running_loss``, the mean of the last pass's
        batch losses at the θ of their steps, stands in its place. ``objective`` (only with
        an L2 penalty ``l2=λ``): what the fit minimizes, ``train_loss + λ/2·‖coef‖²``.
        ``skipped_zero_weight_batches`` (only when some were): streaming batches whose
        sample weights sum to zero, skipped without a step.
        ``decrement``: the Newton decrement ½∇Jᵀ G⁻¹ ∇J of the last whole-data pass (of
        the objective), None when none was made; ``converged``: a stopping rule was met.
        ``restarts`` (only when a fit ran several, ``n_init``): one record per fit, its
        start (``model``), ``train_loss``, ``epochs``, ``converged``, ``seconds`` and
        whether it was ``kept`` (the other keys are the kept fit's; ``samples`` and
        ``steps`` its own, ``seconds`` and ``rows_per_s`` all the fits').
        """
        loss = {"train_loss": self.train_loss} if self.train_loss is not None else \
            {"running_loss": self.running_loss}
        if self.objective is not None:
            loss["objective"] = self.objective
        if self.skipped_zero_weight_batches:
            loss["skipped_zero_weight_batches"] = self.skipped_zero_weight_batches
        out = {
            "samples": self.samples, "steps": self.steps, "rewhitens": self.rewhitens,
            "seconds": round(self.seconds, 4), "rows_per_s": round(self.rows_per_s, 1),
            **loss, "epochs": self.epochs,
            "interrupted": self.interrupted, "converged": self.converged,
            "decrement": self.decrement,
        }
        if self.restarts is not None:
            out["restarts"] = [{k: v for k, v in r.items() if k != "event"}
                               for r in self.restarts]
        return out


@dataclass
class LBFGSResult(FitResult):
    """Summary of an L-BFGS fit: the streaming keys plus L-BFGS ones.

    ``samples`` counts rows streamed by all passes, ``steps`` L-BFGS iterations,
    ``rewhitens`` metric passes and ``epochs`` data-pass equivalents (``samples / n_rows``,
    a float in window mode); ``train_loss`` is ``J`` at ``θ`` on the last round's
    evaluation set (the whole data unless a window is used).
    """

    rounds: int = 0
    evaluations: int = 0
    grad_norm: float = math.nan
    natural_grad_norm: float = math.nan

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = super().to_dict()
        out.pop("decrement")
        out.update(rounds=self.rounds, evaluations=self.evaluations, converged=self.converged,
                   grad_norm=self.grad_norm, natural_grad_norm=self.natural_grad_norm)
        return out


class Callback:
    """Hooks called by :meth:`NaturalGradientLearner.fit`; override what you need."""

    def on_fit_start(self, learner, total_rows: int | None) -> None:
        """Before the first batch."""

    def on_batch_end(self, learner, info: StepInfo, cursor) -> None:
        """After each step (L-BFGS: each evaluation pass); ``cursor`` says where the stream
        stands.
        """

    def on_pass_progress(self, learner, rows: int) -> None:
        """Inside a whole-data pass (a Fisher-scoring pass, an L-BFGS evaluation), after
        each batch it read: ``rows`` read so far in the pass, not yet in
        ``learner.samples`` (the pass counts them, and reports through
        :meth:`on_batch_end`, once it ends). For progress displays.
        """

    def on_refresh(self, learner, event: dict) -> None:
        """After each re-whitening attempt (``event["ok"]`` tells whether it succeeded)."""

    def on_round(self, learner, record: dict) -> None:
        """After each L-BFGS round (``record["event"] == "round"``)."""

    def on_event(self, learner, record: dict) -> None:
        """Any other record for the log (``record["event"]``, e.g. ``"rollback"``)."""

    def on_fit_end(self, learner, result: FitResult) -> None:
        """After the last batch (also after an interruption)."""

    def on_error(self, learner, error: BaseException) -> None:
        """When fitting stops on an exception (the learner's state is the last good one)."""
