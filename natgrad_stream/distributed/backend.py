"""The driver's side of a Dask fit: passes and synchronous steps as tasks on a cluster.

- **Passes** (L-BFGS evaluations, the Fisher-scoring passes after the first): the pass's
  chunks, in order, are cut into blocks of :data:`BLOCK_CHUNKS`; one task per block reads
  its chunks on a worker and returns their sums added pairwise; further tasks add the block
  results pairwise, level by level, up to one. The tree's shape depends only on the number
  of chunks, so the result never depends on placement, retries or the number of workers.
- **Streaming steps** (sgd, momentum, adam): the epoch's chunks are dealt to ``lanes``
  (as many as workers when the run's first streaming epoch started; recorded, so later
  epochs and resumes keep them). Each step calls, per lane, a
  :class:`~natgrad_stream.distributed.worker.LaneRunner` actor on a worker — the lane's
  next batch at the current θ; the worker keeps the lane's stream open, and any other
  worker reopens it at the cursor given, so a lost worker's lanes move and the step is
  repeated. The driver adds the lane sums in lane order and takes one step on the merged
  batch of ``lanes × batch_size`` rows.

Workers open the store themselves; only θ (8·P bytes per task) goes out and sums
(8·P² + 8·P bytes per block or lane) come back.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from natgrad_stream._constants import DEFAULT_READ_BUFFER_BYTES
from natgrad_stream.distributed.stats import Stats, tree_sum
from natgrad_stream.distributed.worker import (
    DataSpec,
    LaneKey,
    LaneRunner,
    block_stats,
    close_lanes,
    first_batch_initial_params,
    lane_batch_task,
    merge,
    model_token,
)
from natgrad_stream.errors import DataError, DistributedError, NumericalError, OptionError

#: Chunks per block task of a pass (a power of two, fixed: the tree's shape must not
#: depend on the cluster).
BLOCK_CHUNKS = 4
#: Times a streaming step is repeated after a worker holding a lane runner was lost.
STEP_RETRIES = 3
#: Seconds the driver waits for a lost scheduler to come back before it gives up.
SCHEDULER_LOST_SECONDS = 10.0
#: Seconds the driver waits for workers when the cluster has none (e.g. all restarting).
NO_WORKERS_SECONDS = 60.0
#: Seconds :meth:`DaskBackend.close` waits for lane calls still running after a stop.
CLOSE_WAIT_SECONDS = 5.0
#: Seconds a streaming step may place lanes by an older list of workers.
WORKERS_MAX_AGE = 5.0
#: Seconds between looks at stop requests and the scheduler while tasks run.
_POLL = 0.25


#: Exceptions from a task that are about the data, the model or the store: re-raised as
#: they are (the command reports each in one line).
_TASK_ERRORS_AS_IS = (DataError, NumericalError, OptionError, MemoryError, OSError)


def _first_line(exc) -> str:
    """The first line of an exception's message (some span many)."""
    return (str(exc).strip().splitlines() or [""])[0]


def _comm_errors() -> tuple:
    """Exceptions that mean the cluster, not the data or the model, failed."""
    import asyncio
    import concurrent.futures

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    errors = [CommClosedError, KilledWorker, OSError, TimeoutError, asyncio.TimeoutError,
              concurrent.futures.CancelledError, asyncio.CancelledError]
    try:
        from distributed.client import FutureCancelledError
        errors.append(FutureCancelledError)
    except ImportError:  # pragma: no cover - older distributed
        pass
    return tuple(errors)


