"""Streaming minibatches from chunked arrays: plans, prefetch, cursors, sources.

A :class:`Source` yields :class:`Batch` objects through a :class:`BatchStream`, which owns
one background reader thread. For chunked arrays (Zarr, NumPy, dask) each epoch follows a
*plan*: the chunk order (shuffled by ``(seed, epoch)``) cut into *reads* of
``chunks_per_read`` chunks. A read is decoded chunk-aligned, with its chunks decompressing
concurrently, into one of ``prefetch + 2`` pooled buffers, checked, and handed over a
bounded queue. Batches are consecutive slices of the read's row permutation (keyed by
``(seed, epoch, read_index)``), gathered into one reused batch buffer; they never straddle
reads. Everything is a pure function of ``(seed, epoch, read_index)``, so a
:class:`Cursor` ``(epoch, read_index, row, samples)`` resumes a stream exactly.

Peak memory is about ``(prefetch + 2) × chunks_per_read × chunk_rows`` rows, whatever the
dataset's size, and within a byte budget (``read_buffer_bytes``, default 512 MiB) whatever
the number of features: the stream lowers ``prefetch``, then ``chunks_per_read``, to fit
(:mod:`natgrad_stream.data.budget`). Metadata and plans that cannot fit the machine are
refused before anything is allocated.
A Zarr chunk missing from the store or undecodable is a :class:`DataError` on every read
path, never fill values (:mod:`natgrad_stream.data.metadata`).
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from natgrad_stream._constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_READ_BUFFER_BYTES,
    RNG_CHUNK_ORDER,
    RNG_ROW_ORDER,
)
from natgrad_stream._files import check_zarr_metadata
from natgrad_stream.data._gather_kernels import gather_rows
from natgrad_stream.data._zstd_direct import DirectChunks, run_in_order
from natgrad_stream.data.budget import (
    ReadPlan,
    default_chunk_rows,
    plan_reads,
    warn_over_budget,
)
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.data.metadata import (
    StoredChunks,
    check_plan_memory,
    check_zarr_layout,
    is_zarr_array,
)
from natgrad_stream.data.sparse import SparseRows, as_sparse_rows, is_sparse
from natgrad_stream.data.validation import (
    Check,
    check_finite,
    check_nonnegative,
    check_target_dtype,
    check_x_dtype,
)
from natgrad_stream.data.zarr_reads import (
    NOT_DATA_ERRORS,
    DamagedObject,
    MismatchedObject,
    MissingObject,
    read_all,
    read_into,
)
from natgrad_stream.errors import DataError

#: Default rows per chunk for arrays that are not chunked (NumPy).
#: Seconds between checks of the stop flag while the reader waits on a full queue.
_POLL_SECONDS = 0.05
#: Longest wait for the reader thread to stop when a stream is closed.
_CLOSE_SECONDS = 10.0


@dataclass(frozen=True)
class Cursor:
    """Where a stream stands: the next row to deliver.

    Attributes
    ----------
    epoch : int
        Current epoch (0-based).
    read_index : int
        Index of the current read within the epoch's plan (for iterators: items consumed).
    row : int
        Offset of the next row within that read's shuffled buffer (or the current item).
    samples : int
        Rows delivered since the start of the run, over all epochs.
    """

    epoch: int = 0
    read_index: int = 0
    row: int = 0
    samples: int = 0

    @property
    def mid_epoch(self) -> bool:
        """Whether the cursor stands inside an epoch (past its first read or row)."""
        return bool(self.read_index or self.row)

    def to_dict(self) -> dict:
        """JSON-ready dict of ints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Cursor:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["epoch"]), int(d["read_index"]), int(d["row"]), int(d["samples"]))


@dataclass(frozen=True)
class Batch:
    """One minibatch.

    Attributes
    ----------
    X : ndarray, shape (b, d)
        Source dtype (float32 or float64), C-contiguous; may view a reused buffer that is
        valid only until the next batch is requested.
    y : ndarray, shape (b,), float64, or None
    w : ndarray, shape (b,), float64, or None
    rows : ndarray, shape (b,), int64
        Global row indices in the source (−1 where unknown, for iterators).
    cursor : Cursor
        Position after this batch: resuming from it continues with the next batch.
    """

    X: np.ndarray
    y: np.ndarray | None
    w: np.ndarray | None
    rows: np.ndarray
    cursor: Cursor


def batch_cursor(epoch: int, read_index: int, stop: int, rows: int, last_read: bool,
                 samples: int) -> Cursor:
    """The cursor after a batch ending at row ``stop`` of a read of ``rows`` rows: the
    next batch of the read, else the next read, else the next epoch.
    """
    if stop < rows:
        return Cursor(epoch, read_index, stop, samples)
    if last_read:
        return Cursor(epoch + 1, 0, 0, samples)
    return Cursor(epoch, read_index + 1, 0, samples)


# -- plans -----------------------------------------------------------------------------------
def epoch_plan(n_rows: int, chunk_rows: int, chunks_per_read: int, seed: int, epoch: int,
               shuffle: bool) -> list[np.ndarray]:
    """Chunk indices of each read of an epoch (a pure function of its arguments)."""
    order = _chunk_order(math.ceil(n_rows / chunk_rows), seed, epoch, shuffle)
    return [order[i:i + chunks_per_read] for i in range(0, len(order), chunks_per_read)]


