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
                  rereadable: bool) -> tuple[int, tuple[int, int] | None]:
    """The starts ``learner.fit`` runs and how they are raced: ``n_init`` whole fits where
    given; else (``"auto"``), for a default fit (no ``epochs``, no ``max_samples``), the
    model's :meth:`~natgrad_stream.models.Model.auto_restarts` raced by its
    :meth:`~natgrad_stream.models.Model.restart_screen` (L-BFGS hand-over only), 1
    otherwise; always 1 on a learner that has already learned (a resumed run continues
    the fit its restarts chose).
    """
    n_init = getattr(learner, "n_init", 1)  # (L-BFGS runs no restarts)
    if n_init == 1 or learner.state.samples > 0:
        return 1, None
    why = _why_not(learner, plan, source, max_samples, client, rereadable)
    if n_init == "auto":
        if why is not None or epochs is not None:
            return 1, None
        K = max(1, int(learner.model.auto_restarts(source.n_rows)))
        screen = learner.model.restart_screen(source.n_rows) if learner.refine == "lbfgs" \
            else None
        return K, screen if screen is not None and K > screen[1] else None
    if n_init > 1:
        if why is not None:
            raise OptionError(f"n_init={n_init}: restarts need {why}")
        learner.model.restart_model(1)  # refuses a model without random starts
    return n_init, None


def planned_rows(rows_per_fit: int | None, K: int, screen: tuple[int, int] | None,
                 n_rows: int | None, round_iters: int) -> int | None:
    """Rows ``K`` starts read at most, for progress displays: ``K`` whole fits of
    ``rows_per_fit`` (the pass cap's rows) each; raced, ``K`` screens of about
    ``1 + rounds × round_iters`` passes (an L-BFGS iteration is about one evaluation, a
    pass) and ``kept`` whole fits. A raced default mlp fit on 442 rows: 22M rows
    against 133M counted as 30 whole fits (it read about 16M).
    """
    if rows_per_fit is None:
        return None
    if screen is None or not n_rows:
        return rows_per_fit * K
    rounds, kept = screen
    per_screen = min(rows_per_fit, int(n_rows) * (1 + rounds * int(round_iters)))
    return K * per_screen + kept * rows_per_fit


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


def run_restarts(learner, K: int, source, plan: dict, callbacks,
                 screen: tuple[int, int] | None = None) -> tuple[bool, int]:
    """Fit ``K`` restarts of ``learner``'s model on ``source`` and leave the best in
    ``learner`` (its model and state). Returns ``(interrupted, rows read by all fits)``;
    sets ``learner.restart_records`` (one dict per start, the kept one ``"kept": True``).

    ``screen = (rounds, kept)`` races the starts: each is fitted up to ``rounds`` complete
    L-BFGS rounds (its screen), and only the ``kept`` lowest by the loss there are
    continued to their end (a round's end is an exact restart point, so a continued start
    is exactly the fit of its start alone). None: every start is a whole fit.
    """
    limit, keep = screen if screen is not None else (None, K)
    records, rows, finalists = [], 0, []  # finalists: (screen loss, k, sub), the lowest
    for k in range(K):
        model = learner.model.restart_model(k) if k else learner.model
        sub, interrupted, seconds, got = _fit_start(learner, model, k, K, source, plan,
                                                    callbacks, rows, limit)
        rows += got
        if interrupted:
            learner.restart_records = records
            return True, rows
        record = _record(sub, model, k, seconds)
        ended = limit is None or _ended(sub, plan)
        if limit is not None:
            record["screen_loss"] = record["train_loss"]
        records.append(record)
        _report(learner, callbacks, record, K, screen=not ended)
        finalists.append((record["train_loss"], k, sub))
        finalists.sort(key=lambda f: _rank(f[0], f[1]))
        del finalists[keep:]  # (the others' learners are dropped)
    for _, k, sub in sorted(finalists, key=lambda f: f[1]):
        record = records[k]
        if limit is not None and not _ended(sub, plan):
            t0 = time.perf_counter()
            before = sub.samples  # (its screen's rows, counted in rows already)
            interrupted = _continue(learner, sub, k, K, source, plan, callbacks,
                                    rows - before)
            rows += sub.samples - before
            if interrupted:
                learner.restart_records = records
                return True, rows
            record.update(_record(sub, sub.model, k, 0.0),
                          seconds=record["seconds"] + time.perf_counter() - t0)
            _report(learner, callbacks, record, K, screen=False)
    kept = {k for _, k, _ in finalists}
    for r in records:
        if limit is not None and r["restart"] not in kept:
            r["screened_out"] = True
    _, k, sub = min(finalists, key=lambda f: _rank(records[f[1]]["train_loss"], f[1]))
    learner.model = sub.model
    learner.load_state_dict(sub.state_dict())
    for r in records:
        r["kept"] = r["restart"] == k
    learner.restart_records = records
    return False, rows


