"""Callbacks for long runs: terminal progress, a JSONL metrics log, periodic checkpoints.

They serve every strategy of the learner (streaming steps and L-BFGS rounds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from natgrad_stream._constants import DEFAULT_LOG_EVERY
from natgrad_stream._files import open_fd
from natgrad_stream.errors import DistributedError
from natgrad_stream.training.checkpoint import write_checkpoint
from natgrad_stream.training.events import Callback


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def smoothed_loss(previous: float, info) -> float:
    """A display loss: a whole evaluation set's as is, else an EMA over batches."""
    if getattr(info, "skipped", False):  # a zero-weight batch: no loss
        return previous
    if info.full_pass or math.isnan(previous):
        return info.loss
    return 0.98 * previous + 0.02 * info.loss


def json_clean(value):
    """Replace non-finite floats by None so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    return value


def restart_tag(learner) -> dict:
    """``{"restart": k}`` for a record of restart ``k`` of an ``n_init`` fit, else ``{}``."""
    k = getattr(learner, "restart", None)
    return {} if k is None else {"restart": k}


class ProgressBar(Callback):
    """One self-rewriting status line: percent, rows/s, recent loss, the pass (from 1),
    re-whitenings; it also advances inside a whole-data pass (Fisher scoring, L-BFGS
    evaluations), by the rows that pass has read.

    Parameters
    ----------
    stream : file, optional
        Defaults to ``sys.stderr``.
    interval : float
        Seconds between redraws.
    """

    def __init__(self, stream=None, *, interval: float = 0.25):
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)

    def on_fit_start(self, learner, total_rows):
        self.total = total_rows
        self.t0 = self.last = time.perf_counter()
        self.start_samples = learner.samples
        self.loss = math.nan
        self.pass_rows = 0

    def on_batch_end(self, learner, info, cursor):
        self.loss = smoothed_loss(self.loss, info)
        self.pass_rows = 0  # a pass's rows are in learner.samples once it reports
        self._maybe_draw(learner)

    def on_pass_progress(self, learner, rows):
        self.pass_rows = rows
        self._maybe_draw(learner)

    def _maybe_draw(self, learner):
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._draw(learner, now)

    def _samples(self, learner) -> int:
        """Rows read so far: the learner's samples and those of a pass under way."""
        return learner.samples + self.pass_rows

    def _draw(self, learner, now, end=""):
        samples = self._samples(learner)
        rate = (samples - self.start_samples) / max(now - self.t0, 1e-9)
        pct = f"{100 * samples / self.total:5.1f}% " if self.total else ""
        line = (f"\r{pct}{samples:,} rows | {rate / 1e6:.2f} M rows/s | "
                f"loss {self.loss:.8g} | {learner.strategy.status()}")
        self.stream.write(line + end)
        self.stream.flush()

    def on_fit_end(self, learner, result):
        self.pass_rows = 0  # a pass stopped part-way counts none of its rows
        self._draw(learner, time.perf_counter(), end="\n")


logger = logging.getLogger("natgrad_stream")


class ProgressLines(ProgressBar):
    """Progress as newline-terminated lines through the ``natgrad_stream`` logger (for logs
    of runs without a terminal: nohup, cron, CI, schedulers), at most one every
    ``interval`` seconds.

    The first line, once ``interval`` has passed, says what the run is; the last, at the
    end of a run that printed any, what it did. A run shorter than ``interval`` prints
    nothing, so a failing one prints only its error; with ``eager`` the start and end
    lines are printed whatever the run's length.
    """

    def __init__(self, *, interval: float = 10.0, eager: bool = False):
        super().__init__(interval=interval)
        self.eager = bool(eager)

    def on_fit_start(self, learner, total_rows):
        super().on_fit_start(learner, total_rows)
        self.started = False
        if self.eager:
            self._start(learner)

    def _start(self, learner) -> None:
        self.started = True
        planned = f", {self.total:,} rows planned" if self.total else ""
        logger.info("fit started: model %s, optimizer %s, from sample %s%s",
                    learner.model.name, learner.effective_options["optimizer"],
                    f"{self.start_samples:,}", planned)

    def _draw(self, learner, now, end=""):
        if not self.started:
            self._start(learner)
        samples = self._samples(learner)
        rate = (samples - self.start_samples) / max(now - self.t0, 1e-9)
        pct = eta = ""
        if self.total:
            done = samples - self.start_samples
            left = self.total - samples
            pct = f"{100 * samples / self.total:.1f}% "
            if rate > 0 and left > 0 and done > 0:
                eta = f" | ETA {left / rate:.0f} s"
        logger.info("%s%s rows | %.2f M rows/s | loss %.6g | %s%s", pct,
                    f"{samples:,}", rate / 1e6, self.loss, learner.strategy.status(), eta)

    def on_fit_end(self, learner, result):
        self.pass_rows = 0
        if self.started:
            r = result.to_dict()
            which = "train" if "train_loss" in r else "running"
            logger.info("fit done: %s samples | %.2f M rows/s | %s loss %.6g | %s | %s",
                        f"{r['samples']:,}", r["rows_per_s"] / 1e6, which,
                        r[f"{which}_loss"],
                        learner.strategy.status(),
                        "interrupted (resumable)" if r["interrupted"] else "complete")


