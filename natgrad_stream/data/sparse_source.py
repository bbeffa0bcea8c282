"""Sparse rows streamed like dense ones: :class:`SparseSource` over SciPy matrices and CSR
groups on Zarr (the AnnData ``csr_matrix`` layout of :mod:`natgrad_stream.data.csr_store`).

The rows are cut into *logical chunks* of ``chunk_rows`` rows (recorded by the writers
under the group attribute ``natgrad_stream.chunk_rows``); a logical chunk reads
``indptr[a:b+1]``, then ``data[p:q]`` and ``indices[p:q]`` through the checked Zarr read
path (or the direct zstd reader when they are one whole stored chunk), so a chunk missing
from the store is a :class:`~natgrad_stream.errors.DataError`, never fill values.

Plans, row order and cursors are those of :class:`~natgrad_stream.data.stream.ArraySource`
(chunk order by :func:`~natgrad_stream.data.stream.epoch_plan`, reads of
``chunks_per_read`` chunks, :func:`~natgrad_stream.data.stream.read_permutation` within a
read), so the same seed gives the same rows in the same batches as dense data of the same
chunking, and a cursor resumes exactly. Read buffers are sized by rows and by entries: the
source learns each logical chunk's entry count from ``indptr`` when it is opened (8 bytes
a row, read once), and a plan within ``read_buffer_bytes`` holds the ``chunks_per_read``
largest chunks.

A shuffled stream permutes each read beside the learner: the reader thread reads the
chunks into one of two staging buffers, and a permuting thread copies their rows in the
read's permuted order into the pooled buffer that is queued while the next read is
decoded into the other, so the consumer's batches are views of consecutive rows (the
shuffled gather, about 0.5–1 µs a row at 50 non-zeros, is off the learner's thread and
overlaps the decoding). The staging buffers are two more read buffers, counted in the
plan's bytes.
"""

from __future__ import annotations

import copy
import functools
import math
import queue
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from natgrad_stream._constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_READ_BUFFER_BYTES,
)
from natgrad_stream.data._sparse_kernels import permute_csr_rows
from natgrad_stream.data.budget import default_chunk_rows, plan_reads, warn_over_budget
from natgrad_stream.data.csr_store import (
    CSRArrays,
    check_entries,
    check_indptr,
    locate_read_error,
    rows_digest_block,
)
from natgrad_stream.data.digests import ChunkDigests, chunk_digest
from natgrad_stream.data.metadata import (
    StoredChunks,
    check_plan_memory,
    check_zarr_layout,
    is_zarr_array,
)
from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.data.stream import (
    _POLL_SECONDS,
    Batch,
    BatchStream,
    Cursor,
    Source,
    _chunk_order,
    _read_zarr_checked,
    _Stop,
    _validate_stream_args,
    batch_cursor,
    read_permutation,
)
from natgrad_stream.data.validation import (
    check_finite,
    check_nonnegative,
    check_target_dtype,
    compute_dtype,
)
from natgrad_stream.errors import DataError

#: Entries of ``indptr`` read at once when a source learns its chunks' entry counts.
_SCAN_ENTRIES = 1 << 20


