"""Restarts (``n_init``): whole fits from different random starts, keeping the best.

A non-convex objective (the network's) has many local minima, and which one a fit reaches
is set by its random start more than by the optimizer: on standardized diabetes, 16 single
fits of the mlp ended between MSE 0.065 and 0.097, as scikit-learn's restarts spread from
0.070 to 0.085. A fit with ``K`` restarts runs ``K`` complete fits, each an ordinary fit of
the model from :meth:`~natgrad_stream.models.Model.restart_model` ``k`` (the mlp: initial
weights from ``seed + k``), to its own stopping rule or pass cap, and keeps the one whose
training loss (the whole-data loss of its returned θ) is lowest, ties going to the earlier.
The learner then holds that fit's model and state, exactly as if it had fitted only it,
so ``--resume --epochs N`` continues it. The log gets one ``restart`` record per fit.

Restarts run on a fresh learner over data that can be read again, with a measured loss
(passes after the first): a run interrupted during them has learned nothing it keeps (its
checkpoint is the fresh state) and a resumed run runs them again from the first, to the
same result as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time

from natgrad_stream.data.follow import FollowSource
from natgrad_stream.errors import OptionError
from natgrad_stream.training.callbacks import (
    MetricsLogger,
    ProgressBar,
    TqdmProgress,
    Validation,
)
from natgrad_stream.training.events import Callback

log = logging.getLogger("natgrad_stream.fit")


def restart_count(learner, plan: dict, source, *, epochs, max_samples, client,
                  rereadable: bool) -> int:
    """The number of fits ``learner.fit`` runs: ``n_init`` where given, else (``"auto"``)
    the model's :meth:`~natgrad_stream.models.Model.auto_restarts` for a default fit
    (no ``epochs``, no ``max_samples``), 1 otherwise; always 1 on a learner that has
    already learned (a resumed run continues the fit its restarts chose).
    """
    n_init = getattr(learner, "n_init", 1)  # (L-BFGS runs no restarts)
    if n_init == 1 or learner.state.samples > 0:
        return 1
    why = _why_not(learner, plan, source, max_samples, client, rereadable)
    if n_init == "auto":
        if why is not None or epochs is not None:
            return 1
        return max(1, int(learner.model.auto_restarts(source.n_rows)))
    if n_init > 1:
        if why is not None:
            raise OptionError(f"n_init={n_init}: restarts need {why}")
        learner.model.restart_model(1)  # refuses a model without random starts
    return n_init


def _why_not(learner, plan, source, max_samples, client, rereadable) -> str | None:
    """What restarts lack here (None: they can run)."""
    if isinstance(source, FollowSource):
        return "a store read whole, not followed as rows arrive (follow mode)"
    if not rereadable or source.n_rows is None:
        return "data that can be read again (arrays or a store)"
    if plan["epochs"] < 2 or learner.refine == "stream":
        return ("passes after the first (they measure the training loss that chooses "
                "between the fits): not epochs=1 or refine='stream'")
    if max_samples is not None:
        return "no max_samples (each fit runs to its own end)"
    if client is not None:
        return "one process (not a Dask client)"
    if learner.forget is not None:
        return "no forgetting"
    return None


class _RestartView:
    """What progress displays and logs read of the learner during restart ``k``: its
    fit's attributes, with the rows of the earlier restarts added to ``samples`` (so a
    log's samples grow over all the fits) and the fit's index as ``restart``.
    """

    def __init__(self, sub, k: int, K: int, rows_before: int):
        self._sub, self._k, self._K, self._before = sub, k, K, rows_before
        self.strategy = self
        self.restart = k

    @property
    def samples(self) -> int:
        return self._before + self._sub.samples

    def status(self) -> str:
        return f"restart {self._k + 1}/{self._K} | {self._sub.strategy.status()}"

    def __getattr__(self, name):
        return getattr(self._sub, name)


class _ForwardProgress(Callback):
    """Passes one restart's batch and pass-progress events on to the fit's displays, and
    its batches and records (re-whitenings, L-BFGS rounds, others, each tagged with
    ``restart``) on to the fit's logs: the metrics file and validation (each restart's
    own fit reports to ``logging``). Not to checkpoints: a restart's state is not the
    run's until the restarts have chosen.
    """

    def __init__(self, displays, logs, view: _RestartView):
        self.displays, self.logs, self.view = displays, logs, view

    def on_batch_end(self, learner, info, cursor):
        for d in (*self.displays, *self.logs):
            d.on_batch_end(self.view, info, cursor)

    def on_pass_progress(self, learner, rows):
        for d in self.displays:
            d.on_pass_progress(self.view, rows)

    def _tagged(self, record: dict) -> dict:
        """``record`` tagged with the restart, its samples counted over all the fits."""
        out = {**record, "restart": self.view.restart}
        if out.get("samples") is not None:
            out["samples"] = self.view._before + int(out["samples"])
        return out

    def on_refresh(self, learner, event):
        for d in self.logs:
            d.on_refresh(self.view, self._tagged(event))

    def on_round(self, learner, record):
        for d in self.logs:
            d.on_round(self.view, self._tagged(record))

    def on_event(self, learner, record):
        for d in self.logs:
            d.on_event(self.view, self._tagged(record))


def run_restarts(learner, K: int, source, plan: dict, callbacks) -> tuple[bool, int]:
    """Fit ``K`` restarts of ``learner``'s model on ``source`` and leave the best in
    ``learner`` (its model and state). Returns ``(interrupted, rows read by all fits)``;
    sets ``learner.restart_records`` (one dict per fit, the kept one ``"kept": True``).
    """
    # (a cycle at import time)
    from natgrad_stream.training.learner import make_learner, pass_cap_notes_dropped

    given = {**learner.given_options, "n_init": 1}
    displays = [cb for cb in callbacks if isinstance(cb, ProgressBar | TqdmProgress)]
    logs = [cb for cb in callbacks if isinstance(cb, MetricsLogger | Validation)]
    records, best, rows = [], None, 0
    for k in range(K):
        model = learner.model.restart_model(k) if k else learner.model
        sub = make_learner(model, cls=type(learner), **given)
        learner._active_restart = sub
        if learner._stop_requested:
            sub.request_stop()
        t0 = time.perf_counter()
        try:  # one note at the end, the kept fit's, not one per restart
            with pass_cap_notes_dropped():
                sub.fit(source, epochs=plan["epochs"], shuffle=plan["shuffle"],
                        prefetch=plan["prefetch"],
                        chunks_per_read=plan["chunks_per_read"],
                        callbacks=[_ForwardProgress(displays, logs,
                                                    _RestartView(sub, k, K, rows))])
        finally:
            learner._active_restart = None
        rows += sub.samples
        result = sub.result
        if result.interrupted:
            learner.restart_records = records
            return True, rows
        record = {"event": "restart", "restart": k, "model": model.config(),
                  "train_loss": result.train_loss, "epochs": result.epochs,
                  "converged": result.converged, "seconds": time.perf_counter() - t0}
        records.append(record)
        log.info("restart %d/%d (%s): train loss %.8g after %s passes, %s", k + 1, K,
                 _start_name(model), result.train_loss, result.epochs,
                 "converged" if result.converged else "not converged")
        for cb in callbacks:
            cb.on_event(learner, dict(record))
        if best is None or _better(result.train_loss, best[1].result.train_loss):
            best = (k, sub)
    k, sub = best
    learner.model = sub.model
    learner.load_state_dict(sub.state_dict())
    for r in records:
        r["kept"] = r["restart"] == k
    learner.restart_records = records
    return False, rows


def _better(loss, best) -> bool:
    """Whether ``loss`` beats ``best`` (a missing or non-finite loss never does)."""
    if loss is None or loss != loss:
        return False
    return best is None or best != best or loss < best


def _start_name(model) -> str:
    seed = model.config().get("seed")
    return f"start seed {seed}" if seed is not None else "start"