class DaskBackend:
    """Runs a learner's passes and streaming steps on a :class:`distributed.Client`.

    Parameters
    ----------
    client : distributed.Client
    spec : DataSpec
        The store the workers open (its ``chunk_rows`` and ``n_rows`` as the driver sees
        them).
    model : Model
    """

    def __init__(self, client, spec: DataSpec, model):
        self.client = client
        self.spec = spec
        self.model = model
        self._model_token = model_token(model)
        self.n_chunks = math.ceil(spec.n_rows / spec.chunk_rows)
        self.address = getattr(client.scheduler, "address", "the scheduler")
        self.bytes_out = 0  # θ and arguments sent with tasks (arrays only)
        self.bytes_back = 0  # sums moved: block and lane results, and merge results
        self.tasks = 0
        self._workers: list[str] = []
        self._workers_at = -math.inf
        self.lanes = self.effective_batch = None  # of streaming steps, once taken
        self._runner_workers: list[str] | None = None
        self._runner_list: list = []
        self._pending: list = []  # lane calls of the step under way
        self._step_watch: dict = {}  # when the scheduler was first seen unreachable

    # -- plumbing ---------------------------------------------------------------------------
    def workers(self, max_age: float = 0.0) -> list[str]:
        """Addresses of the workers, sorted, as known at most ``max_age`` seconds ago."""
        now = time.monotonic()
        if self._workers and now - self._workers_at <= max_age:
            return self._workers
        try:
            self._workers = sorted(self.client.nthreads())
        except _comm_errors() as exc:
            raise self._lost(exc) from exc
        self._workers_at = now
        return self._workers

    def _lost(self, exc) -> DistributedError:
        return DistributedError(f"lost the Dask cluster at {self.address} "
                                f"({type(exc).__name__}: {_first_line(exc).rstrip(':')})")

    def _submit(self, fn, *args, workers=None, **kwargs):
        """A task (no ``retries``: a task whose worker died is rescheduled by Dask anyway,
        and a task that raised would raise again: its inputs are its result's only cause).
        """
        self.tasks += 1
        try:
            return self.client.submit(fn, *args, pure=False, workers=workers,
                                      allow_other_workers=workers is not None, **kwargs)
        except _comm_errors() as exc:
            raise self._lost(exc) from exc

    def _watch(self, since: dict) -> None:
        """Raise :class:`DistributedError` once the scheduler has been unreachable, or the
        cluster without workers, for longer than :data:`SCHEDULER_LOST_SECONDS`;
        ``since`` keeps when each condition began.
        """
        now = time.monotonic()
        status = self.client.status
        if status in ("closing", "closed"):
            raise DistributedError(f"lost the Dask cluster at {self.address} "
                                   f"(client {status})")
        if status != "running":
            since.setdefault("scheduler", now)
            if now - since["scheduler"] > SCHEDULER_LOST_SECONDS:
                raise DistributedError(f"lost the Dask scheduler at {self.address}: "
                                       f"unreachable for {SCHEDULER_LOST_SECONDS:g} s")
            return
        since.pop("scheduler", None)
        if now - since.get("checked", -math.inf) < 1.0:
            return
        since["checked"] = now
        if self.workers():
            since.pop("no_workers", None)
            return
        since.setdefault("no_workers", now)
        if now - since["no_workers"] > NO_WORKERS_SECONDS:
            raise DistributedError(f"the Dask cluster at {self.address} has had no workers "
                                   f"for {NO_WORKERS_SECONDS:g} s")

    def _raise_task_error(self, failed) -> None:
        """Re-raise the exception a task (a future, or the exception itself) raised on a
        worker: the package's own errors and OS errors (a store a worker cannot open) as
        they are, anything else as a :class:`DistributedError` naming it.
        """
        exc = failed if isinstance(failed, BaseException) else failed.exception()
        if isinstance(exc, _TASK_ERRORS_AS_IS):
            raise exc
        raise DistributedError(f"a task failed on a worker of the Dask cluster at "
                               f"{self.address} ({type(exc).__name__}: {_first_line(exc)})"
                               ) from exc

    def _gather(self, futures, should_stop=None):
        """The futures' results, in order; None when ``should_stop()`` turned True first
        (the futures are cancelled).

        Raises
        ------
        DistributedError
            When the scheduler stays unreachable, or the cluster without workers, for the
            grace periods above, or a task kept killing its workers.
        """
        from distributed import wait

        since: dict = {}
        pending = list(futures)
        try:
            while True:
                try:
                    with self.client.as_current():
                        wait(pending, timeout=_POLL, return_when="ALL_COMPLETED")
                    break
                except TimeoutError:
                    pass
                if should_stop is not None and should_stop():
                    self.client.cancel(pending)
                    return None
                self._watch(since)
            for f in pending:
                if f.status == "error":
                    self._raise_task_error(f)
            return self.client.gather(pending)
        except (DistributedError, *_TASK_ERRORS_AS_IS):
            raise
        except _comm_errors() as exc:
            raise self._lost(exc) from exc

    # -- passes -----------------------------------------------------------------------------
    def pass_stats(self, theta: np.ndarray, *, metric, structure, mc_samples=1, chunks=None,
                   rng_key=None, should_stop=None) -> Stats | None:
        """The sums over ``chunks`` (default all, in order) at ``theta``, or None if stopped."""
        return self.reduce(block_stats, theta, chunks=chunks, should_stop=should_stop,
                           metric=metric, structure=structure, mc_samples=mc_samples,
                           rng_key=rng_key)

    def reduce(self, task, theta: np.ndarray, *, chunks=None, should_stop=None, **kwargs):
        """``task(spec, model, block, theta, **kwargs)`` on each block of
        :data:`BLOCK_CHUNKS` of ``chunks`` (default all, in order), its results (sums with
        ``+`` and ``nbytes``) added pairwise in the fixed tree; None if stopped.
        """
        ids = np.arange(self.n_chunks) if chunks is None else np.asarray(chunks, np.int64)
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        level = [self._submit(task, self.spec, self.model, ids[i:i + BLOCK_CHUNKS], theta,
                              **kwargs)
                 for i in range(0, len(ids), BLOCK_CHUNKS)]
        self.bytes_out += len(level) * (theta.nbytes + 8 * BLOCK_CHUNKS)
        n_results = len(level)
        while len(level) > 1:
            level = [self._submit(merge, level[i], level[i + 1]) if i + 1 < len(level)
                     else level[i] for i in range(0, len(level), 2)]
            n_results += len(level)
        got = self._gather(level, should_stop)
        if got is None:
            return None
        stats = got[0]
        self.bytes_back += n_results * stats.nbytes
        return stats

    # -- lanes ------------------------------------------------------------------------------
    def lane_key(self, lr, epoch: int, lane: int, lanes: int, chunks_per_read: int,
                 n_rows: int | None = None) -> LaneKey:
        """The lane's identity; ``n_rows`` (default the store's at the fit's start) are the
        rows the epoch planned over (an epoch planned before rows were appended finishes
        over those).
        """
        spec = self.spec if n_rows in (None, self.spec.n_rows) else \
            dataclasses.replace(self.spec, n_rows=int(n_rows))
        return LaneKey(spec, self._model_token, int(lr.seed), int(epoch), int(lane),
                       int(lanes), int(lr.batch_size), int(chunks_per_read),
                       lr.read_buffer_bytes)

    def lane_step(self, lr, epoch: int, cursors: list, theta: np.ndarray, *, metric,
                  chunks_per_read: int, rng_key=None, should_stop=None, n_rows=None):
        """One synchronous step's merged sums: ``(Stats, new cursors)``, or ``(None,
        cursors)`` when every lane is exhausted, or None when stopped.
        """
        L = len(cursors)
        self.lanes, self.effective_batch = L, L * int(lr.batch_size)
        live = [j for j, c in enumerate(cursors) if c is not None]
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        last = None
        for attempt in range(STEP_RETRIES + 1):
            runners = self._runners(should_stop)
            if runners is None:
                return None
            try:
                self._pending = [runners[j % len(runners)].lane_step(
                    self.lane_key(lr, epoch, j, L, chunks_per_read, n_rows), self.model,
                    cursors[j], theta, metric=metric, structure=lr.structure,
                    mc_samples=lr.mc_samples, rng_key=rng_key) for j in live]
                got = self._actor_results(self._pending, should_stop)
                break
            except DistributedError:
                raise
            except Exception as exc:  # noqa: BLE001 (the call, not the lane, failed)
                # a worker holding a runner went away (or its comm broke): the lanes go to
                # the live workers, which reopen their streams at the cursors given
                last = exc
                self._runner_workers = None
                self._workers = []
                time.sleep(min(0.5 * (attempt + 1), 2.0))
        else:
            raise self._lost(last)
        self._pending = []
        if got is None:
            return None
        self.bytes_out += len(live) * theta.nbytes
        new = list(cursors)
        parts = []
        for j, (status, res) in zip(live, got, strict=True):
            if status == "error":  # the lane's own failure: bad data, ...
                self._raise_task_error(res)
            if res is None:
                new[j] = None
                continue
            stats, new[j] = res
            parts.append(stats)
            self.bytes_back += stats.nbytes
        if not parts:
            return None, new
        return tree_sum(parts), new

    def await_workers(self, should_stop=None) -> list[str] | None:
        """The workers (sorted), waiting while the cluster has none (up to
        :data:`NO_WORKERS_SECONDS`); None when stopped meanwhile.
        """
        since: dict = {}
        workers = self.workers(max_age=WORKERS_MAX_AGE)
        while not workers:
            if should_stop is not None and should_stop():
                return None
            self._watch(since)  # raises after NO_WORKERS_SECONDS
            time.sleep(_POLL)
            workers = self.workers()
        return workers

    def _runners(self, should_stop=None) -> list | None:
        """One :class:`~natgrad_stream.distributed.worker.LaneRunner` actor per worker
        (made again when the workers change; where each lands does not matter); None when
        stopped while waiting for workers.
        """
        workers = self.await_workers(should_stop)
        if workers is None:
            return None
        if self._runner_workers != workers:
            with self.client.as_current():
                futures = [self.client.submit(LaneRunner, workers=[w], actor=True,
                                              allow_other_workers=True, pure=False)
                           for w in workers]
                runners = self._gather(futures, should_stop)
            if runners is None:
                return None
            self._runner_list, self._runner_workers = runners, workers
            self.tasks += len(workers)
        return self._runner_list

    def _actor_results(self, calls, should_stop=None):
        """The ``(status, value)`` replies of lane-runner calls, in order; None when
        stopped. A failed call raises what the call raised. Watches the cluster as
        :meth:`_gather` does.
        """
        out = []
        since = self._step_watch  # kept across steps: calls skip the scheduler, so a
        for call in calls:        # scheduler gone is seen by its status, step after step
            while True:
                try:
                    out.append(call.result(timeout=_POLL))
                    break
                except TimeoutError:
                    pass
                if should_stop is not None and should_stop():
                    return None
                self._watch(since)
        self._watch(since)
        return out

    def lane_batch(self, lr, epoch: int, cursors: list, what: str, *args,
                   chunks_per_read: int, n_rows=None):
        """:func:`~natgrad_stream.distributed.worker.lane_batch_task` on the first live
        lane's batch at its cursor (the batch of the step just taken, for a curvature
        probe; the first batch, for the data-informed start).
        """
        live = [j for j, c in enumerate(cursors) if c is not None]
        if not live:
            return None
        j = live[0]
        workers = self.workers(max_age=WORKERS_MAX_AGE)
        fut = self._submit(lane_batch_task, self.lane_key(lr, epoch, j, len(cursors),
                                                         chunks_per_read, n_rows),
                           self.model, cursors[j], what, *args,
                           workers=[workers[j % len(workers)]] if workers else None)
        return self._gather([fut])[0]

    def initial_params(self, batch_size: int, read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES):
        """The model's data-informed start from the store's first rows (on a worker), read
        within ``read_buffer_bytes`` as a single-process fit reads them.
        """
        return self._gather([self._submit(first_batch_initial_params, self.spec, self.model,
                                          int(batch_size), read_buffer_bytes)])[0]

    def close(self) -> None:
        """Close the lane streams the workers hold, once calls still running (after a stop)
        have ended; best effort: the cluster may be gone.
        """
        if self.client.status != "running":
            return
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        for call in self._pending:
            try:
                call.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 (only waiting for it to end)
                pass
        try:
            self.client.run(close_lanes)
        except Exception:  # noqa: BLE001 (nothing to keep: the streams die with the workers)
            pass

    def traffic(self) -> dict:
        """Counted bytes of arrays moved so far, tasks submitted, and the streaming steps'
        lanes and effective batch (None without streaming steps).
        """
        return {"bytes_to_workers": self.bytes_out, "bytes_of_results": self.bytes_back,
                "tasks": self.tasks, "lanes": self.lanes,
                "effective_batch": self.effective_batch}