#: The logger of :class:`FitLog`, a child of ``natgrad_stream``: the command line, which
#: reports progress through its own callbacks, sets it to WARNING.
fit_logger = logging.getLogger("natgrad_stream.fit")
#: ``record.natgrad_event`` of :class:`FitLog`'s records, by kind.
FIT_START, FIT_PASS, FIT_END, FIT_BATCH = "fit_start", "fit_pass", "fit_end", "fit_batch"


class FitLog(Callback):
    """Progress of every :meth:`~natgrad_stream.learner.NaturalGradientLearner.fit` through
    the ``natgrad_stream.fit`` logger (the learner adds it itself): a start line, one line
    per pass (a streaming pass, a Fisher-scoring or Newton pass, an L-BFGS round) and an
    end line at INFO; each step, each whole-data evaluation and each re-whitening at DEBUG.
    Silent unless the application configures logging (INFO is below the level of Python's
    last-resort handler, which prints only the warnings), e.g.
    ``logging.basicConfig(level=logging.INFO)``.
    """

    def _log(self, level, event, msg, *args) -> None:
        fit_logger.log(level, msg, *args, extra={"natgrad_event": event})

    def on_fit_start(self, learner, total_rows):
        self.t0 = time.perf_counter()
        self.start_samples = learner.samples
        self.epoch = learner.cursor.epoch
        self.debug = fit_logger.isEnabledFor(logging.DEBUG)
        if fit_logger.isEnabledFor(logging.INFO):
            planned = f", {total_rows:,} rows planned" if total_rows else ""
            self._log(logging.INFO, FIT_START, "fit started: model %s (%d parameters), "
                      "optimizer %s, from sample %s%s", learner.model.name,
                      learner.model.n_params, learner.effective_options["optimizer"],
                      f"{learner.samples:,}", planned)

    def on_batch_end(self, learner, info, cursor):
        if self.debug:
            self._log(logging.DEBUG, FIT_BATCH, "%s %d: %s rows, sample %s, loss %.8g, "
                      "|grad| %.3g, |natural grad| %.3g",
                      "evaluation" if info.full_pass else "step", info.steps,
                      f"{info.rows:,}", f"{info.samples:,}", info.loss, info.grad_norm,
                      info.natural_grad_norm)
        passes = [e for e in info.events if e.get("event") == "pass"]
        for e in passes:  # a Fisher-scoring / Newton pass
            self._log(logging.INFO, FIT_PASS, "pass %d (%s): %s %.10g, decrement %s, %s%s",
                      e["pass"], learner.refine,
                      "objective" if learner.penalty.active else "loss", e["loss"],
                      "-" if e.get("decrement") is None else f"{e['decrement']:.3g}",
                      "accepted" if e.get("accepted") else "rejected, step cut",
                      ", converged" if e.get("converged") else "")
        if cursor.epoch > self.epoch and not info.full_pass:  # a streaming pass ended
            s = learner.state
            loss = s.epoch_loss_sum / s.epoch_loss_weight if s.epoch_loss_weight else \
                s.last_epoch_loss
            self._log(logging.INFO, FIT_PASS, "pass %d (streaming): %s samples, %d steps, "
                      "%d re-whitenings, mean batch loss %.8g, %.0f rows/s", cursor.epoch,
                      f"{s.samples:,}", s.steps, s.rewhitens, loss, self._rate(learner))
        self.epoch = cursor.epoch

    def on_round(self, learner, record):
        self._log(logging.INFO, FIT_PASS, "L-BFGS round %d: loss %.10g, relative "
                  "improvement %.3g, %d evaluations%s", record["round"], record["loss"],
                  record.get("relative_improvement", math.nan),
                  record.get("evaluations", 0),
                  ", converged" if record.get("converged") else "")

    def on_refresh(self, learner, event):
        if self.debug:
            self._log(logging.DEBUG, FIT_BATCH, "re-whitening at sample %s (%s): %s",
                      f"{event.get('samples', 0):,}", event.get("reason"),
                      "ok" if event.get("ok") else f"failed ({event.get('error')})")

    def _rate(self, learner) -> float:
        return (learner.samples - self.start_samples) / max(time.perf_counter() - self.t0,
                                                            1e-9)

    def on_fit_end(self, learner, result):
        r = result.to_dict()
        which = "train" if "train_loss" in r else "running"
        self._log(logging.INFO, FIT_END, "fit done: %s samples, %d passes, %s loss %.10g, "
                  "%s, %.2f s%s", f"{r['samples']:,}", r["epochs"], which,
                  r[f"{which}_loss"] if r[f"{which}_loss"] is not None else math.nan,
                  "converged" if r["converged"] else "not converged", r["seconds"],
                  ", interrupted (resumable)" if r["interrupted"] else "")


