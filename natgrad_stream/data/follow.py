"""Growing data: append rows to a Zarr v3 group, and learn them as they arrive.

Protocol (one writer, any number of polling readers):

1. :func:`append_rows` resizes the named arrays, writes the new rows (every chunk, even an
   all-fill one), and only then records the new row count in the group's attributes,
   ``attrs["natgrad_stream"]["committed_rows"]``. Local-store and object-store writes
   replace whole files/objects, so a reader sees either a chunk's old or its new content;
   rows below the committed count are never rewritten, so they read the same either way.
2. :class:`FollowSource` re-opens the group every ``poll_seconds`` and reads only rows below
   the committed count, so it never sees a row before its data are written (a chunk missing
   from the store below that count is a :class:`~natgrad_stream.errors.DataError`).

Only one process may append at a time (nothing locks the group): two writers would write
the same rows and overwrite each other's commits.

A group without ``committed_rows`` (written by something else) is read up to the common
length of the followed arrays, and never into a chunk missing from the store: past the first
missing chunk of any array, rows wait until the chunk appears. Such a writer must store its
chunks complete (write the rows, then resize, or resize then write whole chunks); the first
:func:`append_rows` first records the current length, then grows the arrays.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from natgrad_stream._constants import DEFAULT_READ_BUFFER_BYTES
from natgrad_stream.data.budget import plan_reads, warn_over_budget
from natgrad_stream.data.csr_store import (
    CSRArrays,
    check_entries,
    check_indptr,
    is_csr_group,
    locate_read_error,
    open_csr_group,
    rows_digest_block,
)
from natgrad_stream.data.digests import SLOTS
from natgrad_stream.data.manifest import (
    begin_rewrite,
    check_manifest_rows,
    record_manifest,
    recording_view,
)
from natgrad_stream.data.metadata import StoredChunks
from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.data.sparse_writer import append_csr, check_csr_append
from natgrad_stream.data.stream import (
    Batch,
    BatchStream,
    Cursor,
    Source,
    _read_zarr_checked,
    _Stop,
    _validate_stream_args,
    zarr_member,
)
from natgrad_stream.data.validation import (
    check_finite,
    check_nonnegative,
    check_target_dtype,
    check_x_dtype,
    compute_dtype,
)
from natgrad_stream.errors import DataError

#: Group attribute (under ``attrs["natgrad_stream"]``) holding the committed row count.
COMMITTED_KEY = "committed_rows"
#: Stream id of the shuffle window's row order, ``default_rng([seed, 0, id, window])``
#: (unused by the ids in ``natgrad_stream._constants``).
RNG_FOLLOW_WINDOW = 23
#: Longest uninterrupted sleep while waiting for rows: stop requests are seen this fast.
_TICK = 0.05


# -- opening ---------------------------------------------------------------------------------
def _locate(store) -> tuple[object, str | None, str]:
    """``(store, path, label)`` for a path, a ``zarr.Group`` or a zarr store."""
    import zarr

    if isinstance(store, zarr.Group):
        return store.store, store.path or None, str(getattr(store.store, "root", "group"))
    if isinstance(store, str | os.PathLike):
        label = os.fspath(store)
        if "://" not in label and not Path(label).exists():
            raise DataError(f"no Zarr group at {label}")
        return label, None, label
    return store, None, str(getattr(store, "root", type(store).__name__))


def _open_group(store, path, label, mode):
    import zarr

    try:
        return zarr.open_group(store, path=path, mode=mode, use_consolidated=False)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 (e.g. a group zarr.json that is a JSON list)
        raise DataError(f"{label} is not a readable Zarr group: {exc}") from exc


def _get(group, name, label):
    import zarr

    # by key: listing the group would also meet a writer's temporary files
    arr = zarr_member(group, name)
    if isinstance(arr, zarr.Array):
        return arr
    present = sorted(group.array_keys())
    raise DataError(f"not found in {label}; it holds arrays {present}", array=name)


def _committed_attr(group) -> int | None:
    from natgrad_stream.data.metadata import attribute_int, group_attribute

    where = getattr(group.store, "root", None) or group.store
    return attribute_int(group_attribute(group), COMMITTED_KEY,
                         f"group attribute 'natgrad_stream' of {where}")


def _read_rows(requests) -> None:
    """Decode ``arr[a:b]`` into ``out`` for every ``(arr, a, b, out, label)``, all at once
    (their chunks decompress concurrently); a chunk missing from the store or undecodable
    is a :class:`DataError` naming the array and chunk.
    """
    _read_zarr_checked([(StoredChunks(arr, label), a, b, out, 0)
                        for arr, a, b, out, label in requests])


# -- the writer --------------------------------------------------------------------------------
def append_rows(store, **arrays) -> int:
    """Append rows to existing arrays of a Zarr v3 group; returns the committed row count.

    ``append_rows("data.zarr", X=X_new, y=y_new)`` resizes ``X`` and ``y``, writes the new
    rows with every chunk stored (``write_empty_chunks``), updates the manifest of arrays
    that keep one (:mod:`natgrad_stream.data.manifest`; the chunks are written with the
    array's own codecs, so checksummed arrays stay checksummed), and then sets
    ``attrs["natgrad_stream"]["committed_rows"]`` (other attributes are kept). Readers
    (:class:`FollowSource`) only read committed rows, so a failed or interrupted call leaves
    them unaffected; the next call writes from the committed count again.

    The rows are appended after the committed count (or, before the first call, after the
    arrays' common length). Single writer: nothing prevents two processes appending at once.

    A name that is a CSR group (:mod:`natgrad_stream.data.csr_store`) takes sparse rows
    (any SciPy format, or dense rows, stored as CSR): their values and column indices are
    written after entry ``indptr[committed]`` of ``data`` and ``indices``, then ``indptr``
    is extended and the group's ``shape`` updated, each array's manifest kept, all before
    the commit (:func:`~natgrad_stream.data.sparse_writer.append_csr`).

    Parameters
    ----------
    store : path, zarr.Group or zarr store
    **arrays : array_like or scipy.sparse matrix
        New rows per array name, all with the same number of rows, the array's trailing
        shape (a CSR group's feature count), and a dtype castable (same kind) to the
        array's.

    Raises
    ------
    DataError
        When an array is missing, shapes disagree, the arrays' lengths do not match the
        committed count, or an array's manifest records fewer rows than are committed
        (another writer appended without it).
    TypeError
        When values cannot be cast to an array's dtype.
    """
    if not arrays:
        raise ValueError("append_rows needs at least one array, e.g. X=...")
    store, path, label = _locate(store)
    group = _open_group(store, path, label, "r+")
    sparse = {name: open_csr_group(m, name) for name in arrays
              if is_csr_group(m := zarr_member(group, name))}
    values = {name: _csr_rows(v) if name in sparse else np.asarray(v)
              for name, v in arrays.items()}
    targets = {name: _get(group, name, label) for name in values if name not in sparse}
    counts = {name: (v.shape[0] if v.ndim else -1) for name, v in values.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"new rows differ in number between arrays: {counts}")
    k = next(iter(counts.values()))
    for name in sparse:
        check_csr_append(zarr_member(group, name), name, values[name])
    for name, v in values.items():
        if name in sparse:
            continue
        arr = targets[name]
        if v.ndim != arr.ndim or tuple(v.shape[1:]) != tuple(arr.shape[1:]):
            raise DataError(f"new rows have shape {v.shape}; the array has shape {arr.shape}",
                            array=name)
        if not np.can_cast(v.dtype, arr.dtype, casting="same_kind"):
            raise TypeError(f"cannot append {v.dtype} values to array {name!r} of dtype "
                            f"{arr.dtype}")
    lengths = {name: int(a.shape[0]) for name, a in targets.items()}
    lengths.update({name: csr.shape[0] for name, csr in sparse.items()})
    old = _committed_attr(group)
    first = old is None
    if first:
        if len(set(lengths.values())) != 1:
            raise DataError(f"{label} records no committed row count and the arrays have "
                            f"different lengths {lengths}")
        old = next(iter(lengths.values()))
    short = {n: L for n, L in lengths.items() if L < old}
    if short:
        raise DataError(f"{label} records {old} committed rows but arrays {short} are "
                        "shorter (append to every followed array)")
    if k == 0:
        return old
    for name, arr in targets.items():
        check_manifest_rows(arr, old, name)
    if first:  # readers go by the attribute before any array grows
        _commit(group, old)
    new = old + k
    # 1. mark the rows rewritten in each array's manifest, if it keeps one, 2. resize (rows
    # left past the commit by a failed call are overwritten), 3. write, recording what is
    # stored, 4. record it in the manifest
    for arr in targets.values():
        begin_rewrite(arr, old)
        arr.resize((new,) + tuple(arr.shape[1:]))
    for name, arr in targets.items():
        view, seen = recording_view(arr.with_config({"write_empty_chunks": True}))
        try:  # zarr decodes a partly filled last chunk to write into it
            view[old:new] = values[name]
        except (RuntimeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            R = int(arr.chunks[0])
            raise DataError(f"the stored chunk holding rows {old // R * R}:{old} could not "
                            f"be decoded to append after them ({exc})", array=name,
                            chunk=old // R, row=old // R * R) from exc
        record_manifest(arr, seen, rows=new)
    for name in sparse:
        append_csr(zarr_member(group, name), name, values[name], old)
    # 5. commit, only once every row is stored
    _commit(group, new)
    return new


def _csr_rows(v):
    """New rows for a CSR group as a SciPy CSR matrix (sparse input of any format, or
    dense rows).
    """
    import scipy.sparse as sp

    if isinstance(v, SparseRows):
        return v.to_scipy()
    if sp.issparse(v):
        return v.tocsr()
    v = np.asarray(v)
    if v.ndim != 2:
        raise DataError(f"new rows for a sparse matrix must be 2-D, got shape {v.shape}")
    return sp.csr_matrix(v)


def _commit(group, rows: int) -> None:
    """Record ``rows`` as committed, keeping the group's other attributes."""
    meta = group.attrs.asdict().get("natgrad_stream")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta[COMMITTED_KEY] = int(rows)
    group.attrs["natgrad_stream"] = meta


# -- held rows: dense arrays or SparseRows ---------------------------------------------------------
def _empty_rows(sparse: bool, d: int, dtype):
    if sparse:
        return SparseRows(np.empty(0, dtype), np.empty(0, np.int32), np.zeros(1, np.int64), d)
    return np.empty((0, d), dtype)


def _take(X, idx):
    return X.take(idx) if isinstance(X, SparseRows) else np.take(X, idx, axis=0)


def _head(X, k: int):
    return X.rows_slice(0, k) if isinstance(X, SparseRows) else X[:k]


def _tail(X, k: int):
    return X.rows_slice(k, len(X)) if isinstance(X, SparseRows) else X[k:]


def _cat(A, B):
    """Rows of ``A`` then ``B``."""
    if not isinstance(A, SparseRows):
        return np.concatenate([A, B])
    A, B = A.compact(), B.compact()
    return SparseRows(np.concatenate([A.data, B.data]),
                      np.concatenate([A.indices, B.indices]),
                      np.concatenate([A.indptr, B.indptr[1:] + A.indptr[-1]]), A.shape[1])


# -- the reader --------------------------------------------------------------------------------
class FollowSource(Source):
    """Rows of a growing Zarr v3 group, learned once each, as another process appends them.

    Delivery is in arrival (row) order, or, with ``shuffle_window=W`` (and ``shuffle=True``
    passed to :meth:`batches`), in a random order within aligned windows of ``W`` rows.
    Each stream is one pass: ``epochs`` must be 1 and the cursor's epoch stays 0.

    Cursor: ``row`` is the next row not delivered and ``samples`` counts rows delivered;
    inside a shuffled window, ``row`` is the window's first row and ``read_index`` the rows
    of its permutation already delivered. Resuming from a batch's cursor continues with
    exactly the rows not yet delivered (with a window: the same ``shuffle_window`` and seed).

    Partial batches (arrival order): when the committed rows are exhausted and none arrive
    for ``poll_seconds``, the rows read so far are delivered as a short batch, so learning
    keeps up with the writer. A shuffle window instead waits for its ``W`` rows (a lag of at
    most ``W`` rows); batches do not straddle windows. At the end of the stream (idle
    timeout) every read row is delivered. On :meth:`stop` the stream ends without
    delivering the rows still held; the cursor does not cover them, so a resume reads them.

    Parameters
    ----------
    store : path, zarr.Group or zarr store
    x, y, w : str or None
        Array names (``y``/``w`` None: not read).
    poll_seconds : float
        Wait between looks for new committed rows.
    idle_timeout : float or None
        End the stream normally after this many seconds without new rows (None: wait until
        stopped).
    shuffle_window : int or None
        Rows per shuffled window (None: arrival order).
    should_stop : callable, optional
        Polled while waiting (every 50 ms); True ends the stream like :meth:`stop`, e.g.
        ``lambda: learner._stop_requested``.
    name : str, optional
        Source name in error messages (default: the store's base name).
    """

    def __init__(self, store, *, x: str = "X", y: str | None = "y", w: str | None = None,
                 poll_seconds: float = 1.0, idle_timeout: float | None = None,
                 shuffle_window: int | None = None,
                 should_stop: Callable[[], bool] | None = None, name: str | None = None):
        if not float(poll_seconds) > 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        if idle_timeout is not None and not float(idle_timeout) >= 0:
            raise ValueError(f"idle_timeout must be >= 0 or None, got {idle_timeout}")
        if shuffle_window is not None and int(shuffle_window) < 1:
            raise ValueError(f"shuffle_window must be >= 1 or None, got {shuffle_window}")
        self._store, self._path, self._label = _locate(store)
        self.name = name or os.path.basename(self._label.rstrip("/")) or self._label
        self.names = (x, y or "y", w or "w")
        self._followed = [(key, n) for key, n in (("X", x), ("y", y), ("w", w))
                          if n is not None]
        self.poll_seconds = float(poll_seconds)
        self.idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self.shuffle_window = None if shuffle_window is None else int(shuffle_window)
        self.should_stop = should_stop
        self._stop_event = threading.Event()
        self._verified: dict[str, int] = {}  # leading stored chunks seen, per array

        group = _open_group(self._store, self._path, self._label, "r")
        arrs = self._arrays(group)
        X = arrs["X"]
        #: X is a CSR group (batches carry SparseRows).
        self.sparse = isinstance(X, CSRArrays)
        if self.sparse:
            self.x_dtype = compute_dtype(X.data.dtype)
        elif X.ndim != 2:
            raise DataError(f"must be 2-D (rows × features), got shape {X.shape}", array=x)
        else:
            self.x_dtype = check_x_dtype(x, X.dtype)
        self.n_features = int(X.shape[1])
        if self.n_features == 0:
            raise DataError("has no feature columns", array=x)
        for key in ("y", "w"):
            if key in arrs:
                label = dict(self._followed)[key]
                if arrs[key].ndim != 1:
                    raise DataError(f"must be 1-D, got shape {arrs[key].shape}", array=label)
                check_target_dtype(label, arrs[key].dtype)
        self._dtypes = {key: np.dtype(a.dtype) for key, a in arrs.items()
                        if key != "X" or not self.sparse}
        self.has_targets, self.has_weights = "y" in arrs, "w" in arrs
        self.n_rows = None  # growing
        # a CSR group: its recorded logical chunk, else its indptr's chunks
        self.chunk_rows = (int(X.chunk_rows or X.indptr.chunks[0]) if self.sparse
                           else int(X.chunks[0]))
        #: Mean entries a row of a CSR group when opened (at least 1), for read budgets.
        self._row_entries = self._mean_entries(X) if self.sparse else 0

    @staticmethod
    def _mean_entries(csr: CSRArrays) -> int:
        n = csr.shape[0]
        if n == 0:
            return 1
        last = np.empty(1, dtype=csr.indptr.dtype)
        csr.read([(2, n, n + 1, last)])
        return max(1, -(-int(last[0]) // n))

    def _arrays(self, group) -> dict:
        """The followed arrays of ``group`` (X a :class:`CSRArrays` for a CSR group)."""
        out = {}
        for key, n in self._followed:
            member = zarr_member(group, n) if key == "X" else None
            out[key] = (open_csr_group(member, n, growing=True) if is_csr_group(member)
                        else _get(group, n, self._label))
        return out

    # -- control --------------------------------------------------------------------------
    def stop(self) -> None:
        """End the current stream at its next look for rows; thread-safe, safe from a
        signal handler. Sticky: later streams of this source end at once.
        """
        self._stop_event.set()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called or ``should_stop()`` returned True."""
        return self._stop_event.is_set() or (self.should_stop is not None
                                             and bool(self.should_stop()))

    # -- what is readable -------------------------------------------------------------------
    def committed_rows(self) -> tuple[int, dict]:
        """``(rows readable now, freshly opened arrays)``; re-reads the group's metadata."""
        group = _open_group(self._store, self._path, self._label, "r")
        arrs = self._arrays(group)
        lengths = {dict(self._followed)[k]: int(a.shape[0]) for k, a in arrs.items()}
        committed = _committed_attr(group)
        if committed is not None:
            short = {n: L for n, L in lengths.items() if L < committed}
            if short:
                raise DataError(f"{self._label} records {committed} committed rows but "
                                f"arrays {short} are shorter")
        n = min(lengths.values()) if committed is None else committed
        for key, arr in arrs.items():
            if isinstance(arr, CSRArrays):  # its reads are checked: a missing chunk raises
                continue
            label = dict(self._followed)[key]
            stored = self._stored_prefix(label, arr, n)
            if stored < n and committed is not None:
                raise DataError(f"chunk at row {stored} is missing from the store, below the "
                                f"{committed} committed rows of {self._label}", array=label,
                                chunk=stored // int(arr.chunks[0]), row=stored)
            n = stored
        return n, arrs

    def _stored_prefix(self, label, arr, n) -> int:
        """Rows of ``arr`` below its first chunk missing from the store (up to ``n``)."""
        stored = StoredChunks(arr, label)
        rows = stored.rows_per_object
        done = self._verified.get(label, 0)
        while done * rows < n:
            for rest in stored.tail_coords:
                if not stored.exists((done, *rest)):
                    self._verified[label] = done
                    return done * rows
            done += 1
        self._verified[label] = done
        return n

    # -- reading -----------------------------------------------------------------------------
    def _read(self, arrs, a, b, x_checks, y_checks, digests=None) -> dict:
        """Rows ``a:b`` of every followed array, checked chunk by chunk in row order.

        With ``digests``, the rows are read from the start of ``a``'s chunk, and each
        chunk's rows up to ``b`` are compared with the run's digests (or recorded).
        """
        R = self.chunk_rows
        a0 = a - a % R if digests is not None else a
        dense = [(key, label) for key, label in self._followed
                 if key != "X" or not self.sparse]
        raw = {key: np.empty((b - a0,) + tuple(arrs[key].shape[1:]), dtype=self._dtypes[key])
               for key, _ in dense}
        _read_rows([(arrs[key], a0, b, raw[key], label) for key, label in dense])
        if self.sparse:
            seg, values, columns = self._read_sparse(arrs["X"], a0, b, x_checks)
            raw["X"] = np.empty(b - a0, dtype=np.uint64)  # per-row digests, for the map
            if digests is not None:
                for c0 in range(a0, b, R):
                    s = seg[c0 - a0:min(b, c0 + R) - a0 + 1]
                    lo, hi = int(s[0] - seg[0]), int(s[-1] - seg[0])
                    raw["X"][c0 - a0:c0 - a0 + len(s) - 1] = rows_digest_block(
                        s, values[lo:hi], columns[lo:hi])
        if digests is not None:
            for c0 in range(a0, b, R):
                hi = min(b, c0 + R)
                digests.check(c0 // R, c0, [(SLOTS.index(key), label, raw[key][c0 - a0:hi - a0])
                                            for key, label in self._followed])
            raw = {key: v[a - a0:] for key, v in raw.items()}
        if self.sparse:
            lo, hi = int(seg[a - a0] - seg[0]), int(seg[-1] - seg[0])
            raw["X"] = SparseRows.from_arrays(values[lo:hi], columns[lo:hi],
                                              seg[a - a0:] - seg[a - a0], self.n_features)
        checks = {"X": (check_finite, *x_checks), "y": (check_finite, *y_checks),
                  "w": (check_finite, check_nonnegative)}
        for c0 in range(a - a % R, b, R):  # X's chunks, in row order
            lo, hi = max(a, c0), min(b, c0 + R)
            for key, label in dense:
                block = raw[key][lo - a:hi - a]
                for check in checks[key]:
                    bad = check(label, block)
                    if bad is not None:
                        offset, message, *col = bad
                        row = lo + offset
                        raise DataError(f"{message} (source {self.name})", array=label,
                                        chunk=row // int(arrs[key].chunks[0]), row=row,
                                        column=col[0] if col else None)
        return {"X": raw["X"],
                "y": raw["y"].astype(np.float64) if "y" in raw else None,
                "w": raw["w"].astype(np.float64) if "w" in raw else None}

    def _read_sparse(self, csr: CSRArrays, a: int, b: int, x_checks):
        """``(indptr[a:b+1], values, columns)`` of rows ``a:b`` of a CSR group, checked
        (indptr, column indices, finite values, ``x_checks`` on the values) chunk by chunk
        in row order; values and columns in their stored dtypes.
        """
        R = self.chunk_rows
        seg = np.empty(b - a + 1, dtype=csr.indptr.dtype)
        try:
            csr.read([(2, a, b + 1, seg)])
        except DataError as exc:
            raise exc.located(chunk=exc.row // R) if exc.row is not None else exc from exc
        spans = [(c0 // R, c0, seg[c0 - a:min(b, c0 + R) - a + 1]) for c0 in range(a, b, R)]
        for c, c0, s in spans:
            check_indptr(csr, c, c0, s)
        p, q = int(seg[0]), int(seg[-1])
        values = np.empty(q - p, dtype=csr.data.dtype)
        columns = np.empty(q - p, dtype=csr.indices.dtype)
        try:
            csr.read([(0, p, q, values), (1, p, q, columns)])
        except DataError as exc:
            raise locate_read_error(exc, spans, R, True) from exc
        for c, c0, s in spans:
            lo, hi = int(s[0]) - p, int(s[-1]) - p
            check_entries(csr, c, c0, s, values[lo:hi], columns[lo:hi], self.name)
            for check in x_checks:
                bad = check(csr.labels[0], values[lo:hi])
                if bad is not None:
                    row = c0 + int(np.searchsorted(s - s[0], bad[0], side="right")) - 1
                    raise DataError(f"{bad[1]} (source {self.name})", array=csr.labels[0],
                                    chunk=c, row=row)
        return seg, values, columns

    def read_cost(self, chunks_per_read: int, prefetch: int) -> int:
        """Bytes of the rows a stream holds at once, about ``(prefetch + 2)`` reads of
        ``chunk_rows × chunks_per_read`` rows (features in the compute dtype, float64
        targets/weights, int64 row indices), as for :meth:`ArraySource.plan_bytes`.
        """
        features = (self._row_entries * (self.x_dtype.itemsize + 4) + 8 if self.sparse
                    else self.n_features * self.x_dtype.itemsize)
        row = features + 8 + 8 * self.has_targets + 8 * self.has_weights
        return (int(prefetch) + 2) * self.chunk_rows * int(chunks_per_read) * row

    def batches(self, *, batch_size, epochs=1, seed=0, shuffle=True, start=None,
                chunks_per_read=2, prefetch=2, checks=(), x_checks=(),
                read_buffer_bytes=DEFAULT_READ_BUFFER_BYTES, digests=None) -> BatchStream:
        """Open a stream of the rows appended after ``start`` (see the class docstring).

        ``epochs`` must be 1; ``shuffle`` turns the shuffle window on or off (arrival order
        without a window either way); ``chunks_per_read`` bounds each read, lowered (after
        ``prefetch``) to fit ``read_buffer_bytes`` (:func:`~natgrad_stream.data.budget.
        plan_reads`). The order of the rows never depends on either: it is arrival order,
        or windows of ``shuffle_window`` rows (rows held for a window come on top).

        ``digests`` (the run's :class:`~natgrad_stream.data.digests.ChunkDigests`): every
        chunk read is compared with what the run read of it before (or recorded); a
        resumed stream first compares the recorded chunks before the cursor's, which it
        does not read again (one read of the rows learned so far).
        """
        _validate_stream_args(batch_size, epochs, chunks_per_read, prefetch)
        if digests is not None:
            digests.bind(self.chunk_rows, self.names[0])
        plan = plan_reads(self.read_cost, chunks_per_read, prefetch, read_buffer_bytes)
        if plan.over_budget:
            warn_over_budget(plan, read_buffer_bytes, self.read_cost(1, 1) // 3, self.name)
        chunks_per_read, prefetch = plan.chunks_per_read, plan.prefetch
        if int(epochs) != 1:
            raise ValueError("a followed source is learned once, row by row: epochs must be 1")
        start = start or Cursor()
        if start.epoch != 0:
            raise ValueError(f"cursor {start} is not a follow-mode cursor (epoch must be 0)")
        B, R, W = int(batch_size), self.chunk_rows, self.shuffle_window
        steady = W if shuffle else None
        if start.read_index and (W is None or start.row % W):
            raise ValueError(f"cursor {start} is inside a shuffled window: resume with the "
                             "same shuffle_window (and seed)")
        read_span = R * int(chunks_per_read)

        def produce(stream):
            pos, k, samples = start.row, start.read_index, start.samples
            window = W if k else steady  # a resumed window is finished as it began
            read_to = pos  # rows pos:read_to are read, not yet delivered
            held: dict = {"X": _empty_rows(self.sparse, self.n_features, self.x_dtype),
                          "y": np.empty(0) if self.has_targets else None,
                          "w": np.empty(0) if self.has_weights else None}
            avail, arrs = self.committed_rows()
            if avail < pos:
                raise DataError(f"cursor is at row {pos} but {self._label} has only {avail} "
                                "committed rows: is this the store the run followed?")
            if digests is not None:  # the rows learned before the cursor's chunk
                for c in range(pos // R):
                    if stream.stopping:
                        raise _Stop
                    if digests.unverified(c):
                        self._read(arrs, c * R, (c + 1) * R, x_checks, checks, digests)
            last_new = time.monotonic()

            def emit(flush: bool, final: bool) -> None:
                """Deliver the held rows that are ready, in one queue item."""
                nonlocal pos, k, samples, held, window
                out = []
                while read_to > pos:
                    n_held = read_to - pos
                    into = None if window is None else pos % window
                    if into == 0 and (k > 0 or n_held >= window):
                        if n_held < window:
                            break  # a resumed window: its rows are still being read
                        perm = np.random.default_rng(
                            [seed, 0, RNG_FOLLOW_WINDOW, pos // window]).permutation(window)
                        for a in range(k, window, B):
                            b = min(a + B, window)
                            idx = perm[a:b]
                            samples += b - a
                            cur = (Cursor(0, b, pos, samples) if b < window
                                   else Cursor(0, 0, pos + window, samples))
                            out.append(Batch(
                                _take(held["X"], idx),
                                None if held["y"] is None else held["y"][idx],
                                None if held["w"] is None else held["w"][idx],
                                pos + idx.astype(np.int64), cur))
                        take, k = window, 0
                        window = steady
                    else:
                        if into is None:  # arrival order
                            edge = n_held
                            ready = edge >= B or flush or final
                        elif into == 0:  # a window still filling: wait, unless ending
                            edge = n_held
                            ready = final
                        else:  # the arrival-order rest of a window (after a final flush)
                            edge = min(n_held, window - into)
                            ready = edge >= B or edge == window - into or flush or final
                        if not ready:
                            break
                        take = min(edge, B)
                        samples += take
                        out.append(Batch(
                            _head(held["X"], take),
                            None if held["y"] is None else held["y"][:take],
                            None if held["w"] is None else held["w"][:take],
                            np.arange(pos, pos + take, dtype=np.int64),
                            Cursor(0, 0, pos + take, samples)))
                    held = {key: None if v is None else _tail(v, take)
                            for key, v in held.items()}
                    pos += take
                if out:
                    stream.put(("read", lambda batches=out: iter(batches)))

            def wait(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while not self.stopped:
                    if stream.stopping:
                        raise _Stop
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._stop_event.wait(min(left, _TICK))

            while not self.stopped:
                if stream.stopping:
                    raise _Stop
                if read_to >= avail:
                    avail, arrs = self.committed_rows()
                if avail > read_to:
                    end = min(avail, (read_to // R) * R + read_span)
                    new = self._read(arrs, read_to, end, x_checks, checks, digests)
                    held = {key: None if v is None else
                            (new[key] if len(v) == 0 else _cat(v, new[key]))
                            for key, v in held.items()}
                    read_to = end
                    last_new = time.monotonic()
                    emit(flush=False, final=False)
                    continue
                idle = time.monotonic() - last_new
                if self.idle_timeout is not None and idle >= self.idle_timeout:
                    emit(flush=True, final=True)
                    return
                if idle >= self.poll_seconds:
                    emit(flush=True, final=False)
                wait(self.poll_seconds if self.idle_timeout is None
                     else min(self.poll_seconds, self.idle_timeout - idle))

        return BatchStream(produce, depth=int(prefetch), start=start, name=self.name)
