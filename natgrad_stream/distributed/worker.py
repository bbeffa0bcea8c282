"""What runs on a Dask worker: open the store, read only the chunks asked for, and return
their sums (:class:`~natgrad_stream.distributed.stats.Stats`), computed by the same fused
kernels as a single-process fit.

Nothing here imports dask: these are plain functions of picklable arguments. A worker
keeps, per process, the sources it opened and the streams of the lanes it serves (a cache:
a task that finds no stream at the cursor it is given opens one there, so a task rerun on
another worker after a failure computes the same result).
"""

from __future__ import annotations

import collections
import functools
import json
import threading
from dataclasses import dataclass

import numpy as np

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream._constants import DEFAULT_READ_BUFFER_BYTES
from natgrad_stream.data import Cursor, open_zarr
from natgrad_stream.data.window import chunk_window, locate_in_full_data, row_prefix
from natgrad_stream.distributed.stats import Stats, tree_sum
from natgrad_stream.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """Where the workers read: a Zarr store by path or URL, its arrays' names, and the
    chunk rows and row count the driver planned with (rows appended since are not read).
    """

    path: str
    x: str = "X"
    y: str | None = "y"
    w: str | None = None
    chunk_rows: int | None = None
    n_rows: int | None = None


@functools.lru_cache(maxsize=8)
def open_source(spec: DataSpec):
    """The worker's source for ``spec`` (opened once per process; metadata only)."""
    source = open_zarr(spec.path, x=spec.x, y=spec.y, w=spec.w)
    if spec.chunk_rows is not None and source.chunk_rows != spec.chunk_rows:
        raise DataError(f"has chunks of {source.chunk_rows} rows on this worker but "
                        f"{spec.chunk_rows} on the driver: workers must see the same store",
                        array=spec.x)
    if spec.n_rows is not None and source.n_rows != spec.n_rows:
        if source.n_rows < spec.n_rows:
            raise DataError(f"has {source.n_rows} rows on this worker but {spec.n_rows} on "
                            "the driver: workers must see the same store", array=spec.x)
        source = row_prefix(source, spec.n_rows)
    return source


_LOCAL = threading.local()
#: Workspaces kept per thread (one per model and structure in use).
_WORKSPACES_PER_THREAD = 4


def model_token(model) -> str:
    """The model's identity across processes: its class and constructor arguments."""
    return f"{type(model).__module__}.{type(model).__qualname__}:" + json.dumps(
        model.config(), sort_keys=True, default=str)


def _workspace(model, structure):
    """The calling thread's workspace for ``model`` (serial kernels: one thread's scratch).

    Every task unpickles its own copy of the model, so workspaces are keyed by what the
    model is, not by the object; a few are kept per thread.
    """
    cache = getattr(_LOCAL, "workspaces", None)
    if cache is None:
        cache = _LOCAL.workspaces = collections.OrderedDict()
    key = (model_token(model), structure)
    ws = cache.pop(key, None)
    if ws is None:
        ws = model.new_workspace(structure, n_threads=1)
    cache[key] = ws
    while len(cache) > _WORKSPACES_PER_THREAD:
        cache.popitem(last=False)
    return ws


def _batch_stats(model, X, y, w, theta, *, metric, structure, rng, mc_samples) -> Stats:
    """One batch's sums, by the model's fused kernel (serial: the sums do not depend on the
    worker's thread count).
    """
    ws = _workspace(model, structure)
    loss, weight = model.accumulate(X, y, w, theta, metric=metric, structure=structure,
                                    ws=ws, parallel=False, rng=rng, mc_samples=mc_samples)
    return Stats(float(loss), float(weight), ws.grad.copy(),
                 None if metric is None else ws.fisher.copy(), int(X.shape[0]))


def block_stats(spec: DataSpec, model, chunks, theta, *, metric, structure, mc_samples=1,
                rng_key=None) -> Stats:
    """The sums over ``chunks`` (consecutive positions of one pass, in order): one leaf per
    chunk, added by :func:`tree_sum`.

    ``rng_key`` (a tuple of ints) seeds chunk ``c``'s Monte Carlo draws as
    ``default_rng([*rng_key, c])``, so they do not depend on placement either.
    """
    source = open_source(spec)
    chunks = np.asarray(chunks, dtype=np.int64)
    order = np.argsort(chunks, kind="stable")
    R = source.chunk_rows
    leaves: list = [None] * len(chunks)
    window = chunk_window(source, chunks[order])
    try:
        with window.batches(batch_size=R, epochs=1, shuffle=False, chunks_per_read=1,
                            prefetch=1, **model.data_checks()) as stream:
            for i, batch in enumerate(stream):
                c = int(chunks[order[i]])
                expected = min(R, source.n_rows - c * R)
                if batch.X.shape[0] != expected:  # pragma: no cover - a window invariant
                    raise AssertionError(f"chunk {c}: {batch.X.shape[0]} rows, "
                                         f"expected {expected}")
                rng = None if rng_key is None else np.random.default_rng([*rng_key, c])
                leaves[order[i]] = _batch_stats(model, batch.X, batch.y, batch.w, theta,
                                                metric=metric, structure=structure, rng=rng,
                                                mc_samples=mc_samples)
    except DataError as exc:
        raise locate_in_full_data(exc, chunks[order], R) from exc
    return tree_sum(leaves)