class TqdmProgress(Callback):
    """A tqdm bar on a terminal: rows with rate, loss and ETA (advancing inside a
    whole-data pass too).
    """

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream

    def on_fit_start(self, learner, total_rows):
        from tqdm import tqdm

        self.bar = tqdm(total=total_rows, initial=learner.samples if total_rows else 0,
                        unit="rows", unit_scale=True, file=self.stream, dynamic_ncols=True,
                        mininterval=0.25)
        self.loss = math.nan
        self.pass_rows = 0  # rows of a pass under way already shown

    def on_batch_end(self, learner, info, cursor):
        self.loss = smoothed_loss(self.loss, info)
        self.bar.update(info.rows - self.pass_rows)
        self.pass_rows = 0
        self.bar.set_postfix_str(f"loss {self.loss:.5g} | {learner.strategy.status()}",
                                 refresh=False)

    def on_pass_progress(self, learner, rows):
        if rows < self.pass_rows:  # a new pass: the last one ended unreported (an L-BFGS
            self.pass_rows = 0     # trial at a non-finite point); its rows were read
        self.bar.set_postfix_str(f"loss {self.loss:.5g} | {learner.strategy.status()}",
                                 refresh=False)
        self.bar.update(rows - self.pass_rows)
        self.pass_rows = rows

    def on_fit_end(self, learner, result):
        self.bar.close()

    def on_error(self, learner, error):
        self.bar.close()


class Validation(Callback):
    """Evaluate held-out data every ``every`` samples and at the end of a fit; each result
    goes to ``log`` (e.g. a :class:`MetricsLogger`) as ``{"event": "validation", "samples",
    "step", "loss", ...the model's measures}``. A due evaluation is skipped while θ has not
    moved since the last (inside an L-BFGS round θ is the round's start); the end's is
    the returned θ's.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(learner) -> dict`` of measures (its first is reported as ``loss``).
    every : int
    log : Callback
        Receives the records through ``on_event``.
    """

    def __init__(self, evaluate, *, every: int, log: Callback):
        self.evaluate, self.every, self.log = evaluate, int(every), log
        self.theta = None  # the parameters evaluated last

    def on_fit_start(self, learner, total_rows):
        self.last = learner.samples

    def _run(self, learner, *, always: bool = False) -> None:
        self.last = learner.samples
        theta = np.asarray(learner.theta)
        if not always and self.theta is not None and np.array_equal(theta, self.theta):
            return  # θ has not moved (inside an L-BFGS round it is the round's start)
        self.theta = theta.copy()
        measures = self.evaluate(learner)
        loss = next((v for k, v in measures.items() if k != "n"), None)
        self.log.on_event(learner, {"event": "validation", "samples": learner.samples,
                                    "step": learner.steps, "loss": loss, **measures,
                                    **restart_tag(learner)})

    def on_batch_end(self, learner, info, cursor):
        if learner.samples - self.last >= self.every:
            self._run(learner)

    def on_fit_end(self, learner, result):
        if learner.samples != self.last or self.theta is None \
                or not np.array_equal(np.asarray(learner.theta), self.theta):
            self._run(learner, always=True)