class SparseSource(Source):
    """Rows of a CSR matrix (in memory or a Zarr group) with optional targets and weights.

    Batches carry ``X`` as :class:`~natgrad_stream.data.sparse.SparseRows` (canonical
    dtypes); everything else (plans, order, cursors, prefetch, budgets, checks, digests)
    is as for :class:`~natgrad_stream.data.stream.ArraySource`.

    Parameters
    ----------
    X : scipy.sparse matrix or array (any format), SparseRows, or CSRArrays
        SciPy input is converted to CSR once; a :class:`CSRArrays` (e.g. from
        :func:`open_csr_group`) is read chunk by chunk.
    y, w : array_like, shape (n,), optional
        Targets and sample weights (NumPy or Zarr; delivered as float64).
    chunk_rows : int, optional
        Rows per logical chunk. Default: the writer's recorded value, else 65,536 where
        that many rows hold at most ``DEFAULT_CHUNK_BYTES`` of entries on average (values
        in the compute dtype, int32 indices), else the most rows within it in a multiple
        of 1,024 (:func:`~natgrad_stream.data.budget.default_chunk_rows`).
    names : tuple of str
        Names of X, y, w in messages (X's arrays are ``X/data``, ``X/indices``,
        ``X/indptr``).
    name : str
        Source name in messages.
    class_names : sequence of str, optional
        Names of the classes ``y`` codes (e.g. an AnnData categorical's categories).
    y_checks : sequence of Check
        Checks of ``y`` this source's data need (e.g. no missing category).

    Attributes
    ----------
    chunk_entries : ndarray, shape (n_chunks,)
        Entries (non-zeros) of each logical chunk, from ``indptr`` when opened.
    """

    def __init__(self, X, y=None, w=None, *, chunk_rows: int | None = None,
                 names=("X", "y", "w"), name: str = "sparse", class_names=None,
                 y_checks=()):
        self.name = name
        self.names = tuple(names)
        nx, ny, nw = self.names
        if isinstance(X, SparseRows):
            X = X.compact()
            X = CSRArrays(X.data, X.indices, X.indptr, X.shape, nx)
        elif not isinstance(X, CSRArrays):
            X = CSRArrays.from_scipy(X, nx)
        self.csr = X
        n, d = X.shape
        if n == 0:
            raise DataError("is empty (0 rows)", array=nx)
        if d == 0:
            raise DataError("has no feature columns", array=nx)
        self.x_dtype = compute_dtype(X.data.dtype)
        self._data_stored = np.dtype(X.data.dtype)
        self._idx_stored = np.dtype(X.indices.dtype)
        for arr, label in ((y, ny), (w, nw)):
            if arr is None:
                continue
            if len(getattr(arr, "shape", ())) != 1:
                raise DataError(f"must be 1-D, got shape {getattr(arr, 'shape', None)}",
                                array=label)
            check_target_dtype(label, arr.dtype)
            if int(arr.shape[0]) != n:
                raise DataError(f"has {arr.shape[0]} rows but {nx!r} has {n}", array=label)
            if is_zarr_array(arr):
                check_zarr_layout(arr, label)
        self.y, self.w = y, w
        self._yw_stored = {label: StoredChunks(a, label) for a, label in ((y, ny), (w, nw))
                           if a is not None and is_zarr_array(a)}
        self.n_rows, self.n_features = n, d
        self.has_targets, self.has_weights = y is not None, w is not None
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self._y_checks = tuple(y_checks)
        self.chunk_rows = self._default_chunk_rows(chunk_rows)
        self.chunk_entries = self._scan_entries()
        self._by_size = np.cumsum(np.sort(self.chunk_entries)[::-1])
        self._warned_budget = False
        #: Chunk indices in the data this source is a window of (None: its own), as
        #: :class:`ArraySource`'s; rows of the data it reads (a prefix reads fewer).
        self.chunk_index = None
        self._data_rows = n
        #: Checked chunks kept in memory when the whole data fit the read budget
        #: (:meth:`_keep_resident`): chunk of the data -> its buffer contents.
        self._resident: dict | None = None
        self._resident_digests: dict = {}  # chunk -> (row0, rows, [(slot, label, digest)])
        self._resident_key = None

    # -- chunks ----------------------------------------------------------------------------
    def _default_chunk_rows(self, chunk_rows) -> int:
        if chunk_rows is not None:
            if int(chunk_rows) < 1:
                raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
            return int(chunk_rows)
        if self.csr.chunk_rows is not None:
            return int(self.csr.chunk_rows)
        last = np.empty(1, dtype=self.csr.indptr.dtype)
        self.csr.read([(2, self.n_rows, self.n_rows + 1, last)])
        per_row = max(0, int(last[0])) / self.n_rows * (self.x_dtype.itemsize + 4)
        return default_chunk_rows(max(1, math.ceil(per_row)), DEFAULT_CHUNK_BYTES)

    def _scan_entries(self) -> np.ndarray:
        """Entries of each logical chunk: ``indptr`` at the chunk boundaries (read once,
        a block at a time; negative counts of a damaged ``indptr`` count as 0 here and are
        refused when the chunk is read).
        """
        n, R = self.n_rows, self.chunk_rows
        n_chunks = math.ceil(n / R)
        check_plan_memory(self.names[0], n_chunks=2 * n_chunks)
        at = np.minimum(np.arange(n_chunks + 1, dtype=np.int64) * R, n)
        bounds = np.empty(n_chunks + 1, dtype=np.int64)
        if self.csr.stored[2] is None:
            bounds[:] = self.csr.indptr[at]
        else:
            step = max(_SCAN_ENTRIES // R * R, R)
            for s in range(0, n + 1, step):
                e = min(s + step, n + 1)
                block = np.empty(e - s, dtype=self.csr.indptr.dtype)
                try:
                    self.csr.read([(2, s, e, block)])
                except DataError as exc:
                    raise locate_read_error(exc, (), R, False) from exc
                sel = (at >= s) & (at < e)
                bounds[sel] = block[at[sel] - s]
        self._bounds = bounds
        return np.clip(np.diff(bounds), 0, self.csr.n_entries)

    # -- windows -------------------------------------------------------------------------
    def _sized(self, entries: np.ndarray) -> None:
        self.chunk_entries = entries
        self._by_size = np.cumsum(np.sort(entries)[::-1])
        self._warned_budget = False

    def chunk_window(self, chunks) -> SparseSource:
        """The chunks ``chunks`` (sorted) of this source as one source (the sparse
        counterpart of :func:`~natgrad_stream.data.window.chunk_window`): rows numbered
        within the window, digests and ``chunk_index`` by the data's chunks.
        """
        chunks = np.asarray(chunks, dtype=np.int64)
        R = self.chunk_rows
        window = copy.copy(self)
        window.chunk_index = chunks if self.chunk_index is None else self.chunk_index[chunks]
        window.name = f"{self.name} window"
        window.n_rows = int(sum(min((int(g) + 1) * R, self._data_rows) - int(g) * R
                                for g in window.chunk_index))
        window._sized(self.chunk_entries[chunks])
        return window

    def row_prefix(self, n_rows: int) -> SparseSource:
        """The first ``n_rows`` rows as one source with the same chunks (the sparse
        counterpart of :func:`~natgrad_stream.data.window.row_prefix`).
        """
        if not 0 < n_rows <= self.n_rows:
            raise ValueError(f"a prefix of {n_rows} rows of {self.n_rows}")
        if self.chunk_index is not None:
            raise ValueError("a prefix of a window of chunks is not supported")
        n_chunks = math.ceil(n_rows / self.chunk_rows)
        prefix = copy.copy(self)
        prefix.n_rows = prefix._data_rows = int(n_rows)
        end = np.empty(1, dtype=self.csr.indptr.dtype)
        self.csr.read([(2, n_rows, n_rows + 1, end)])
        prefix._bounds = np.append(self._bounds[:n_chunks], int(end[0]))
        prefix._sized(np.clip(np.diff(prefix._bounds), 0, self.csr.n_entries))
        return prefix

    # -- budget ----------------------------------------------------------------------------
    def _row_bytes(self) -> int:
        """Bytes per row in a read buffer besides entries (indptr, row index, y, w)."""
        return 16 + 8 * self.has_targets + 8 * self.has_weights

    def _entry_bytes(self) -> int:
        """Bytes per entry in a read buffer and its staging."""
        staged = ((self._data_stored.itemsize if self._data_stored != self.x_dtype else 0)
                  + (self._idx_stored.itemsize if self._idx_stored != np.int32 else 0))
        return self.x_dtype.itemsize + 4, staged

    def read_entries(self, chunks_per_read: int) -> int:
        """Entries a read of ``chunks_per_read`` chunks holds at most (its largest chunks)."""
        k = min(int(chunks_per_read), len(self._by_size))
        return int(self._by_size[k - 1]) if k else 0

    def plan_bytes(self, chunks_per_read: int, prefetch: int, batch_size: int,
                   shuffle: bool) -> int:
        """Bytes of a stream's buffers: ``prefetch + 2`` read buffers of
        ``min(chunk_rows × chunks_per_read, n_rows)`` rows and :meth:`read_entries`
        entries (``prefetch + 4`` when shuffled: reads are staged in two more and
        permuted into the pooled ones), and one read's staging of stored dtypes.
        ``batch_size`` does not enter (batches are views of a read buffer's rows).
        """
        read_rows = min(self.chunk_rows * int(chunks_per_read), self.n_rows)
        entries = self.read_entries(chunks_per_read)
        per_entry, staged = self._entry_bytes()
        staging = (entries * staged + read_rows * 8 * (self.has_targets + self.has_weights))
        buffers = int(prefetch) + 2 + 2 * bool(shuffle)
        return buffers * (read_rows * self._row_bytes() + entries * per_entry) + staging

    def read_plan(self, *, chunks_per_read=2, prefetch=2, batch_size=DEFAULT_BATCH_SIZE,
                  shuffle=True, read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES):
        """The plan a stream with these arguments reads by (see :class:`ArraySource`)."""
        return plan_reads(lambda k, p: self.plan_bytes(k, p, batch_size, shuffle),
                          chunks_per_read, prefetch, read_buffer_bytes)

    # -- checks ----------------------------------------------------------------------------
    def _check_indptr(self, c: int, a: int, seg: np.ndarray) -> None:
        check_indptr(self.csr, c, a, seg)
        if seg[0] != self._bounds[c] or seg[-1] != self._bounds[c + 1]:
            raise DataError(f"rows {a}:{a + len(seg) - 1} now span entries "
                            f"{int(seg[0])}:{int(seg[-1])}, but entries "
                            f"{int(self._bounds[c])}:{int(self._bounds[c + 1])} when the "
                            "source was opened: the data changed", array=self.csr.labels[2],
                            chunk=c, row=a)

    def _check_entries(self, c: int, a: int, seg, values, columns) -> None:
        check_entries(self.csr, c, a, seg, values, columns, self.name)

    def _check(self, label, block, checks, chunk, row0) -> None:
        for check in checks:
            bad = check(label, block)
            if bad is not None:
                offset, message, *_ = bad
                raise DataError(f"{message} (source {self.name})", array=label, chunk=chunk,
                                row=row0 + offset)

    # -- data kept in memory ---------------------------------------------------------------
    def resident_bytes(self) -> int:
        """Bytes of every row of this source as a read buffer holds them."""
        per_entry, _ = self._entry_bytes()
        return int(self.chunk_entries.sum()) * per_entry + self.n_rows * self._row_bytes()

    def _keep_resident(self, plan_bytes: int, read_buffer_bytes, key) -> bool:
        """Whether this stream keeps the chunks it reads in memory for later streams:
        when all of them twice (the chunks, and :meth:`resident_rows`' one copy of the
        whole), with the stream's own buffers, fit ``read_buffer_bytes``. A
        pass over data that small is then one read, and the later passes (Fisher scoring,
        L-BFGS evaluations) are compute-bound instead of decode-bound. Each chunk is
        checked (and its digests compared) as it is first read; a kept chunk is not read
        again by this source (a fresh source, e.g. on ``--resume``, reads and compares
        every chunk again). ``key`` names the checks the chunks passed: other checks
        start over.
        """
        if read_buffer_bytes is None or \
                2 * self.resident_bytes() + plan_bytes > read_buffer_bytes:
            return False
        if self._resident is None or self._resident_key != key:
            self._resident, self._resident_key, self._resident_digests = {}, key, {}
        return True

    # -- the stream ------------------------------------------------------------------------
    def batches(self, *, batch_size, epochs=1, seed=0, shuffle=True, start=None,
                chunks_per_read=2, prefetch=2, checks=(), x_checks=(),
                read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES, digests: ChunkDigests | None = None):
        _validate_stream_args(batch_size, epochs, chunks_per_read, prefetch)
        # a permuted read waits in its buffer until the next one is staged: two at least
        prefetch = max(int(prefetch), 0)
        start = start or Cursor()
        nx, ny, nw = self.names
        if digests is not None:
            digests.bind(self.chunk_rows, nx)
        plan = self.read_plan(chunks_per_read=chunks_per_read, prefetch=prefetch,
                              batch_size=batch_size, shuffle=shuffle,
                              read_buffer_bytes=read_buffer_bytes)
        if plan.over_budget and not self._warned_budget:
            self._warned_budget = True
            warn_over_budget(plan, read_buffer_bytes, plan.nbytes // 3, self.name)
        k_read, prefetch = plan.chunks_per_read, plan.prefetch
        R, n, d = self.chunk_rows, self.n_rows, self.n_features
        read_rows = min(R * k_read, n)
        cap = self.read_entries(k_read)
        check_plan_memory(nx, n_chunks=math.ceil(n / R), buffer_bytes=plan.nbytes,
                          what=f"{prefetch + 2 + 2 * bool(shuffle)} read buffers of "
                               f"{read_rows:,} rows")
        y_checks = (check_finite, *self._y_checks, *checks)
        w_checks = (check_finite, check_nonnegative)
        key = tuple(getattr(c, "__qualname__", repr(c)) for c in (*x_checks, *y_checks))
        resident = self._keep_resident(plan.nbytes, read_buffer_bytes, key)
        stage_data = self._data_stored != self.x_dtype
        stage_idx = self._idx_stored != np.int32
        raw = {"data": np.empty(cap, self._data_stored) if stage_data else None,
               "indices": np.empty(cap, self._idx_stored) if stage_idx else None,
               "y": np.empty(read_rows, self.y.dtype) if self.has_targets else None,
               "w": np.empty(read_rows, self.w.dtype) if self.has_weights else None}

        def buffers():
            return {"data": np.empty(cap, self.x_dtype), "indices": np.empty(cap, np.int32),
                    "indptr": np.empty(read_rows + 1, np.int64),
                    "y": np.empty(read_rows) if self.has_targets else None,
                    "w": np.empty(read_rows) if self.has_weights else None,
                    "rows": np.empty(read_rows, np.int64)}

        free: queue.Queue = queue.Queue()
        for _ in range(int(prefetch) + 2):
            free.put(buffers())
        # a shuffled read is read into one of these (alternately), then permuted
        staged = [buffers(), buffers()] if shuffle else None

        def permute(src, m, perm, dst) -> None:
            """Rows ``perm`` of ``src``'s first ``m`` (all of them) into ``dst``, in order."""
            permute_csr_rows(src["data"], src["indices"], src["indptr"][:m + 1], perm,
                             dst["data"], dst["indices"], dst["indptr"][:m + 1])
            for key in ("y", "w", "rows"):
                if src[key] is not None:
                    np.take(src[key][:m], perm, out=dst[key][:m])

        def acquire(stream):
            while True:
                try:
                    return free.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if stream.stopping:
                        raise _Stop from None

        def fill(plan_chunks, buf) -> int:
            if resident:
                m = self._load_resident(plan_chunks, buf, digests)
                if m is not None:
                    return m
            m = self._load(plan_chunks, buf, raw, x_checks, y_checks, w_checks, digests)
            if resident:
                self._store_resident(plan_chunks, buf)
            return m

        def load(plan_chunks, stream):
            """A pooled buffer holding the read's rows, in order."""
            buf = acquire(stream)
            try:
                return buf, fill(plan_chunks, buf)
            except BaseException:
                free.put(buf)
                raise

        def load_permuted(plan_chunks, stream, k, order, pool):
            """The read staged in ``staged[k % 2]`` and its permutation into a pooled
            buffer submitted to ``pool``: ``(future, buffer, rows)``.
            """
            src = staged[k % 2]
            m = fill(plan_chunks, src)
            perm = order(m)
            buf = acquire(stream)
            try:
                return pool.submit(permute, src, m, perm, buf), buf, m
            except BaseException:
                free.put(buf)
                raise

        def produce(stream):
            if not shuffle:
                return produce_reads(stream, None)
            with ThreadPoolExecutor(1, thread_name_prefix=f"natgrad-permute[{self.name}]"
                                    ) as pool:
                return produce_reads(stream, pool)

        def produce_reads(stream, pool):
            samples = start.samples
            n_chunks = math.ceil(n / R)
            if digests is not None and start.read_index and start.epoch == int(epochs) - 1:
                done = _chunk_order(n_chunks, seed, start.epoch, shuffle)
                done = [c for c in done[:start.read_index * k_read] if digests.unverified(
                    c if self.chunk_index is None else int(self.chunk_index[c]))]
                for i in range(0, len(done), k_read):
                    free.put(load(done[i:i + k_read], stream)[0])
            pending = None  # the read being permuted: (future, buffer, queue item)
            k = 0  # reads so far (which staging buffer is free)
            try:
                for epoch in range(start.epoch, int(epochs)):
                    order = _chunk_order(n_chunks, seed, epoch, shuffle)
                    n_reads = math.ceil(len(order) / k_read)
                    first = start.read_index if epoch == start.epoch else 0
                    for read_index in range(first, n_reads):
                        chunks = order[read_index * k_read:(read_index + 1) * k_read]
                        if pool is None:
                            (buf, m), fut = load(chunks, stream), None
                        else:
                            fut, buf, m = load_permuted(chunks, stream, k, functools.partial(
                                read_permutation, seed=seed, epoch=epoch,
                                read_index=read_index), pool)
                        k += 1
                        row0 = start.row if (epoch == start.epoch and read_index == first) \
                            else 0
                        item = ("read", functools.partial(
                            read_batches, buf, m, row0, epoch, read_index,
                            read_index == n_reads - 1, samples))
                        samples += m - row0
                        if pending is not None:  # the previous read, permuted meanwhile
                            pending, last = None, pending
                            put_permuted(stream, last)
                        if fut is None:
                            stream.put(item)
                        else:
                            pending = (fut, buf, item)
                if pending is not None:
                    pending, last = None, pending
                    put_permuted(stream, last)
            finally:
                if pending is not None:  # stopped or failed: its buffer back to the pool
                    futures.wait([pending[0]])
                    free.put(pending[1])

        def put_permuted(stream, pending):
            """Queue a permuted read once its permutation is done (its buffer back to the
            pool if that failed, or if queueing it was stopped).
            """
            fut, buf, item = pending
            try:
                fut.result()
                stream.put(item)
            except BaseException:
                free.put(buf)
                raise

        def read_batches(buf, m, row0, epoch, read_index, last_read, samples):
            # the read's rows in their (permuted) order, checked as read (_load_rows)
            rows = SparseRows(buf["data"], buf["indices"], buf["indptr"][:m + 1], d,
                              checked=True)
            s = samples
            try:
                for a in range(row0, m, int(batch_size)):
                    b = min(a + int(batch_size), m)
                    s += b - a
                    cur = batch_cursor(epoch, read_index, b, m, last_read, s)
                    yield Batch(rows.rows_slice(a, b),
                                None if buf["y"] is None else buf["y"][a:b],
                                None if buf["w"] is None else buf["w"][a:b],
                                buf["rows"][a:b], cur)
            finally:
                free.put(buf)

        return BatchStream(produce, depth=int(prefetch), start=start, name=self.name)

    def _chunk_spans(self, plan_chunks):
        """``(chunk of the data, rows in it, first row in this source)`` of each chunk."""
        R = self.chunk_rows
        for c in plan_chunks:
            g = int(c) if self.chunk_index is None else int(self.chunk_index[int(c)])
            yield g, min((g + 1) * R, self._data_rows) - g * R, int(c) * R

    def resident_rows(self):
        """Every row of this source in order, ``(X, y, w)`` with ``X`` one
        :class:`SparseRows` (``y``, ``w`` float64 or None), when a stream has kept every
        chunk in memory (:meth:`_keep_resident`), else None: for a pass at compute speed
        (e.g. the metric-vector products of Newton–CG) without a stream. Built once; the
        chunks were checked (and their digests compared) as they were read.
        """
        if self._resident is None or self.chunk_index is not None:
            return None
        n_chunks = math.ceil(self.n_rows / self.chunk_rows)
        cached = self.__dict__.get("_resident_whole")
        if cached is not None and cached[0] is self._resident:
            return cached[1]
        if len(self._resident) < n_chunks or any(g not in self._resident
                                                 for g in range(n_chunks)):
            return None
        parts = [self._resident[g] for g in range(n_chunks)]
        sizes = np.array([p[0].shape[0] for p in parts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        indptr = np.concatenate([parts[0][2][:1]] + [p[2][1:] + o for p, o in
                                                      zip(parts, offsets[:-1], strict=True)])
        X = SparseRows(np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]), indptr, self.n_features,
                       checked=True)
        y = None if parts[0][3] is None else np.concatenate([p[3] for p in parts])
        w = None if parts[0][4] is None else np.concatenate([p[4] for p in parts])
        self._resident_whole = (self._resident, (X, y, w))
        return X, y, w

    def _store_resident(self, plan_chunks, buf) -> None:
        """Keep copies of a read's checked chunks (see :meth:`_keep_resident`)."""
        m = e = 0
        for g, k, _ in self._chunk_spans(plan_chunks):
            q = int(buf["indptr"][m + k])
            self._resident[g] = (
                buf["data"][e:q].copy(), buf["indices"][e:q].copy(),
                buf["indptr"][m:m + k + 1] - e,
                None if buf["y"] is None else buf["y"][m:m + k].copy(),
                None if buf["w"] is None else buf["w"][m:m + k].copy())
            m, e = m + k, q

    def _load_resident(self, plan_chunks, buf, digests) -> int | None:
        """Fill ``buf`` from kept chunks, their digests compared with (or recorded in)
        ``digests`` as if read; None unless every chunk of the read is kept (and matches
        the row counts ``digests`` recorded).
        """
        spans = list(self._chunk_spans(plan_chunks))
        if not all(g in self._resident and g in self._resident_digests for g, _, _ in spans):
            return None
        if digests is not None:
            for g, _, _ in spans:
                if not digests.check_known(g, *self._resident_digests[g]):
                    return None
        m = e = 0
        for g, k, first in spans:
            data, indices, indptr, y, w = self._resident[g]
            q = e + data.shape[0]
            buf["data"][e:q] = data
            buf["indices"][e:q] = indices
            buf["indptr"][m:m + k + 1] = indptr + e
            if y is not None:
                buf["y"][m:m + k] = y
            if w is not None:
                buf["w"][m:m + k] = w
            buf["rows"][m:m + k] = np.arange(first, first + k)
            m, e = m + k, q
        return m

    def _load(self, plan_chunks, buf, raw, x_checks, y_checks, w_checks, digests) -> int:
        """Read, check and digest one read's chunks (in plan order) into ``buf``; returns
        its rows. Errors of a window are located in the window, as an
        :class:`ArraySource` window's (:func:`~natgrad_stream.data.window.
        locate_in_full_data` places them in the full data).
        """
        try:
            return self._load_rows(plan_chunks, buf, raw, x_checks, y_checks, w_checks,
                                   digests)
        except DataError as exc:
            if self.chunk_index is None or exc.chunk is None:
                raise
            R = self.chunk_rows
            local = np.flatnonzero(self.chunk_index == exc.chunk)
            if not local.size:
                raise
            c = int(local[0])
            row = None if exc.row is None else c * R + exc.row - exc.chunk * R
            raise exc.located(chunk=c, row=row) from exc

    def _load_rows(self, plan_chunks, buf, raw, x_checks, y_checks, w_checks,
                   digests) -> int:
        R, csr = self.chunk_rows, self.csr
        nx, ny, nw = self.names
        chunks = []  # (chunk and rows in the data, first row in this source)
        for c in plan_chunks:
            g = int(c) if self.chunk_index is None else int(self.chunk_index[int(c)])
            chunks.append((g, g * R, min((g + 1) * R, self._data_rows), int(c) * R))
        segs = [np.empty(b - a + 1, dtype=csr.indptr.dtype) for _, a, b, _ in chunks]
        try:
            csr.read([(2, a, b + 1, seg) for (_, a, b, _), seg in zip(chunks, segs,
                                                                     strict=True)])
        except DataError as exc:
            raise locate_read_error(exc, (), R, False) from exc
        spans, m, e = [], 0, 0
        for (c, a, b, _), seg in zip(chunks, segs, strict=True):
            self._check_indptr(c, a, seg)
            spans.append((c, a, b, m, e, seg))
            m += b - a
            e += int(seg[-1] - seg[0])
        values = raw["data"] if raw["data"] is not None else buf["data"]
        columns = raw["indices"] if raw["indices"] is not None else buf["indices"]
        entry_reqs, row_reqs = [], []
        for _, a, b, m0, e0, seg in spans:
            p, q = int(seg[0]), int(seg[-1])
            entry_reqs += [(0, p, q, values[e0:e0 + q - p]), (1, p, q, columns[e0:e0 + q - p])]
            for arr, key in ((self.y, "y"), (self.w, "w")):
                if arr is not None:
                    row_reqs.append((arr, key, a, b, raw[key][m0:m0 + b - a]))
        try:
            csr.read(entry_reqs)
        except DataError as exc:
            raise locate_read_error(exc, [(c, a, seg) for c, a, _, _, _, seg in spans], R,
                            True) from exc
        self._read_rows(row_reqs)
        for (c, a, b, m0, e0, seg), (*_, a_here) in zip(spans, chunks, strict=True):
            k, q = b - a, e0 + int(seg[-1] - seg[0])
            self._check_entries(c, a, seg, values[e0:q], columns[e0:q])
            for check in x_checks:  # a model's checks of feature values (the stored ones)
                bad = check(nx, values[e0:q])
                if bad is not None:
                    row = a + int(np.searchsorted(seg - seg[0], bad[0], side="right")) - 1
                    raise DataError(f"{bad[1]} (source {self.name})", array=csr.labels[0],
                                    chunk=c, row=row, column=int(columns[e0 + bad[0]]))
            blocks = [(0, nx, None)]
            if self.has_targets:
                self._check(ny, raw["y"][m0:m0 + k], y_checks, c, a)
                blocks.append((1, ny, raw["y"][m0:m0 + k]))
            if self.has_weights:
                self._check(nw, raw["w"][m0:m0 + k], w_checks, c, a)
                blocks.append((2, nw, raw["w"][m0:m0 + k]))
            if digests is not None or self._resident is not None:
                blocks[0] = (0, nx, rows_digest_block(seg, values[e0:q], columns[e0:q]))
                if self._resident is not None:  # kept with the chunk (_store_resident)
                    self._resident_digests[c] = (a, k, [(slot, label, chunk_digest(b))
                                                        for slot, label, b in blocks])
                if digests is not None:
                    digests.check(c, a, blocks)
            buf["indptr"][m0:m0 + k + 1] = seg - seg[0] + e0
            buf["rows"][m0:m0 + k] = np.arange(a_here, a_here + k)
        if raw["data"] is not None:
            np.copyto(buf["data"][:e], raw["data"][:e], casting="unsafe")
        if raw["indices"] is not None:
            np.copyto(buf["indices"][:e], raw["indices"][:e], casting="unsafe")
        for key in ("y", "w"):
            if raw[key] is not None:
                np.copyto(buf[key][:m], raw[key][:m], casting="unsafe")
        return m

    def _read_rows(self, requests) -> None:
        """Targets and weights: ``(arr, key, a, b, out)``, Zarr ones through the checked
        path (all at once), located in this source's chunks.
        """
        zarr_reqs = []
        for arr, key, a, b, out in requests:
            label = self.names[1] if key == "y" else self.names[2]
            stored = self._yw_stored.get(label)
            if stored is None:
                np.copyto(out, np.asarray(arr[a:b]), casting="unsafe")
            else:
                zarr_reqs.append((stored, a, b, out, 0))
        if zarr_reqs:
            _read_zarr_checked(zarr_reqs, self.chunk_rows)