def merge(a: Stats, b: Stats) -> Stats:
    """``a + b`` (a node of the reduction tree, run where the scheduler puts it)."""
    return a + b


# -- lanes: the per-worker streams of synchronous data-parallel steps -----------------------
@dataclass(frozen=True)
class LaneKey:
    """Lane ``lane`` of ``lanes`` in epoch ``epoch`` of the run with stream seed ``seed``,
    for the model ``model`` (:func:`model_token`: its data checks shape the stream).
    """

    spec: DataSpec
    model: str
    seed: int
    epoch: int
    lane: int
    lanes: int
    batch_size: int
    chunks_per_read: int
    read_buffer_bytes: int | None = DEFAULT_READ_BUFFER_BYTES


def lane_chunks(n_chunks: int, key: LaneKey) -> np.ndarray:
    """The chunks lane ``key.lane`` reads in its epoch: every ``lanes``-th chunk of the
    epoch's shuffled chunk order, sorted (the lane's own stream shuffles them again).
    """
    rng = np.random.default_rng([key.seed, key.epoch, 0x1A4E])
    order = rng.permutation(n_chunks)
    return np.sort(order[key.lane::key.lanes])


def lane_seed(key: LaneKey) -> int:
    """Seed of the lane's stream (its chunk order and row permutations)."""
    return int(np.random.SeedSequence([key.seed, key.epoch, key.lane, key.lanes])
               .generate_state(1)[0])