def _fit_start(learner, model, k, K, source, plan, callbacks, rows_before, limit):
    """Fit start ``k`` (up to ``limit`` rounds): ``(sub, interrupted, seconds, rows)``."""
    # (a cycle at import time)
    from natgrad_stream.training.learner import make_learner

    sub = make_learner(model, cls=type(learner), **{**learner.given_options, "n_init": 1})
    sub._round_limit = limit
    t0 = time.perf_counter()
    interrupted = _continue(learner, sub, k, K, source, plan, callbacks, rows_before)
    return sub, interrupted, time.perf_counter() - t0, sub.samples


def _continue(learner, sub, k, K, source, plan, callbacks, rows_before):
    """Run ``sub.fit`` on ``source`` (a new start, or a screened one continued to its end
    with ``sub._round_limit`` cleared), its progress and records forwarded to the fit's
    displays and logs. Returns whether it was interrupted.
    """
    from natgrad_stream.training.learner import pass_cap_notes_dropped

    displays = [cb for cb in callbacks if isinstance(cb, ProgressBar | TqdmProgress)]
    logs = [cb for cb in callbacks if isinstance(cb, MetricsLogger | Validation)]
    if sub.state.samples > 0:
        sub._round_limit = None
    learner._active_restart = sub
    if learner._stop_requested:
        sub.request_stop()
    try:  # one note at the end, the kept fit's, not one per restart
        with pass_cap_notes_dropped():
            sub.fit(source, epochs=plan["epochs"], shuffle=plan["shuffle"],
                    prefetch=plan["prefetch"], chunks_per_read=plan["chunks_per_read"],
                    callbacks=[_ForwardProgress(displays, logs,
                                                _RestartView(sub, k, K, rows_before))])
    finally:
        learner._active_restart = None
    return sub.result.interrupted


def _record(sub, model, k, seconds) -> dict:
    result = sub.result
    return {"event": "restart", "restart": k, "model": model.config(),
            "train_loss": result.train_loss, "epochs": result.epochs,
            "converged": result.converged, "seconds": seconds}


def _report(learner, callbacks, record: dict, K: int, *, screen: bool) -> None:
    """Log a start's end (``screen``: the end of its screen, to be continued or dropped)
    and pass its record to the fit's callbacks (the metrics log's ``restart`` records).
    """
    if screen:
        how = f"screened at {record['epochs']} passes"
    else:
        how = (f"after {record['epochs']} passes, "
               + ("converged" if record["converged"] else "not converged"))
    log.info("restart %d/%d (%s): train loss %.8g %s", record["restart"] + 1, K,
             _start_name(record["model"]), record["train_loss"], how)
    for cb in callbacks:
        cb.on_event(learner, {**record, "screen": screen})


def _ended(sub, plan) -> bool:
    """Whether a start's fit has ended (converged, stalled, or at the pass cap), so a
    screen that ended it needs no continuing.
    """
    from natgrad_stream.training.learner import _stalled

    s = sub.state
    return bool(s.converged) or _stalled(s) or s.cursor.epoch >= plan["epochs"]


def _rank(loss, k):
    """Sort key of a start: its loss (a missing or non-finite one last), then its index."""
    bad = loss is None or loss != loss
    return (bad, 0.0 if bad else loss, k)


def _start_name(config: dict) -> str:
    seed = config.get("seed")
    return f"start seed {seed}" if seed is not None else "start"