def _chunk_order(n_chunks: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """An epoch's chunk order; read ``i`` is ``order[i·k:(i+1)·k]`` (see :func:`epoch_plan`)."""
    return (np.random.default_rng([seed, epoch, RNG_CHUNK_ORDER]).permutation(n_chunks)
            if shuffle else np.arange(n_chunks))


def read_permutation(n: int, seed: int, epoch: int, read_index: int) -> np.ndarray:
    """Row order within a read's buffer of ``n`` rows."""
    return np.random.default_rng([seed, epoch, RNG_ROW_ORDER, read_index]).permutation(n)


# -- the stream ------------------------------------------------------------------------------
class _Stop(Exception):
    pass


class BatchStream:
    """Iterator of :class:`Batch` fed by one background reader thread.

    Use as a context manager (or call :meth:`close`) so the thread is always joined.
    ``inline=True`` runs ``produce`` in the consumer's thread at the first batch instead,
    for a stream of a single read (nothing to overlap): starting a thread waits for the
    OS to schedule it, about 4.5 ms on a loaded 2-core machine, which was most of a
    whole-data pass over the 442 diabetes rows (the mlp's L-BFGS evaluations).
    """

    def __init__(self, produce, *, depth: int, start: Cursor, name: str,
                 inline: bool = False):
        self._ready: queue.Queue = queue.Queue(maxsize=0 if inline else max(1, depth))
        self._stop = threading.Event()
        self._cursor = start
        self._batches = None
        self._produce = produce if inline else None
        self._thread = None
        if not inline:
            self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True,
                                            name=f"natgrad-reader[{name}]")
            self._thread.start()

    # reader side
    def put(self, item) -> None:
        """Hand an item to the consumer; raises ``_Stop`` once the stream is closed."""
        if self._thread is None:  # inline: the consumer takes it once produce returns
            if self._stop.is_set():
                raise _Stop
            self._ready.put_nowait(item)
            return
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                self._ready.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    @property
    def stopping(self) -> bool:
        """True once :meth:`close` was called."""
        return self._stop.is_set()

    def _run(self, produce) -> None:
        try:
            produce(self)
            self.put(("end", None))
        except _Stop:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                self.put(("error", exc))
            except _Stop:
                pass

    # consumer side
    def _next_item(self):
        if self._produce is not None:  # inline: produce everything now, in this thread
            produce, self._produce = self._produce, None
            self._run(produce)
        if self._thread is None:
            return self._ready.get_nowait()  # produce ended with "end" or "error"
        while True:
            try:
                return self._ready.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("the reader thread ended without a result") from None

    def _generate(self):
        while True:
            kind, payload = self._next_item()
            if kind == "end":
                return
            if kind == "error":
                raise payload
            yield from payload()  # a read: a generator of batches

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._generate()
        try:
            batch = next(self._batches)
        except BaseException:
            self.close()
            raise
        self._cursor = batch.cursor
        return batch

    @property
    def cursor(self) -> Cursor:
        """Position after the last delivered batch."""
        return self._cursor

    def close(self) -> None:
        """Stop the reader thread and wait for it."""
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._ready.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            # bounded: a reader stuck in a read the OS never ends (a hung network mount)
            # is left behind (a daemon thread) rather than hanging the caller
            self._thread.join(timeout=_CLOSE_SECONDS)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):  # pragma: no cover - safety net
        try:
            self._stop.set()
        except AttributeError:
            pass