class _Lane:
    """An open lane stream, positioned after the batch at ``cursor``."""

    def __init__(self, key: LaneKey, model, start: Cursor):
        source = open_source(key.spec)
        n_chunks = -(-source.n_rows // source.chunk_rows)
        self.chunks = lane_chunks(n_chunks, key)
        self.window = chunk_window(source, self.chunks) if len(self.chunks) else None
        self.R = source.chunk_rows
        self.cursor = start
        self.stream = None
        self.iter = None
        if self.window is not None:
            self.stream = self.window.batches(batch_size=key.batch_size, epochs=1,
                                              seed=lane_seed(key), shuffle=True, start=start,
                                              chunks_per_read=key.chunks_per_read,
                                              prefetch=2,
                                              read_buffer_bytes=key.read_buffer_bytes,
                                              **model.data_checks())
            self.iter = iter(self.stream)

    def next(self):
        """``(X, y, w, cursor after)`` of the next batch, or None at the lane's end."""
        if self.iter is None:
            return None
        try:
            batch = next(self.iter, None)
        except DataError as exc:
            raise locate_in_full_data(exc, self.chunks, self.R) from exc
        if batch is None:
            return None
        self.cursor = batch.cursor
        return batch.X, batch.y, batch.w, batch.cursor

    def close(self):
        if self.stream is not None:
            self.stream.close()


#: Open lane streams of this process, least recently used first.
_LANES: collections.OrderedDict = collections.OrderedDict()
_LANES_LOCK = threading.Lock()
#: Open lane streams kept per process (each holds its prefetch buffers and a thread).
MAX_OPEN_LANES = 16


def _lane_at(key: LaneKey, model, start: Cursor) -> _Lane:
    """The cached lane positioned at ``start`` (taken out of the cache while in use), or a
    new stream opened there.
    """
    with _LANES_LOCK:
        lane = _LANES.pop(key, None)
    if lane is not None and lane.cursor != start:
        lane.close()
        lane = None
    return lane or _Lane(key, model, start)


def _keep(key: LaneKey, lane: _Lane) -> None:
    """Put ``lane`` back in the cache; close lanes of earlier epochs of the same run and
    the least recently used beyond :data:`MAX_OPEN_LANES`.
    """
    with _LANES_LOCK:
        old = _LANES.pop(key, None)
        _LANES[key] = lane
        stale = [k for k in _LANES if k.spec == key.spec and k.seed == key.seed
                 and k.model == key.model and k.epoch < key.epoch]
        closing = [_LANES.pop(k) for k in stale]
        while len(_LANES) > MAX_OPEN_LANES:
            closing.append(_LANES.popitem(last=False)[1])
    for s in ([old] if old is not None and old is not lane else []) + closing:
        s.close()


def lane_step(key: LaneKey, model, start: dict, theta, *, metric, structure, mc_samples=1,
              rng_key=None):
    """The next batch of a lane after cursor ``start`` (a :meth:`Cursor.to_dict`): its
    sums at ``theta`` and the cursor after it, ``(Stats, cursor dict)``; None when the lane
    has no rows left this epoch.
    """
    lane = _lane_at(key, model, Cursor.from_dict(start))
    try:
        got = lane.next()
        if got is None:
            lane.close()
            return None
        X, y, w, cursor = got
        rng = None if rng_key is None else np.random.default_rng([*rng_key, key.lane])
        stats = _batch_stats(model, X, y, w, theta, metric=metric, structure=structure,
                             rng=rng, mc_samples=mc_samples)
    except BaseException:
        lane.close()
        raise
    _keep(key, lane)  # after the sums: the batch views the stream's reused buffers
    return stats, cursor.to_dict()


def lane_batch_task(key: LaneKey, model, start: dict, what: str, *args):
    """A computation on the batch a lane serves after cursor ``start``, without moving the
    lane: ``what`` is ``"initial_params"`` (the model's data-informed start) or
    ``"curvature"`` (``args = (theta, whitener, v, metric, iterations[, penalty])``: the
    power iteration of the learner's curvature cap, with its L2 penalty's ``λI_S``). The
    lane's cached stream, if any, stays where it is (the batch is read apart: this is rare,
    at a refresh or the first step).
    """
    lane = _Lane(key, model, Cursor.from_dict(start))  # apart from the lane's own stream
    try:
        got = lane.next()
        if got is None:
            return None
        X, y, w, _ = got
        with limited_blas_threads(1):  # the same bits whatever the worker's BLAS pool
            return _on_batch(model, X, y, w, what, args)
    finally:
        lane.close()


def _on_batch(model, X, y, w, what, args):
    if what == "initial_params":
        return model.initial_params(X, y, w)
    theta, whitener, v, metric, iterations, *rest = args
    penalty = rest[0] if rest else None  # the learner's L2Penalty (G + λI_S)
    rho = 1.0
    v = np.array(v, dtype=np.float64).reshape(-1, 1)
    for _ in range(iterations):
        v /= np.linalg.norm(v)
        u = whitener.theta(v[:, 0])[:, None]
        Gu = model.metric_matvec(X, y, w, theta, u, metric=metric)
        if penalty is not None:
            Gu = penalty.add_matvec(Gu, u)
        v = whitener.grad_phi(Gu[:, 0])[:, None]
        rho = float(np.linalg.norm(v))
    return rho


class LaneRunner:
    """A Dask actor that runs lane steps in its worker's process: about 1–2 ms a step on a
    local cluster, against about 11 ms for tasks through the scheduler (calls go straight
    to the worker when the client has ``direct_to_workers=True``, as the command's
    clients do). It holds nothing: the lanes' streams are the process's cache, and a call
    on another worker computes the same result.
    """

    def lane_step(self, *args, **kwargs):
        """Run :func:`lane_step`: ``("ok", result)`` or ``("error", exception)`` (the
        driver tells a lane's own failure from a failed call by this, not by type).
        """
        try:
            return "ok", lane_step(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (returned to the driver, which raises it)
            return "error", exc

    def ping(self):
        """Nothing: a round trip (for latency measurements and health checks)."""
        return None


def close_lanes() -> int:
    """Close every lane stream of this worker; returns how many there were."""
    with _LANES_LOCK:
        lanes = list(_LANES.values())
        _LANES.clear()
    for lane in lanes:
        lane.close()
    return len(lanes)


def first_batch_initial_params(spec: DataSpec, model, batch_size: int,
                               read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES):
    """The model's data-informed start from the store's first ``batch_size`` rows (in
    order, read within ``read_buffer_bytes``), as a single-process L-BFGS fit computes it.
    """
    source = open_source(spec)
    with source.batches(batch_size=batch_size, epochs=1, shuffle=False,
                        read_buffer_bytes=read_buffer_bytes, **model.data_checks()) as stream:
        first = next(iter(stream), None)
        if first is None:
            return None
        with limited_blas_threads(1):
            return model.initial_params(first.X, first.y, first.w)
