"""CSR matrices on Zarr (AnnData's ``csr_matrix`` layout) and in memory: the arrays, their
reads, and the checks and digests of their rows.

Layout (what :func:`open_csr_group` reads and :mod:`natgrad_stream.data.sparse_writer`
writes): a group with attributes ``encoding-type: "csr_matrix"``, ``encoding-version:
"0.1.0"`` and ``shape: [n, d]``, holding the 1-D arrays ``data`` (values), ``indices``
(column of each value) and ``indptr`` (``n + 1`` entry offsets: row ``i`` is entries
``indptr[i]:indptr[i+1]``), chunked along their own length; the project's writers record
the logical chunk size as the group attribute ``natgrad_stream.chunk_rows``.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.data._sparse_kernels import row_digests
from natgrad_stream.data._zstd_direct import DirectChunks, read_direct
from natgrad_stream.data.digests import _salt
from natgrad_stream.data.metadata import (
    StoredChunks,
    attribute_int,
    check_zarr_layout,
    is_zarr_array,
)
from natgrad_stream.data.sparse import MAX_SPARSE_FEATURES, SparseRows
from natgrad_stream.data.stream import _DIRECT_ENABLED, _read_zarr_checked, zarr_member
from natgrad_stream.data.validation import check_finite, compute_dtype
from natgrad_stream.errors import DataError

#: Group attributes of the CSR layout.
CSR_ENCODING = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}
def is_csr_group(member) -> bool:
    """Whether a Zarr member is a group whose attributes declare a sparse matrix."""
    if member is None or is_zarr_array(member) or not hasattr(member, "attrs"):
        return False
    return str(member.attrs.get("encoding-type", "")).endswith("_matrix")


class CSRArrays:
    """The three arrays of a CSR matrix, in memory (NumPy) or on Zarr.

    Attributes
    ----------
    data, indices, indptr : array
    shape : tuple (n, d)
    labels : tuple of str
        ``("X/data", "X/indices", "X/indptr")`` for messages.
    chunk_rows : int or None
        Rows per logical chunk recorded by the writer.
    growing : bool
        Arrays another process is appending to (follow mode): ``indptr`` may hold more
        than ``n + 1`` entries and ``data``/``indices`` differ in length while an append
        is under way; only rows below ``n`` and entries below the shorter are read.
    """

    def __init__(self, data, indices, indptr, shape, name: str = "X",
                 chunk_rows: int | None = None, growing: bool = False):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (int(shape[0]), int(shape[1]))
        self.name = name
        self.labels = (f"{name}/data", f"{name}/indices", f"{name}/indptr")
        self.chunk_rows = chunk_rows
        for arr, label in zip(self.arrays, self.labels, strict=True):
            if len(getattr(arr, "shape", ())) != 1:
                raise DataError(f"must be 1-D, got shape {getattr(arr, 'shape', None)}",
                                array=label)
            if is_zarr_array(arr):
                check_zarr_layout(arr, label)
        n, d = self.shape
        if int(indptr.shape[0]) != n + 1 and not (growing and indptr.shape[0] > n):
            raise DataError(f"has {indptr.shape[0]} entries; the matrix's shape {list(self.shape)}"
                            f" needs {n + 1} (rows + 1)", array=self.labels[2])
        if int(indices.shape[0]) != int(data.shape[0]) and not growing:
            raise DataError(f"has {indices.shape[0]} entries but {self.labels[0]!r} has "
                            f"{data.shape[0]}", array=self.labels[1])
        for arr, label in ((indices, self.labels[1]), (indptr, self.labels[2])):
            if np.dtype(arr.dtype).kind not in "iu":
                raise DataError(f"has dtype {arr.dtype}; expected integers", array=label)
        if compute_dtype(data.dtype) is None:
            raise TypeError(f"array {self.labels[0]!r} has dtype {data.dtype}; expected a "
                            "real numeric dtype (bool, integer or float)")
        if d > MAX_SPARSE_FEATURES:
            raise DataError(f"has {d:,} features, more than the {MAX_SPARSE_FEATURES:,} a "
                            "CSR batch addresses", array=name)
        self.stored = tuple(StoredChunks(a, label) if is_zarr_array(a) else None
                            for a, label in zip(self.arrays, self.labels, strict=True))
        # zstd decoders (local stores of the simple layout; else None): a logical chunk's
        # entries are decoded chunk by chunk, straight into the read buffer where a stored
        # chunk is whole in it (make-data's aligned layout: all of them)
        self.direct = tuple(DirectChunks.for_array(a, label)
                            if is_zarr_array(a) and _DIRECT_ENABLED else None
                            for a, label in zip(self.arrays, self.labels, strict=True))

    @property
    def arrays(self):
        return self.data, self.indices, self.indptr

    @property
    def n_entries(self) -> int:
        return min(int(self.data.shape[0]), int(self.indices.shape[0]))

    @classmethod
    def from_scipy(cls, matrix, name: str = "X") -> CSRArrays:
        """Canonical CSR arrays of any SciPy sparse matrix or array (converted once)."""
        rows = SparseRows.from_scipy(matrix)
        return cls(rows.data, rows.indices, rows.indptr, rows.shape, name)

    def read(self, requests) -> None:
        """Fill ``out`` with ``arrays[j][a:b]`` for each ``(j, a, b, out)``: NumPy by copy,
        Zarr through the checked read path, all at once (a missing or damaged chunk is a
        DataError located in that array's own chunks).
        """
        zarr_reqs, direct = [], []
        for j, a, b, out in requests:
            stored, dec = self.stored[j], self.direct[j]
            spans = dec.spans(a, b) if dec is not None and out.dtype == dec.dtype else None
            if stored is None:
                np.copyto(out, self.arrays[j][a:b], casting="unsafe")
            elif spans is not None:
                # each stored chunk decoded straight into ``out`` when whole, else whole
                # into a scratch and its part copied (zarr's path does the same for a part,
                # with a copy of every chunk and asyncio bookkeeping besides)
                direct += [(dec, s, hi, out[lo - a:hi - a], lo) for s, lo, hi in spans]
            else:
                zarr_reqs.append((stored, a, b, out, 0))
        if direct:  # errors located in each array's own chunks, as zarr's
            read_direct(direct)
        if zarr_reqs:
            _read_zarr_checked(zarr_reqs)


def open_csr_group(group, name: str, *, growing: bool = False) -> CSRArrays:
    """The CSR matrix stored as the group ``group`` (see the module docstring).

    Raises
    ------
    DataError
        When the attributes are not those of a CSR matrix (a CSC matrix is named as such:
        rows cannot be streamed from it), an array is missing, or shapes disagree.
    """
    attrs = group.attrs.asdict()
    kind = attrs.get("encoding-type")
    if kind == "csc_matrix":
        raise DataError("is a CSC (column-compressed) sparse matrix; rows are streamed from "
                        "CSR only: convert it (e.g. anndata's X.tocsr() before writing, or "
                        "scipy's .tocsr())", array=name)
    if kind != CSR_ENCODING["encoding-type"]:
        raise DataError(f"is a group with encoding-type {kind!r}, not a CSR matrix "
                        "('csr_matrix' with arrays data, indices, indptr)", array=name)
    shape = attrs.get("shape")
    if (not isinstance(shape, list | tuple) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in shape)):
        raise DataError(f"has attribute shape {shape!r}; expected [rows, features], two "
                        "non-negative integers", array=name)
    arrays = []
    for part in ("data", "indices", "indptr"):
        arr = zarr_member(group, part)
        if arr is None or not is_zarr_array(arr):
            raise DataError(f"is missing from the CSR group {name!r} (it needs data, "
                            "indices and indptr)", array=f"{name}/{part}")
        arrays.append(arr)
    meta = attrs.get("natgrad_stream")
    chunk_rows = attribute_int(meta, "chunk_rows", f"group attribute 'natgrad_stream' of "
                               f"{name!r}", minimum=1) if isinstance(meta, dict) else None
    return CSRArrays(*arrays, shape, name, chunk_rows, growing)


def check_indptr(csr: CSRArrays, c: int, a: int, seg: np.ndarray) -> None:
    """Refuse an ``indptr`` segment (rows from ``a``, logical chunk ``c``) that is
    negative, decreasing, or past the entries of ``data``.
    """
    label = csr.labels[2]
    if seg[0] < 0:
        raise DataError(f"row starts at entry {int(seg[0])}, which is negative",
                        array=label, chunk=c, row=a)
    down = np.flatnonzero(seg[1:] < seg[:-1])
    if down.size:
        i = int(down[0])
        raise DataError(f"decreases from {int(seg[i])} to {int(seg[i + 1])} (row "
                        f"{a + i} would end before it starts)", array=label, chunk=c,
                        row=a + i)
    if seg[-1] > csr.n_entries:
        i = int(np.flatnonzero(seg[1:] > csr.n_entries)[0])
        raise DataError(f"row ends at entry {int(seg[i + 1])}, past the "
                        f"{csr.n_entries} entries of {csr.labels[0]!r}",
                        array=label, chunk=c, row=a + i)


def check_entries(csr: CSRArrays, c: int, a: int, seg, values, columns, source: str) -> None:
    """Column indices in ``[0, d)``, then finite values; the first bad entry (in order) of
    rows from ``a`` (``indptr`` segment ``seg``) is a DataError at its row.
    """
    d = csr.shape[1]
    if columns.dtype.kind == "u" or 2 ** (8 * columns.dtype.itemsize - 1) > d:
        # one comparison: a negative index viewed unsigned is at least 2^(bits-1) > d
        bad = np.flatnonzero(columns.view(f"u{columns.dtype.itemsize}") >= d)
    else:
        bad = np.flatnonzero((columns < 0) | (columns >= d))
    if len(bad):
        e = int(bad[0])
        row = a + int(np.searchsorted(seg - seg[0], e, side="right")) - 1
        raise DataError(f"column index {int(columns[e])} at entry {int(seg[0]) + e} is "
                        f"outside [0, {d}) (source {source})",
                        array=csr.labels[1], chunk=c, row=row)
    found = check_finite(csr.labels[0], values)
    if found is not None:
        e, message = found[0], found[1]
        row = a + int(np.searchsorted(seg - seg[0], e, side="right")) - 1
        raise DataError(f"{message} (source {source})", array=csr.labels[0],
                        chunk=c, row=row, column=int(columns[e]))


def check_sparse_rows(label: str, rows: SparseRows, checks=()):
    """A :data:`~natgrad_stream.data.validation.Check` of sparse rows: column indices in
    ``[0, d)``, finite values, then ``checks`` on the values; ``(row, message[, column])``
    of the first bad entry, or None.
    """
    rows = rows.compact()
    d = rows.shape[1]
    bad = np.flatnonzero(rows.indices.view(np.uint32) >= d)  # negatives are >= 2^31 > d
    if bad.size:
        e = int(bad[0])
        return (int(np.searchsorted(rows.indptr, e, side="right")) - 1,
                f"column index {int(rows.indices[e])} outside [0, {d})")
    for check in (check_finite, *checks):
        found = check(label, rows.data)
        if found is not None:
            e = int(found[0])
            return (int(np.searchsorted(rows.indptr, e, side="right")) - 1, found[1],
                    int(rows.indices[e]))
    return None


def rows_digest_block(seg, values, columns) -> np.ndarray:
    """The block a run's content digests hold for sparse rows: one 64-bit digest per row
    (:func:`~natgrad_stream.data._sparse_kernels.row_digests`) of its values, columns and
    length, in their stored dtypes.
    """
    out = np.empty(len(seg) - 1, dtype=np.uint64)
    salt = np.uint64(int(_salt(values.dtype)) ^ (int(_salt(columns.dtype)) >> 1))
    row_digests(values.view(f"u{values.dtype.itemsize}"),
                columns.view(f"u{columns.dtype.itemsize}"), seg, salt, out)
    return out


def locate_read_error(exc: DataError, spans, R: int, entries: bool) -> DataError:
    """``exc`` (at a row of ``indptr``, or, with ``entries``, an entry of ``data`` or
    ``indices``) at the logical chunk and matrix row holding it, ``spans`` being
    ``(c, a, seg)`` of the read's chunks (``seg`` their ``indptr`` segments).
    """
    if exc.row is None:
        return exc
    if not entries:
        return exc.located(chunk=exc.row // R)
    for c, a, seg in spans:
        if seg is not None and seg[0] <= exc.row < seg[-1]:
            row = a + int(np.searchsorted(seg, exc.row, side="right")) - 1
            return DataError(f"{exc.detail} (entry {exc.row})", array=exc.array, chunk=c,
                             row=row)
    return exc
