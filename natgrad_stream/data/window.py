"""A window of chunks of an :class:`ArraySource`: the chunks ``chunks`` (sorted), read as
one shorter source, with data errors located in the full data.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.data.stream import ArraySource
from natgrad_stream.errors import DataError


class RowSpans:
    """Read-only array-like: the row ranges ``spans`` of ``arr``, concatenated.

    Supports ``shape``, ``dtype`` and contiguous slicing, which is what
    :class:`ArraySource` needs.
    """

    def __init__(self, arr, spans):
        self.arr = arr
        self.spans = [(int(a), int(b)) for a, b in spans]
        self.starts = np.cumsum([0] + [b - a for a, b in self.spans])
        self.shape = (int(self.starts[-1]),) + tuple(arr.shape[1:])
        self.dtype = arr.dtype

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a chunk window supports contiguous row slices only")
        start, stop, _ = key.indices(self.shape[0])
        parts = []
        for (a, b), s0 in zip(self.spans, self.starts[:-1], strict=True):
            lo, hi = max(start, s0), min(stop, s0 + b - a)
            if lo < hi:
                parts.append(np.asarray(self.arr[a + lo - s0:a + hi - s0]))
        return np.concatenate(parts) if parts else np.asarray(self.arr[0:0])


def chunk_window(source: ArraySource, chunks: np.ndarray) -> ArraySource:
    """The chunks ``chunks`` (sorted, so a short last chunk stays last and chunk
    boundaries stay aligned) of ``source`` as one source.
    """
    if hasattr(source, "chunk_window"):  # a SparseSource
        return source.chunk_window(chunks)
    R = source.chunk_rows
    spans = [(c * R, min((c + 1) * R, source.n_rows)) for c in chunks]
    parts = [None if a is None else RowSpans(a, spans) for a in (source.X, source.y, source.w)]
    window = ArraySource(*parts, chunk_rows=R, names=source.names, name=f"{source.name} window",
                         class_names=source.class_names, y_checks=source._y_checks)
    base = source.chunk_index
    window.chunk_index = np.asarray(chunks) if base is None else base[np.asarray(chunks)]
    return window


def row_prefix(source: ArraySource, n_rows: int) -> ArraySource:
    """The first ``n_rows`` rows of ``source`` as one source, with the same chunks (e.g.
    to finish an epoch planned before rows were appended).
    """
    if hasattr(source, "row_prefix"):  # a SparseSource
        return source.row_prefix(n_rows)
    if not 0 < n_rows <= source.n_rows:
        raise ValueError(f"a prefix of {n_rows} rows of {source.n_rows}")
    parts = [None if a is None else RowSpans(a, [(0, n_rows)])
             for a in (source.X, source.y, source.w)]
    prefix = ArraySource(*parts, chunk_rows=source.chunk_rows, names=source.names,
                         name=source.name, class_names=source.class_names,
                         y_checks=source._y_checks)
    prefix.chunk_index = source.chunk_index
    return prefix


def compare_recorded(source: ArraySource, digests, *, read_buffer_bytes=None) -> None:
    """Read the chunks of ``source`` whose content digests were recorded but not compared
    since ``digests`` was loaded, comparing them (a change is a DataError naming it): for a
    resumed run that may not read them again (L-BFGS windows).
    """
    chunks = digests.unverified_chunks()
    chunks = chunks[chunks < -(-source.n_rows // source.chunk_rows)]
    if not chunks.size:
        return
    with chunk_window(source, chunks).batches(
            batch_size=source.chunk_rows, epochs=1, shuffle=False, chunks_per_read=1,
            read_buffer_bytes=read_buffer_bytes, digests=digests) as stream:
        for _ in stream:
            pass


def locate_in_full_data(exc: DataError, chunks: np.ndarray, chunk_rows: int) -> DataError:
    """A data error found in a window, with its chunk and row in the full data."""
    if exc.chunk is None or not 0 <= exc.chunk < len(chunks):
        return exc
    c = int(chunks[exc.chunk])
    row = None if exc.row is None else c * chunk_rows + exc.row - exc.chunk * chunk_rows
    return exc.located(chunk=c, row=row)