# -- reading -----------------------------------------------------------------------------------
def _relocated(exc: DataError, delta: int, chunk_rows: int) -> DataError:
    """``exc``, found at a row of an underlying array, at that row ``+ delta`` of the source
    (whose chunks have ``chunk_rows`` rows).
    """
    if exc.row is None:
        return exc
    row = exc.row + delta
    return exc.located(chunk=row // chunk_rows, row=row)


def _read_direct_located(jobs, chunk_rows) -> None:
    """Run ``(decoder, a, b, out, delta)`` jobs on the decode pool; errors located by
    :func:`_relocated`, the first in job order raised.
    """
    def job(dec, a, b, out, delta):
        try:
            dec.read_into(a, b, out)
        except DataError as exc:
            raise _relocated(exc, delta, chunk_rows) from exc

    run_in_order([functools.partial(job, *j) for j in jobs])


def _read_zarr_checked(requests, chunk_rows: int | None = None) -> None:
    """Decode rows ``a:b`` into ``out`` for every ``(stored, a, b, out, delta)`` at once,
    through zarr's public API on each array's checked view
    (:attr:`~natgrad_stream.data.metadata.StoredChunks.checked`).

    Raises
    ------
    DataError
        For the first request, in order, with a chunk missing from the store (zarr would
        read it as the fill value) or stored bytes its codecs cannot decode (any codec:
        the failing chunk is found by reading the request's chunks one by one), located at
        row ``+ delta`` of the source (in chunks of ``chunk_rows`` rows, default each
        array's own).
    """
    jobs = [functools.partial(read_into, stored.checked, a, b, out)
            for stored, a, b, out, _ in requests]
    for (stored, a, b, _, delta), exc in zip(requests, read_all(jobs, run_in_order),
                                             strict=True):
        if exc is None:
            continue
        R = chunk_rows or stored.chunk_rows
        if isinstance(exc, MissingObject):
            error = stored.missing_error(stored.row_of(exc.key, a, b), exc.key, R)
        elif isinstance(exc, MismatchedObject):
            error = exc.error
        elif isinstance(exc, DamagedObject):
            error = stored.error(stored.row_of(exc.key, a, b), exc.key, exc.problem, R)
        else:
            error = _decode_error(stored, a, b, exc)
        raise _relocated(error, delta, R) from exc


def _decode_error(stored, a, b, exc) -> DataError:
    """The error for a failed read of rows ``a:b``, at its first chunk that fails alone."""
    for row, coords, key in stored.objects(a, b, coords=True):
        end = min(b, stored.region(coords)[0].stop)
        try:
            stored.read_region(coords, row, end)
        except NOT_DATA_ERRORS:
            raise
        except Exception as alone:  # noqa: BLE001 (this chunk's bytes are bad)
            why = ("its content does not match the checksum stored with it: the bytes are "
                   "damaged" if "checksum" in str(alone) else
                   f"{type(alone).__name__}: {alone}")
            return DataError(f"could not be decoded from key {key!r} (rows {row}:{end}) in "
                             f"{stored.where()} ({why})", array=stored.label, row=row)
    return DataError(f"rows {a}:{b} could not be read ({type(exc).__name__}: {exc})",
                     array=stored.label, row=a)


def _pieces(arr, a: int, b: int, offset: int = 0):
    """``(base, a', b', offset)``: rows ``a:b`` of ``arr`` as row ranges of the arrays it
    views, through row-span views (:class:`~natgrad_stream.data.window.RowSpans`); rows
    ``a':b'`` of ``base`` go to ``out[offset:offset + b' − a']``.
    """
    spans, starts, inner = (getattr(arr, k, None) for k in ("spans", "starts", "arr"))
    if spans is None or starts is None or inner is None:
        return [(arr, a, b, offset)]
    pieces = []
    for (sa, sb), s0 in zip(spans, starts[:-1], strict=True):
        s0 = int(s0)
        lo, hi = max(a, s0), min(b, s0 + sb - sa)
        if lo < hi:
            pieces += _pieces(inner, sa + lo - s0, sa + hi - s0, offset + lo - a)
    return pieces


def read_rows(arr, a: int = 0, b: int | None = None, *, label: str | None = None) -> np.ndarray:
    """Rows ``a:b`` (default all) of an array-like as a new NumPy array, read like a stream's
    chunks: from a Zarr array (also behind row-span views), a chunk missing from the store
    or undecodable is a :class:`DataError` naming the array and chunk, never fill values.

    For reads outside a stream (a label scan, a stored matrix, a fingerprint).
    """
    n = int(arr.shape[0])
    a = min(max(int(a), 0), n)
    b = n if b is None else min(max(int(b), a), n)
    out = np.empty((b - a,) + tuple(int(s) for s in arr.shape[1:]), dtype=arr.dtype)
    requests = []
    for base, a2, b2, off in _pieces(arr, a, b):
        piece = out[off:off + b2 - a2]
        if is_zarr_array(base):
            check_zarr_layout(base, label or StoredChunks(base).label)
            requests.append((StoredChunks(base, label), a2, b2, piece, a + off - a2))
        else:
            np.copyto(piece, np.asarray(base[a2:b2]), casting="unsafe")
    if requests:
        _read_zarr_checked(requests)
    return out


#: ``NATGRAD_STREAM_DIRECT_ZSTD=0`` sends every read through zarr's own codec pipeline.
_DIRECT_ENABLED = os.environ.get("NATGRAD_STREAM_DIRECT_ZSTD", "1") != "0"


# -- sources -----------------------------------------------------------------------------------
class Source(abc.ABC):
    """A stream of rows: features ``X`` and optional targets ``y`` and weights ``w``."""

    name: str = "source"
    n_rows: int | None = None
    n_features: int = 0
    x_dtype: np.dtype = np.dtype(np.float64)
    has_targets: bool = False
    has_weights: bool = False

    @abc.abstractmethod
    def batches(self, *, batch_size: int, epochs: int = 1, seed: int = 0, shuffle: bool = True,
                start: Cursor | None = None, chunks_per_read: int = 2, prefetch: int = 2,
                checks: Sequence[Check] = (), x_checks: Sequence[Check] = (),
                read_buffer_bytes: int | None = DEFAULT_READ_BUFFER_BYTES,
                digests: ChunkDigests | None = None) -> BatchStream:
        """Open a stream of batches.

        Parameters
        ----------
        batch_size : int
        epochs : int
            Total epochs of the run; a stream started at ``start.epoch`` stops after epoch
            ``epochs − 1``.
        seed : int
            Keys the shuffle with the epoch.
        shuffle : bool
            Two-level shuffle: chunk order, then rows within a read.
        start : Cursor, optional
            Resume position.
        chunks_per_read : int
            Chunks loaded per read (the shuffle buffer).
        prefetch : int
            Reads queued ahead by the background thread, in ``prefetch + 2`` buffers: 0,
            the next read is decoded while the rows of one are consumed; -1, one buffer,
            the next read decoded once the last one is consumed (for a consumer whose
            work a row dwarfs the decoding).
        checks : sequence of Check
            Extra checks for the targets (e.g. a model's label domain).
        x_checks : sequence of Check
            Extra checks for the features (e.g. binary units), after the finiteness scan.
        read_buffer_bytes : int or None
            Bytes the stream's buffers may take; chunked sources lower ``prefetch``, then
            ``chunks_per_read``, to fit (whole chunks always: one chunk too large is read
            alone, over the budget, with a warning; see :mod:`natgrad_stream.data.budget`).
            None: the plan as requested. Iterator sources hold the items they are given.
        digests : ChunkDigests, optional
            The run's content digests (:mod:`natgrad_stream.data.digests`): each chunk
            read is compared with its recorded digest (a change is a DataError before
            its rows are delivered) or recorded. A stream started mid-way through its
            last epoch first compares the chunks that epoch read before the cursor, as it
            will not read them again (those not compared since the map was loaded).
            Iterator sources ignore it.
        """


def _validate_stream_args(batch_size, epochs, chunks_per_read, prefetch):
    for name, v in (("batch_size", batch_size), ("epochs", epochs),
                    ("chunks_per_read", chunks_per_read)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    # prefetch + 2 buffers: 0, the reader decodes the next read while the consumer takes
    # the rows of one; -1, one buffer, the next read decoded once the last one is consumed
    if int(prefetch) < -1:
        raise ValueError(f"prefetch must be >= -1, got {prefetch}")


def _bases_of(arr):
    """The arrays ``arr`` reads from: itself, or those behind a row-span view."""
    inner = getattr(arr, "arr", None)
    if inner is not None and getattr(arr, "spans", None) is not None:
        return _bases_of(inner)
    return [arr]


def _chunk_rows_of(X, chunk_rows, row_bytes: int) -> int:
    """Rows per read unit: ``chunk_rows`` if given, else the array's own chunking, else the
    default for rows of ``row_bytes`` bytes of features (:func:`default_chunk_rows`).
    """
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return int(chunk_rows)
    chunks = getattr(X, "chunks", None)
    if chunks:
        first = chunks[0]
        return int(first[0] if isinstance(first, tuple) else first)
    return default_chunk_rows(row_bytes)


class ArraySource(Source):
    """Rows of array-likes with ``shape``, ``dtype`` and basic slicing.

    Parameters
    ----------
    X : array_like, shape (n, d)
        NumPy, Zarr or dask array, float32 or float64; bool, integer and float16 features
        are converted chunk by chunk as they are read (float32 for 16 bits or fewer, else
        float64: :func:`~natgrad_stream.data.validation.compute_dtype`).
    y, w : array_like, shape (n,), optional
        Targets and sample weights (any real numeric dtype; delivered as float64).
    chunk_rows : int, optional
        Rows per read unit; defaults to the array's own chunking (Zarr, dask), else (NumPy
        and other unchunked arrays) 65,536 where that many rows hold at most
        ``DEFAULT_CHUNK_BYTES`` (60 MiB) of features in the compute dtype (float32: up to
        240 features, float64: 120), else the most rows within it in a multiple of 1,024
        (:func:`~natgrad_stream.data.budget.default_chunk_rows`), so the default read plan
        fits the default read budget. The chunks set a shuffled epoch's order (and a
        cursor's meaning), so wider in-memory data are read in another order than by
        releases that cut them into 65,536-row chunks (``chunk_rows=65536`` restores it).
    names : tuple of str
        Array names used in error messages.
    name : str
        Source name used in error messages.
    class_names : sequence of str, optional
        Names of the classes ``y`` codes (e.g. an AnnData categorical's categories).
    y_checks : sequence of Check
        Checks of ``y`` these data need (e.g. no missing category), before the model's.
    """

    def __init__(self, X, y=None, w=None, *, chunk_rows: int | None = None,
                 names=("X", "y", "w"), name: str = "arrays", class_names=None,
                 y_checks=()):
        self.name = name
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self._y_checks = tuple(y_checks)
        self.names = tuple(names)
        nx, ny, nw = self.names
        if len(getattr(X, "shape", ())) != 2:
            raise DataError(f"must be 2-D (rows × features), got shape "
                            f"{getattr(X, 'shape', None)}", array=nx)
        # the compute dtype; features stored otherwise are converted once, per chunk, as they
        # are read into the read buffer
        self.x_dtype = check_x_dtype(nx, X.dtype)
        self._x_stored = np.dtype(X.dtype)
        n, d = (int(s) for s in X.shape)
        if n == 0:
            raise DataError("is empty (0 rows)", array=nx)
        if d == 0:
            raise DataError("has no feature columns", array=nx)
        for arr, label in ((y, ny), (w, nw)):
            if arr is None:
                continue
            if len(getattr(arr, "shape", ())) != 1:
                raise DataError(f"must be 1-D, got shape {getattr(arr, 'shape', None)}",
                                array=label)
            check_target_dtype(label, arr.dtype)
            if int(arr.shape[0]) != n:
                raise DataError(f"has {arr.shape[0]} rows but {nx!r} has {n}", array=label)
        self.X, self.y, self.w = X, y, w
        self.n_rows, self.n_features = n, d
        self.has_targets, self.has_weights = y is not None, w is not None
        # the Zarr arrays read (also through row-span views), their metadata checked
        # before anything is allocated
        self._bases = [(base, label) for a, label in zip((X, y, w), self.names, strict=True)
                       if a is not None for base in _bases_of(a) if is_zarr_array(base)]
        for base, label in self._bases:
            check_zarr_layout(base, label)
        self.chunk_rows = _chunk_rows_of(X, chunk_rows, d * self.x_dtype.itemsize)
        check_plan_memory(nx, n_chunks=math.ceil(n / self.chunk_rows),
                          buffer_bytes=self.chunk_rows * self._row_bytes(), what="one chunk")
        # whole-chunk zstd decoders for Zarr arrays with the simple layout (else None), and
        # every Zarr array's chunk keys (a missing chunk is an error, not fill values)
        self._direct = {id(a): DirectChunks.for_array(a, label) if _DIRECT_ENABLED else None
                        for a, label in self._bases}
        self._stored = {id(a): StoredChunks(a, label) for a, label in self._bases}
        self._warned_budget = False  # a chunk over the read budget is logged once
        #: Chunk indices in the data this source is a window of (None: its own), for
        #: content digests (:func:`~natgrad_stream.data.window.chunk_window` sets it).
        self.chunk_index = None
        self._slots = [0] + [1] * self.has_targets + [2] * self.has_weights  # digest columns

    def _row_bytes(self) -> int:
        """Bytes of one row in a read buffer (features, float64 targets/weights, index)."""
        return (self.n_features * self.x_dtype.itemsize + 8 + 8 * self.has_targets
                + 8 * self.has_weights)

    def _read_many(self, requests) -> None:
        """Fill ``out`` with ``arr[a:b]`` for each ``(arr, a, b, out)``.

        Zarr arrays (also behind row-span views) are decoded straight into ``out``: whole
        zstd chunks of local stores by the direct decoder, the rest through zarr's public
        API with all requests issued at once, so the chunks of a read decompress
        concurrently. Either way a
        chunk missing from the store or undecodable is a :class:`DataError` located in
        this source. Other array-likes are copied one by one.
        """
        zarr_reqs, direct, convert = [], [], []
        for arr, a, b, out in requests:
            for base, a2, b2, off in _pieces(arr, a, b):
                piece = out[off:off + b2 - a2]
                if not is_zarr_array(base):
                    np.copyto(piece, np.asarray(base[a2:b2]), casting="unsafe")
                    continue
                delta = a + off - a2
                dec = self._direct.get(id(base))
                if piece.dtype == base.dtype and dec is not None and dec.covers(a2, b2):
                    direct.append((dec, a2, b2, piece, delta))
                    continue
                if piece.dtype != base.dtype:
                    convert.append((piece, np.empty(piece.shape, dtype=base.dtype)))
                    piece = convert[-1][1]
                stored = self._stored.get(id(base)) or StoredChunks(base, "array")
                zarr_reqs.append((stored, a2, b2, piece, delta))
        if direct:
            _read_direct_located(direct, self.chunk_rows)
        if zarr_reqs:
            _read_zarr_checked(zarr_reqs, self.chunk_rows)
        for out, raw in convert:
            np.copyto(out, raw, casting="unsafe")

    def _load_chunk(self, parts, decoders, span, digests=None) -> None:
        """Decode one chunk of every array straight into the read buffer (or its staging
        buffer, for features stored in another dtype), then check it (and its digests).
        """
        c, a, o, k = span
        for (_, dst, _, _, _), dec in zip(parts, decoders, strict=True):
            dec.read_into(a, a + k, dst[o:o + k])
        self._check_chunk(parts, span, digests)

    def _check_chunk(self, parts, span, digests: ChunkDigests | None = None) -> None:
        """Convert one chunk of staged parts into their read buffers, then check it; with
        ``digests``, compare every array's rows, in their stored dtype, with the run's
        content digests (or record them): a change is a DataError located in the data.
        """
        c, a, o, k = span
        stored = []
        for slot, (_, dst, label, checks, final) in zip(self._slots, parts, strict=True):
            stored.append((slot, label, dst[o:o + k]))
            if final is not None:
                np.copyto(final[o:o + k], dst[o:o + k], casting="unsafe")
                dst = final
            self._check(label, dst[o:o + k], checks, c, a)
        if digests is not None:
            g = c if self.chunk_index is None else int(self.chunk_index[c])
            digests.check(g, g * self.chunk_rows, stored)

    def _check(self, label, block, checks, chunk, row0):
        for check in checks:
            bad = check(label, block)
            if bad is not None:
                offset, message, *col = bad
                raise DataError(f"{message} (source {self.name})", array=label, chunk=chunk,
                                row=row0 + offset, column=col[0] if col else None)

    def _staging_row_bytes(self) -> int:
        """Bytes per row of a read's staging buffers (stored dtypes converted on reading)."""
        convert_x = self._x_stored != self.x_dtype
        return ((self.y.dtype.itemsize if self.has_targets else 0)
                + (self.w.dtype.itemsize if self.has_weights else 0)
                + (self.n_features * self._x_stored.itemsize if convert_x else 0) + 8)

    def plan_bytes(self, chunks_per_read: int, prefetch: int, batch_size: int,
                   shuffle: bool) -> int:
        """Bytes of a stream's buffers for a plan: ``prefetch + 2`` read buffers of
        ``read_rows = min(chunk_rows × chunks_per_read, n_rows)`` rows (features in the
        compute dtype, float64 targets/weights, int64 row indices), one read's staging
        buffers, and the shuffled stream's ``(min(batch_size, read_rows), d)`` batch buffer.
        """
        read_rows = min(self.chunk_rows * int(chunks_per_read), self.n_rows)
        batch_rows = min(int(batch_size), read_rows) if shuffle else 0
        return ((int(prefetch) + 2) * read_rows * self._row_bytes()
                + read_rows * self._staging_row_bytes()
                + batch_rows * self.n_features * self.x_dtype.itemsize)

    def read_plan(self, *, chunks_per_read: int = 2, prefetch: int = 2,
                  batch_size: int = DEFAULT_BATCH_SIZE, shuffle: bool = True,
                  read_buffer_bytes: int | None = DEFAULT_READ_BUFFER_BYTES) -> ReadPlan:
        """The reads a stream with these arguments makes within ``read_buffer_bytes``
        (:func:`~natgrad_stream.data.budget.plan_reads`: prefetch lowered first, then
        chunks per read; whole chunks always).
        """
        return plan_reads(functools.partial(self._plan_bytes_kp, batch_size, shuffle),
                          chunks_per_read, prefetch, read_buffer_bytes)

    def _plan_bytes_kp(self, batch_size, shuffle, chunks_per_read, prefetch) -> int:
        return self.plan_bytes(chunks_per_read, prefetch, batch_size, shuffle)

    def _settle_plan(self, chunks_per_read, prefetch, batch_size, shuffle,
                     read_buffer_bytes) -> ReadPlan:
        """:meth:`read_plan`, warning once per source when one chunk exceeds the budget."""
        plan = self.read_plan(chunks_per_read=chunks_per_read, prefetch=prefetch,
                              batch_size=batch_size, shuffle=shuffle,
                              read_buffer_bytes=read_buffer_bytes)
        if plan.over_budget and not self._warned_budget:
            self._warned_budget = True
            chunk = min(self.chunk_rows, self.n_rows) * self._row_bytes()
            warn_over_budget(plan, read_buffer_bytes, chunk, self.name)
        return plan

    def batches(self, *, batch_size, epochs=1, seed=0, shuffle=True, start=None,
                chunks_per_read=2, prefetch=2, checks=(), x_checks=(),
                read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES, digests=None):
        _validate_stream_args(batch_size, epochs, chunks_per_read, prefetch)
        start = start or Cursor()
        if digests is not None:
            digests.bind(self.chunk_rows, self.names[0])
        plan = self._settle_plan(chunks_per_read, prefetch, batch_size, shuffle,
                                 read_buffer_bytes)
        chunks_per_read, prefetch = plan.chunks_per_read, plan.prefetch
        R, n, d = self.chunk_rows, self.n_rows, self.n_features
        read_rows = min(R * chunks_per_read, n)  # a read never holds more than the data
        nx, ny, nw = self.names
        x_all = (check_finite, *x_checks)
        y_checks = (check_finite, *self._y_checks, *checks)
        w_checks = (check_finite, check_nonnegative)

        convert_x = self._x_stored != self.x_dtype
        batch_rows = min(int(batch_size), read_rows)  # batches never straddle reads
        check_plan_memory(nx, n_chunks=math.ceil(n / R), buffer_bytes=plan.nbytes,
                          what=f"{prefetch + 2} read buffers of {read_rows:,} rows")

        def buffers():
            return {"X": np.empty((read_rows, d), dtype=self.x_dtype),
                    "y": np.empty(read_rows) if self.has_targets else None,
                    "w": np.empty(read_rows) if self.has_weights else None,
                    "rows": np.empty(read_rows, dtype=np.int64)}

        # Targets and weights are decoded in their stored dtype, then converted to float64.
        raw_y = np.empty(read_rows, dtype=self.y.dtype) if self.has_targets else None
        raw_w = np.empty(read_rows, dtype=self.w.dtype) if self.has_weights else None
        # Features stored in another dtype are decoded into a staging buffer in that dtype
        # (the direct zstd decoder writes stored bytes) and converted chunk by chunk.
        raw_x = np.empty((read_rows, d), dtype=self._x_stored) if convert_x else None
        free: queue.Queue = queue.Queue()
        for _ in range(int(prefetch) + 2):
            free.put(buffers())
        batch_X = np.empty((batch_rows, d), dtype=self.x_dtype) if shuffle else None

        def acquire(stream):
            while True:
                try:
                    return free.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if stream.stopping:
                        raise _Stop from None

        def load(plan_chunks, stream):
            """Read and check one read's chunks, in plan order, into a pooled buffer."""
            buf = acquire(stream)
            try:
                spans, requests, m = [], [], 0
                parts = [(self.X, buf["X"], nx, x_all, None) if raw_x is None
                         else (self.X, raw_x, nx, x_all, buf["X"])]
                if self.has_targets:
                    parts.append((self.y, raw_y, ny, y_checks, None))
                if self.has_weights:
                    parts.append((self.w, raw_w, nw, w_checks, None))
                for c in plan_chunks:
                    c = int(c)
                    a, b = c * R, min((c + 1) * R, n)
                    k = b - a
                    spans.append((c, a, m, k))
                    requests += [(arr, a, b, dst[m:m + k]) for arr, dst, _, _, _ in parts]
                    buf["rows"][m:m + k] = np.arange(a, b)
                    m += k
                direct = [self._direct.get(id(arr)) for arr, _, _, _, _ in parts]
                if all(d is not None and d.covers(a, a + k) for d in direct
                       for _, a, _, k in spans):
                    # one pooled task per chunk: read, decode in place, check; the first
                    # failure in chunk (= row) order is raised
                    run_in_order([functools.partial(self._load_chunk, parts, direct, span,
                                                    digests) for span in spans])
                else:
                    self._read_many(requests)
                    for span in spans:  # in row order, so the first bad row is reported
                        self._check_chunk(parts, span, digests)
                if self.has_targets:
                    np.copyto(buf["y"][:m], raw_y[:m], casting="unsafe")
                if self.has_weights:
                    np.copyto(buf["w"][:m], raw_w[:m], casting="unsafe")
            except BaseException:
                free.put(buf)
                raise
            return buf, m

        def produce(stream):
            samples = start.samples
            k = int(chunks_per_read)
            if digests is not None and start.read_index and start.epoch == int(epochs) - 1:
                # the epoch's reads before the cursor are not read again: compare them now
                done = _chunk_order(math.ceil(n / R), seed, start.epoch, shuffle)
                done = [c for c in done[:start.read_index * k] if digests.unverified(
                    c if self.chunk_index is None else int(self.chunk_index[c]))]
                for i in range(0, len(done), k):
                    free.put(load(done[i:i + k], stream)[0])
            for epoch in range(start.epoch, int(epochs)):
                order = _chunk_order(math.ceil(n / R), seed, epoch, shuffle)  # = epoch_plan
                n_reads = math.ceil(len(order) / k)
                first = start.read_index if epoch == start.epoch else 0
                for read_index in range(first, n_reads):
                    buf, m = load(order[read_index * k:(read_index + 1) * k], stream)
                    perm = read_permutation(m, seed, epoch, read_index) if shuffle else None
                    row0 = start.row if (epoch == start.epoch and read_index == first) else 0
                    last_read = read_index == n_reads - 1
                    stream.put(("read", _read_batches(buf, m, perm, row0, epoch, read_index,
                                                      last_read, samples)))
                    samples += m - row0

        def _read_batches(buf, m, perm, row0, epoch, read_index, last_read, samples):
            def gen():
                s = samples
                try:
                    for a in range(row0, m, int(batch_size)):
                        b = min(a + int(batch_size), m)
                        s += b - a
                        cur = batch_cursor(epoch, read_index, b, m, last_read, s)
                        if perm is None:
                            idx = slice(a, b)
                            X = buf["X"][a:b]
                        else:  # gather this batch's rows into the reused batch buffer
                            idx = perm[a:b]
                            X = batch_X[:b - a]
                            gather_rows(buf["X"], idx, X)
                        yield Batch(X, None if buf["y"] is None else buf["y"][idx],
                                    None if buf["w"] is None else buf["w"][idx],
                                    buf["rows"][idx], cur)
                finally:
                    free.put(buf)
            return gen

        n_reads = math.ceil(math.ceil(n / R) / int(chunks_per_read))
        single_read = int(epochs) - start.epoch == 1 and n_reads == 1 and not start.read_index
        return BatchStream(produce, depth=int(prefetch), start=start, name=self.name,
                           inline=single_read)


class IteratorSource(Source):
    """Batches pushed by any iterable: items ``X``, ``(X,)``, ``(X, y)`` or ``(X, y, w)``.

    ``X`` may be sparse (any SciPy format, or :class:`~natgrad_stream.data.sparse.
    SparseRows`): batches then carry :class:`SparseRows` (column indices and values
    checked).

    Items are validated (dtype, shape, finiteness) and split into pieces of at most
    ``batch_size`` rows. An iterator cannot rewind: a stream runs one epoch, without
    shuffling, and ``start`` only continues the sample count.

    A callable that returns a new iterable of items each time (a generator function, a
    function opening a reader) is *re-iterable*: it is called once to learn the features,
    then once per epoch, so a stream runs any number of epochs, each in the order the
    callable yields its items (shuffle them there, e.g. keyed by the epoch's count of
    calls); ``start`` resumes mid-epoch by skipping the items and rows before it, exactly
    when the callable yields the same items again.
    """

    def __init__(self, iterable: Iterable, *, n_features: int | None = None,
                 name: str = "iterator"):
        #: The callable behind a re-iterable source (None: a one-shot iterable).
        self.factory = iterable if callable(iterable) and not isinstance(
            iterable, Iterable) else None
        self._it = iter(iterable() if self.factory is not None else iterable)
        self.name = name
        self._first = None
        self.n_rows = None
        if n_features is None:
            self._first = next(self._it, None)
            if self._first is None:
                raise DataError("is empty: it yielded no batch", array=name)
            X0 = self._unpack(self._first, 0)[0]
            n_features = X0.shape[1]
            self.x_dtype = check_x_dtype(f"{name} batch 0 X", X0.dtype)
            self.has_targets = self._unpack(self._first, 0)[1] is not None
            self.has_weights = self._unpack(self._first, 0)[2] is not None
        else:
            self.has_targets, self.has_weights = True, False
        self.n_features = int(n_features)

    def _unpack(self, item, index):
        parts = item if isinstance(item, tuple | list) else (item,)
        if not 1 <= len(parts) <= 3:
            raise DataError(f"batch {index} has {len(parts)} parts; expected X, (X, y) or "
                            "(X, y, w)", array=self.name)
        X = as_sparse_rows(parts[0]) if is_sparse(parts[0]) else np.asarray(parts[0])
        y = np.asarray(parts[1]) if len(parts) > 1 and parts[1] is not None else None
        w = np.asarray(parts[2]) if len(parts) > 2 and parts[2] is not None else None
        if X.ndim != 2:
            raise DataError(f"batch {index}: X must be 2-D, got shape {X.shape}",
                            array=self.name)
        check_x_dtype(f"{self.name} batch {index} X", X.dtype)
        for arr, label in ((y, "y"), (w, "w")):
            if arr is None:
                continue
            check_target_dtype(f"{self.name} batch {index} {label}", arr.dtype)
            if arr.ndim != 1 or arr.shape[0] != X.shape[0]:
                raise DataError(f"batch {index}: {label} has shape {arr.shape}, expected "
                                f"({X.shape[0]},)", array=self.name)
        return X, y, w

    def batches(self, *, batch_size, epochs=1, seed=0, shuffle=True, start=None,
                chunks_per_read=2, prefetch=2, checks=(), x_checks=(),
                read_buffer_bytes=None, digests=None):
        _validate_stream_args(batch_size, epochs, chunks_per_read, prefetch)
        if self.factory is not None:
            return self._epochs(batch_size, int(epochs), start or Cursor(), prefetch, checks,
                                x_checks)
        if int(epochs) != 1 and (start is None or start.epoch == 0):
            raise ValueError("an iterator source can be streamed for one epoch only (a "
                             "callable returning a new iterator each time is re-iterable)")
        start = start or Cursor()
        items = self._it if self._first is None else itertools.chain([self._first], self._it)
        self._first = None

        def produce(stream):
            self._deliver(stream, enumerate(items, start=start.read_index), start.samples,
                          batch_size, checks, x_checks, epoch=0)

        return BatchStream(produce, depth=int(prefetch), start=start, name=self.name)

    def _epochs(self, batch_size, epochs, start, prefetch, checks, x_checks) -> BatchStream:
        """Epochs ``start.epoch … epochs − 1`` of a re-iterable source: the callable is
        called for each; the items and rows before ``start`` are skipped.
        """
        self._it = self._first = None

        def produce(stream):
            samples = start.samples
            for epoch in range(start.epoch, epochs):
                items = enumerate(iter(self.factory()))
                skip_rows = 0
                if epoch == start.epoch:
                    items = itertools.islice(items, start.read_index, None)
                    skip_rows = start.row
                samples = self._deliver(stream, items, samples, batch_size, checks,
                                        x_checks, epoch=epoch, skip_rows=skip_rows)

        return BatchStream(produce, depth=int(prefetch), start=start, name=self.name)

    def _deliver(self, stream, items, samples, batch_size, checks, x_checks, *, epoch,
                 skip_rows=0) -> int:
        """Check and hand over the ``(index, item)`` pairs of one epoch as batches (the
        first item's first ``skip_rows`` rows skipped); returns the samples delivered.
        """
        for index, item in items:
            X, y, w = self._unpack(item, index)
            if X.shape[1] != self.n_features:
                raise DataError(f"batch {index} has {X.shape[1]} features, expected "
                                f"{self.n_features}", array=self.name)
            sparse_x = isinstance(X, SparseRows)  # canonical already; checked entries
            if sparse_x:
                from natgrad_stream.data.csr_store import check_sparse_rows

                x_cks = (functools.partial(check_sparse_rows, checks=x_checks),)
            else:  # integer, bool and float16 features: converted to their compute dtype
                X = np.ascontiguousarray(
                    X, dtype=check_x_dtype(f"{self.name} batch {index} X", X.dtype))
                x_cks = (check_finite, *x_checks)
            for label, arr, cks in (("X", X, x_cks),
                                    ("y", y, (check_finite, *checks)),
                                    ("w", w, (check_finite, check_nonnegative))):
                if arr is None:
                    continue
                for check in cks:
                    bad = check(label, arr)
                    if bad is not None:
                        where = f" column {bad[2]}" if len(bad) > 2 else ""
                        raise DataError(f"batch {index} row {bad[0]}{where}: {bad[1]}",
                                        array=f"{self.name}.{label}")
            yf = None if y is None else y.astype(np.float64)
            wf = None if w is None else w.astype(np.float64)
            first, skip_rows = skip_rows, 0
            for a in range(first, X.shape[0], int(batch_size)):
                b = min(a + int(batch_size), X.shape[0])
                samples += b - a
                cur = Cursor(epoch, index + (b == X.shape[0]),
                             0 if b == X.shape[0] else b, samples)
                batch = Batch(X.rows_slice(a, b) if sparse_x else X[a:b],
                              None if yf is None else yf[a:b],
                              None if wf is None else wf[a:b],
                              np.full(b - a, -1, dtype=np.int64), cur)
                stream.put(("read", (lambda bt=batch: iter((bt,)))))
        return samples


# -- constructors --------------------------------------------------------------------------------
def _open_group(data):
    """``(group, label)`` of what :func:`open_zarr` accepts, opened read-only."""
    import zarr
    from zarr.abc.store import Store

    if isinstance(data, zarr.Group):
        return data, str(getattr(data.store, "root", None) or data.store)
    if isinstance(data, Store):
        store, label = data, str(getattr(data, "root", None) or getattr(data, "path", None)
                                 or data)
        if not store.read_only and hasattr(store, "with_read_only"):
            store = store.with_read_only(True)
    elif isinstance(data, str | os.PathLike):
        label = os.fspath(data)
        if "://" in label:  # an fsspec URL (its protocol's package must be installed)
            store = label
        elif not Path(label).exists():
            raise DataError(f"no Zarr group at {label}")
        elif Path(label).is_file():  # a zip archive of a store
            import zipfile

            from zarr.storage import ZipStore

            if not zipfile.is_zipfile(label):
                raise DataError(f"{label} is a file but not a zip archive of a Zarr group")
            store = ZipStore(label, mode="r")
        else:
            check_zarr_metadata(label)  # a FIFO or device would hang zarr's read
            store = label
    else:  # pragma: no cover - callers check the type
        raise TypeError(f"cannot open a Zarr group from {type(data).__name__}")
    try:
        group = zarr.open_group(store, mode="r")
    except ImportError as exc:
        raise DataError(f"{label} needs a package that is not installed to be read "
                        f"({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 (e.g. a group zarr.json that is a JSON list)
        raise DataError(f"{label} is not a readable Zarr group: {exc}") from exc
    return group, label


def zarr_member(group, name: str):
    """``group[name]``, None when absent; a member whose metadata zarr cannot read is a
    :class:`DataError` naming it (zarr refuses bad metadata in many ways: unknown codecs,
    wrong types, extra fields, text that is not UTF-8, ...).
    """
    try:
        return group[name]
    except MemoryError:
        raise
    except KeyError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"has metadata zarr cannot read ({type(exc).__name__}: {exc})",
                        array=name) from exc


def _array_paths(group) -> list[str]:
    """Paths of every array in ``group``, nested ones too (``"train/X"``)."""
    try:
        return sorted(name for name, member in group.members(max_depth=None)
                      if not hasattr(member, "members"))
    except Exception:  # noqa: BLE001 (a listing for a message only)
        return sorted(group.array_keys())


def open_zarr(path_or_group, *, x: str = "X", y: str | None = "y",
              w: str | None = None) -> Source:
    """Open arrays of a Zarr group (read-only) as a chunk-aligned :class:`ArraySource`, or a
    :class:`~natgrad_stream.data.sparse_source.SparseSource` when ``x`` is a sparse matrix
    group (the AnnData ``csr_matrix`` layout).

    Parameters
    ----------
    path_or_group : path-like, str, zarr.Group or zarr store
        A directory, a ``.zip`` archive of a store (read through ``zarr.storage.ZipStore``),
        an fsspec URL (``"s3://…"``, ``"memory://…"``: its protocol's package must be
        installed), a group, or a store object (``MemoryStore``, ``ZipStore``,
        ``FsspecStore``, …; opened read-only).
    x, y, w : str
        Member paths in the group; nested paths such as ``"train/X"`` name arrays of
        subgroups. ``x`` may name a CSR group (``X``, ``layers/counts`` of an AnnData
        store) and ``y`` an AnnData categorical column (``obs/cell_type``: its codes are
        the targets, its categories the source's ``class_names``).

    Raises
    ------
    DataError
        When the group or a named array is missing (the message lists what is there), or
        shapes are wrong or empty.
    TypeError
        When ``X`` is not a real numeric dtype (bool, integer or float; see
        :func:`~natgrad_stream.data.validation.check_x_dtype`) or ``y``/``w`` are not real
        numbers.
    """
    from natgrad_stream.data.anndata_store import categorical_target, is_categorical
    from natgrad_stream.data.csr_store import is_csr_group, open_csr_group
    from natgrad_stream.data.sparse_source import SparseSource

    group, label = _open_group(path_or_group)

    def get(name):
        arr = zarr_member(group, name)
        if arr is None or not is_zarr_array(arr):
            raise DataError(f"not found in {label}; it holds arrays {_array_paths(group)}",
                            array=name)
        check_zarr_layout(arr, name)
        return arr

    def target(name):
        member = zarr_member(group, name)
        if is_categorical(member):
            return categorical_target(member, name)
        return get(name), None, ()

    x_member = zarr_member(group, x)
    sparse = is_csr_group(x_member)
    X = open_csr_group(x_member, x) if sparse else get(x)
    Y, class_names, y_checks = target(y) if y is not None else (None, None, ())
    W = get(w) if w is not None else None
    kind = SparseSource if sparse else ArraySource
    source = kind(X, Y, W, names=(x, y or "y", w or "w"),
                  name=os.path.basename(label.rstrip("/")) or label, class_names=class_names,
                  y_checks=y_checks)
    record = group.attrs.get("natgrad_stream")
    columns = record.get("columns") if isinstance(record, dict) and x == "X" else None
    if isinstance(columns, list) and len(columns) == source.n_features:
        source.feature_names = [str(c) for c in columns]  # a converted table's columns
    return source


#: What :func:`as_source` accepts, for its TypeError.
ACCEPTED_KINDS = (
    "a Source; a path or URL of a Zarr group (a directory, a .zip archive, an fsspec URL); "
    "a zarr Group or store; an array (NumPy, Zarr, dask, SciPy sparse) or a tuple (X, y[, w]) "
    "of arrays, "
    "pandas DataFrame/Series or xarray DataArrays; a pandas DataFrame; an xarray Dataset "
    "(variables named by x=, y=, w=) or DataArray; a Parquet file or directory, a CSV or .npy "
    "file, a pyarrow Table, Dataset or RecordBatchReader, a HuggingFace Dataset; an iterable "
    "of batches X, (X, y) or (X, y, w), or a callable returning one (re-iterable)")


def _module_type(data, module: str, *names: str) -> bool:
    """``isinstance(data, module.name)`` for any of ``names``, without importing ``module``."""
    import sys

    mod = sys.modules.get(module)
    return mod is not None and isinstance(data, tuple(getattr(mod, n) for n in names))


def _xarray_array(da):
    """An array-like of a DataArray's values, read slice by slice: its dask array, its NumPy
    values when in memory, else the DataArray itself (slices load lazily from its store).
    """
    if da.chunks is not None:  # dask-backed
        return da.data
    if getattr(da.variable, "_in_memory", False):
        return da.values  # no copy for NumPy data
    return da


def _plain_array(part):
    """A pandas or xarray object as an array-like :class:`ArraySource` reads; else itself."""
    if _module_type(part, "pandas", "DataFrame", "Series"):
        return part.to_numpy()  # in memory already: a view when the columns share a dtype
    if _module_type(part, "xarray", "DataArray"):
        return _xarray_array(part)
    return part


def _stored_chunk_rows(X):
    """Rows per chunk of a lazily read xarray variable, from its encoding (else None)."""
    if not _module_type(X, "xarray", "DataArray"):
        return None
    chunks = X.encoding.get("chunks") or X.encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = chunks.get(X.dims[0])
        return int(chunks) if chunks else None
    return int(chunks[0]) if chunks else None


def _dataset_source(ds, x, y, w) -> ArraySource:
    def get(name):
        if name not in ds.variables:
            raise DataError(f"not found in the xarray Dataset; it holds variables "
                            f"{sorted(map(str, ds.variables))}", array=name)
        return _xarray_array(ds[name])

    X = get(x)
    return ArraySource(X, get(y) if y is not None else None, get(w) if w is not None else None,
                       chunk_rows=_stored_chunk_rows(X), names=(x, y or "y", w or "w"),
                       name="dataset")


def as_source(data, *, x: str = "X", y: str | None = "y", w: str | None = None,
              exclude=()) -> Source:
    """Turn what a user passes into a :class:`Source`.

    ``Source`` → itself; a table (a Parquet file or directory, a CSV or ``.npy`` file, a
    pyarrow ``Table`` or ``Dataset``, a HuggingFace ``Dataset``) →
    :func:`~natgrad_stream.data.tables.open_table` (``x`` names its columns); path, URL,
    ``zarr.Group`` or zarr store → :func:`open_zarr`; xarray
    ``Dataset`` → its variables ``x``, ``y``, ``w``; a SciPy sparse matrix or array (any
    format), alone or first in a tuple ``(X, y[, w])`` →
    :class:`~natgrad_stream.data.sparse_source.SparseSource` (converted to CSR once);
    tuple ``(X, y[, w])`` or a 2-D array
    (NumPy, Zarr, dask, pandas ``DataFrame``, xarray ``DataArray``) → :class:`ArraySource`,
    read chunk by chunk (dask and lazily loaded xarray data are never materialized whole);
    a ``pyarrow.RecordBatchReader`` or any other iterable → :class:`IteratorSource` (one
    epoch); a callable returning one → a re-iterable :class:`IteratorSource` (an epoch a
    call). ``exclude``: columns a table's default ``x`` leaves out besides ``y`` and ``w``.

    Raises
    ------
    TypeError
        For any other kind of object (the message lists the accepted kinds).
    """
    if isinstance(data, Source):
        return data
    from natgrad_stream.data import tables

    if tables.is_table_path(data) or tables.is_table_object(data):
        return tables.open_table(data, x=x, y=y, w=w, exclude=exclude)
    if isinstance(data, str | os.PathLike):
        return open_zarr(data, x=x, y=y, w=w)
    try:
        import zarr
        from zarr.abc.store import Store

        if isinstance(data, zarr.Group | Store):
            return open_zarr(data, x=x, y=y, w=w)
    except ImportError:  # pragma: no cover
        pass
    if _module_type(data, "xarray", "Dataset"):
        return _dataset_source(data, x, y, w)
    from natgrad_stream.data.hashing import is_hashable_table
    from natgrad_stream.data.sparse import is_sparse

    first = data[0] if isinstance(data, tuple) and data else data
    if is_hashable_table(first):
        bad = [str(c) for c in first.columns if first[c].dtype.kind not in "biuf"]
        raise TypeError(f"the DataFrame's columns {bad[:5]} are not numeric: encode them "
                        "first, e.g. natgrad_stream.data.hashing.hash_columns(df, bits) "
                        "(sparse hashed columns) or scikit-learn's OneHotEncoder (sparse "
                        "one-hot columns); both stream as sparse rows")
    if isinstance(data, tuple) and 1 <= len(data) <= 3 and is_sparse(data[0]):
        from natgrad_stream.data.sparse_source import SparseSource

        parts = [_plain_array(p) for p in data[1:]] + [None] * (3 - len(data))
        return SparseSource(data[0], parts[0] if y is not None else None, parts[1],
                            names=(x, y or "y", w or "w"))
    if is_sparse(data):
        from natgrad_stream.data.sparse_source import SparseSource

        return SparseSource(data, names=(x, y or "y", w or "w"))
    if isinstance(data, tuple) and 1 <= len(data) <= 3:
        parts = [_plain_array(p) for p in data]
        if hasattr(parts[0], "shape"):
            parts += [None] * (3 - len(parts))
            source = ArraySource(parts[0], parts[1] if y is not None else None, parts[2],
                                 chunk_rows=_stored_chunk_rows(parts[0]),
                                 names=(x, y or "y", w or "w"))
            if _module_type(data[0], "pandas", "DataFrame"):  # its columns name the features
                source.feature_names = [c if isinstance(c, str) else f"x{c}"
                                        for c in data[0].columns]
            return source
    plain = _plain_array(data)
    if hasattr(plain, "shape") and hasattr(plain, "dtype"):
        return ArraySource(plain, chunk_rows=_stored_chunk_rows(plain),
                           names=(x, y or "y", w or "w"))
    from collections.abc import Mapping

    if tables.is_record_batch_reader(data):  # one pass, as any iterator
        return IteratorSource(tables.arrow_items(data, x, y, w), name="record batches")
    if callable(data) and not isinstance(data, Iterable):  # re-iterable: one call an epoch
        return IteratorSource(functools.partial(tables.reiterable_items, data, x, y, w),
                              name=getattr(data, "__name__", "callable"))
    if isinstance(data, Iterable) and not isinstance(data, Mapping | bytes | set | frozenset):
        return IteratorSource(data)
    raise TypeError(f"cannot stream data of type {type(data).__module__}."
                    f"{type(data).__qualname__}; expected {ACCEPTED_KINDS}")