class MetricsLogger(Callback):
    """Append-only JSON-lines log of training (one object per line).

    Records: ``{"event": "progress", "step", "samples", "epoch", "loss", "grad_norm",
    "natural_grad_norm", "rows_per_s", "elapsed"}`` every ``every`` samples (loss and rate
    averaged over the interval), and, from a fit's start until then, after its first batch
    and at doubling intervals (so that a log starts where the data start);
    ``{"event": "rewhiten", ...}`` with the trigger, the drift and the whitener's
    diagnostics; ``{"event": "round", ...}`` after each L-BFGS round;
    ``{"event": "end", ...}`` with the summary and ``{"event": "error", ...}`` if the run
    stops on an exception.

    Parameters
    ----------
    path : path-like
    every : int
        Samples between progress records.
    """

    def __init__(self, path, *, every: int = DEFAULT_LOG_EVERY):
        self.path = Path(path)
        self.every = int(every)
        self._fh = None

    def _write(self, record: dict) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # never through a symbolic link: O_NOFOLLOW fails on one (ELOOP)
            # nor into a FIFO or device, which could block for ever
            fd = open_fd(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        try:
            self._fh.write(json.dumps(json_clean(record), default=_json_default) + "\n")
            self._fh.flush()
        except OSError as exc:  # e.g. a full disk: name the file
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        """Close the file (reopened on the next write)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def on_fit_start(self, learner, total_rows):
        self.t0 = self.t_last = time.perf_counter()
        self.samples_last = self.samples_start = learner.samples
        self.gap = 1  # the first batch is recorded, then doubling gaps up to ``every``
        self.loss_sum = 0.0
        self.rows = 0
        self._write({"event": "start", "samples": learner.samples, "step": learner.steps,
                     "total_rows": total_rows, "options": learner.options(),
                     "model": learner.model.config()})

    def on_batch_end(self, learner, info, cursor):
        if not info.skipped:
            self.loss_sum += info.loss * info.rows
            self.rows += info.rows
        if learner.samples - self.samples_last >= min(self.gap, self.every):
            self._progress(learner, info)
            self.gap = learner.samples - self.samples_start

    def _progress(self, learner, info):
        now = time.perf_counter()
        self._write({
            "event": "progress", "step": learner.steps, "samples": learner.samples,
            "epoch": learner.cursor.epoch, "loss": self.loss_sum / max(self.rows, 1),
            "grad_norm": info.grad_norm, "natural_grad_norm": info.natural_grad_norm,
            "rows_per_s": (learner.samples - self.samples_last) / max(now - self.t_last, 1e-9),
            "elapsed": now - self.t0, **restart_tag(learner),
        })
        self.t_last, self.samples_last = now, learner.samples
        self.loss_sum, self.rows = 0.0, 0

    def on_refresh(self, learner, event):
        self._write(event)

    def on_round(self, learner, record):
        self._write(record)

    def on_event(self, learner, record):
        self._write(record)

    def on_fit_end(self, learner, result):
        self._write({"event": "end", **result.to_dict()})
        self.close()

    def on_error(self, learner, error):
        try:  # the error may be the log's own (a full disk): keep the original one
            self._write({"event": "error", "type": type(error).__name__,
                         "message": str(error), "samples": learner.samples,
                         "step": learner.steps})
        except OSError:
            pass
        finally:
            try:
                self.close()
            except OSError:
                self._fh = None


class CheckpointEvery(Callback):
    """Write the learner's state atomically every ``every`` samples, every ``seconds`` of
    wall time, after every L-BFGS round (when ``per_round``) and at the end, keeping the
    last ``keep`` checkpoints.

    Nothing is written when fitting stops on an exception, so the last good checkpoint
    is never replaced by the state of a failed run — except when the Dask cluster failed
    (:class:`~natgrad_stream.errors.DistributedError`): the state is then the last
    completed step, pass or round, and is saved so that the run resumes from it (unless
    ``on_cluster_loss`` is False: a run replacing another saves nothing before it ends).

    Each checkpoint records its predecessor: the digest of the one written before it, or
    at first ``predecessor`` (the digest of the checkpoint a resumed run was loaded from;
    None for a new run).
    """

    def __init__(self, path, *, every: int | None = None, seconds: float | None = None,
                 per_round: bool = True, keep: int = 1, extra: dict | None = None,
                 on_cluster_loss: bool = True, predecessor: str | None = None):
        self.path = Path(path)
        self.every = None if every is None else int(every)
        self.seconds = None if seconds is None else float(seconds)
        self.per_round = bool(per_round)
        self.keep = int(keep)
        self.extra = dict(extra or {})
        self.on_cluster_loss = bool(on_cluster_loss)
        self.predecessor = predecessor

    def on_fit_start(self, learner, total_rows):
        self.last = learner.samples
        self.last_time = time.monotonic()

    def save(self, learner) -> None:
        """Write the checkpoint now."""
        self.predecessor = write_checkpoint(self.path, {**learner.state_dict(),
                                                        "run": self.extra},
                                            keep=self.keep, predecessor=self.predecessor)
        self.last = learner.samples
        self.last_time = time.monotonic()

    def _due(self, learner) -> bool:
        return (self.every is not None and learner.samples - self.last >= self.every) or \
            (self.seconds is not None and time.monotonic() - self.last_time >= self.seconds)

    def on_batch_end(self, learner, info, cursor):
        if self._due(learner):
            self.save(learner)

    def on_round(self, learner, record):
        if self.per_round:
            self.save(learner)

    def on_fit_end(self, learner, result):
        self.save(learner)

    def on_error(self, learner, exc):
        if self.on_cluster_loss and isinstance(exc, DistributedError):
            self.save(learner)
