"""Writing sparse rows: CSR groups in the AnnData layout, synthetic sparse datasets, and
appends to CSR groups.

The layout is that of :mod:`natgrad_stream.data.csr_store` (``encoding-type:
csr_matrix``, ``shape``, arrays ``data``, ``indices``, ``indptr``), written like the dense
arrays: checksummed zstd, every chunk stored, a manifest per array
(:mod:`natgrad_stream.data.manifest`), and the logical chunk size recorded as the group
attribute ``natgrad_stream.chunk_rows``. ``data`` and ``indices`` are chunked along the
entries, ``indptr`` in ``chunk_rows`` rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from natgrad_stream._files import staged_directory
from natgrad_stream.data.budget import default_chunk_rows
from natgrad_stream.data.csr_store import CSR_ENCODING
from natgrad_stream.data.manifest import (
    begin_rewrite,
    check_manifest_rows,
    checksummed_zstd,
    record_manifest,
    recording_view,
)
from natgrad_stream.errors import DataError

#: Every chunk is stored (a missing chunk is always an error for the readers).
_CONFIG = {"write_empty_chunks": True}
#: The arrays of a CSR group, in writing order.
_PARTS = ("data", "indices", "indptr")


def sparse_chunk_rows(nonzeros_per_row: float, dtype: str = "float32") -> int:
    """Default rows per logical chunk: ``DEFAULT_CHUNK_BYTES`` of entries (values and
    int32 indices) at ``nonzeros_per_row`` (see :func:`~natgrad_stream.data.budget.
    default_chunk_rows`).
    """
    per_row = math.ceil(float(nonzeros_per_row) * (np.dtype(dtype).itemsize + 4))
    return default_chunk_rows(max(1, per_row))


def create_csr_group(parent, name: str, *, rows: int, features: int, entries: int,
                     chunk_rows: int, entry_chunk: int, dtype: str = "float32"):
    """An empty CSR group ``name`` of ``parent`` for ``rows × features`` with ``entries``
    stored values (arrays sized, nothing written); returns the group.
    """
    codec = checksummed_zstd()
    group = parent.create_group(name, attributes={
        **CSR_ENCODING, "shape": [int(rows), int(features)],
        "natgrad_stream": {"chunk_rows": int(chunk_rows)}})
    for part, n, chunk, dt in (("data", entries, entry_chunk, dtype),
                               ("indices", entries, entry_chunk, "int32"),
                               ("indptr", rows + 1, chunk_rows, "int64")):
        group.create_array(part, shape=(int(n),), chunks=(max(1, int(chunk)),), dtype=dt,
                           compressors=codec, config=_CONFIG)
    return group


def write_csr_matrix(parent, name: str, matrix, *, chunk_rows: int | None = None,
                     entry_chunk: int | None = None):
    """Store a SciPy sparse matrix (any format; CSR is stored) as the CSR group ``name`` of
    the Zarr group ``parent`` (opened for writing), chunk by chunk; returns the group.

    ``chunk_rows`` (default :func:`sparse_chunk_rows` at the matrix's mean non-zeros a row)
    is recorded as its logical chunk size; ``entry_chunk`` (default ``chunk_rows`` × the
    mean non-zeros a row, at least 1) is the chunk length of ``data`` and ``indices``. An
    empty matrix (0 rows) makes a group to append rows to
    (:func:`~natgrad_stream.data.follow.append_rows`).
    """
    from natgrad_stream.data.sparse import SparseRows

    rows = SparseRows.from_scipy(matrix)
    stored = matrix.tocsr() if matrix.format != "csr" else matrix
    n, d = rows.shape
    per_row = rows.nnz / max(n, 1)
    R = int(chunk_rows or sparse_chunk_rows(max(per_row, 1), str(stored.dtype)))
    E = int(entry_chunk or max(1, math.ceil(R * max(per_row, 1))))
    group = create_csr_group(parent, name, rows=n, features=d, entries=rows.nnz,
                             chunk_rows=R, entry_chunk=E, dtype=str(stored.dtype))
    for part, values in (("data", stored.data), ("indices", rows.indices),
                         ("indptr", rows.indptr)):
        arr = group[part]
        view, seen = recording_view(arr.with_config(_CONFIG))
        step = int(arr.chunks[0])
        for a in range(0, len(values), step):
            view[a:a + step] = values[a:a + step]
        record_manifest(arr, seen, rows=len(values), replace=True)
    return group


def make_sparse_dataset(path, *, task: str, rows: int, features: int, density: float,
                        chunk_rows: int | None = None, test_rows: int = 0, seed: int = 0,
                        dtype: str = "float32", overwrite: bool = False):
    """Write a synthetic sparse dataset (``X`` a CSR group, ``y`` an array) and return the
    opened group; see :mod:`natgrad_stream.data.synthetic.sparse_glm` for the model and
    :func:`~natgrad_stream.data.datasets.make_dataset` for the other arguments.

    Chunk by chunk: each logical chunk of ``chunk_rows`` rows (default
    :func:`sparse_chunk_rows`) is drawn from its own random stream ``(seed, array,
    chunk)`` and written as one chunk of ``data`` and ``indices`` (every row holds ``k``
    entries, so chunks of ``chunk_rows × k`` entries align with the rows).
    """
    import zarr

    from natgrad_stream.data.datasets import _ARRAY_IDS, check_dtype, check_sizes
    from natgrad_stream.data.synthetic import sparse_glm as G

    if not 0 < float(density) <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    check_dtype(dtype)
    k = G.nonzeros_per_row(density, features)
    if chunk_rows is None and int(features) >= 1:
        chunk_rows = sparse_chunk_rows(k, dtype)
    check_sizes(rows=rows, features=features, chunk_rows=chunk_rows, test_rows=test_rows)
    params, coef = G.true_params(task, features, k, seed)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    with staged_directory(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        codec = checksummed_zstd()
        for xname, yname, n in (("X", "y", rows), ("X_test", "y_test", test_rows)):
            if n == 0:
                continue
            r = min(int(chunk_rows), n)
            group = create_csr_group(root, xname, rows=n, features=features, entries=n * k,
                                     chunk_rows=r, entry_chunk=r * k, dtype=dtype)
            views = {part: recording_view(group[part].with_config(_CONFIG)) for part in _PARTS}
            Y = root.create_array(yname, shape=(n,), chunks=(r,), dtype=G.Y_DTYPES[task],
                                  compressors=codec, config=_CONFIG)
            Y_view, Y_seen = recording_view(Y)
            for c in range(math.ceil(n / r)):
                a, b = c * r, min((c + 1) * r, n)
                rng = np.random.default_rng([seed, _ARRAY_IDS[xname], c])
                cols, vals, yc = G.sample_chunk(task, params, coef, rng, b - a, k)
                views["data"][0][a * k:b * k] = vals.astype(dtype).ravel()
                views["indices"][0][a * k:b * k] = cols.astype(np.int32).ravel()
                views["indptr"][0][a:b] = np.arange(a, b, dtype=np.int64) * k
                Y_view[a:b] = yc
            views["indptr"][0][n:n + 1] = np.array([n * k], dtype=np.int64)
            for part in _PARTS:
                arr = group[part]
                record_manifest(arr, views[part][1], rows=int(arr.shape[0]), replace=True)
            record_manifest(Y, Y_seen, rows=n, replace=True)
        C = root.create_array("true_coef", shape=coef.shape, dtype="float64",
                              compressors=codec, config=_CONFIG)
        C_view, C_seen = recording_view(C)
        C_view[...] = coef
        record_manifest(C, C_seen, rows=coef.shape[0], replace=True)
        root.attrs["natgrad_stream"] = {
            "task": task, "seed": seed, "rows": rows, "features": features,
            "test_rows": test_rows, "chunk_rows": chunk_rows, "dtype": dtype,
            "density": float(density), "nonzeros_per_row": k, "sparse": True,
            "true_params": {**params, "coef": "array true_coef"},
        }
    return zarr.open_group(str(path), mode="r")


# -- appends -----------------------------------------------------------------------------------
def csr_rows(group) -> int:
    """Rows of a CSR group by its ``shape`` attribute."""
    return int(group.attrs["shape"][0])


def check_csr_append(group, name: str, matrix) -> None:
    """Refuse new rows that do not fit the CSR group ``group`` (features, dtype, column
    indices).

    Raises
    ------
    DataError, TypeError
    """
    d = int(group.attrs["shape"][1])
    if matrix.shape[1] != d:
        raise DataError(f"new rows have {matrix.shape[1]} features; the matrix has {d}",
                        array=name)
    stored = group["data"].dtype
    if not np.can_cast(matrix.data.dtype, stored, casting="same_kind"):
        raise TypeError(f"cannot append {matrix.data.dtype} values to array "
                        f"{name + '/data'!r} of dtype {stored}")
    bad = np.flatnonzero((matrix.indices < 0) | (matrix.indices >= d))
    if bad.size:
        row = int(np.searchsorted(matrix.indptr, bad[0], side="right")) - 1
        raise DataError(f"new row {row} has column index {int(matrix.indices[bad[0]])} "
                        f"outside [0, {d})", array=f"{name}/indices")


def append_csr(group, name: str, matrix, old: int) -> None:
    """Write the CSR rows ``matrix`` after row ``old`` of the CSR group ``group`` (data and
    indices after entry ``indptr[old]``, then ``indptr``, then the ``shape`` attribute),
    keeping the arrays' manifests; the caller commits the rows after.
    """
    from natgrad_stream.data.stream import read_rows

    parts = {part: group[part] for part in _PARTS}
    start = int(read_rows(parts["indptr"], old, old + 1, label=f"{name}/indptr")[0])
    k, nnz = int(matrix.shape[0]), int(matrix.indptr[-1] - matrix.indptr[0])
    for part, at in (("data", start), ("indices", start), ("indptr", old + 1)):
        check_manifest_rows(parts[part], at, f"{name}/{part}")
    new = {"data": matrix.data[matrix.indptr[0]:matrix.indptr[-1]],
           "indices": matrix.indices[matrix.indptr[0]:matrix.indptr[-1]],
           "indptr": (np.asarray(matrix.indptr[1:], dtype=np.int64)
                      - int(matrix.indptr[0]) + start)}
    at = {"data": start, "indices": start, "indptr": old + 1}
    size = {"data": start + nnz, "indices": start + nnz, "indptr": old + k + 1}
    for part, arr in parts.items():
        arr = begin_rewrite(arr, at[part])
        arr.resize((size[part],))
        parts[part] = arr
    for part, arr in parts.items():
        view, seen = recording_view(arr.with_config(_CONFIG))
        try:
            view[at[part]:size[part]] = new[part].astype(arr.dtype, copy=False)
        except (RuntimeError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            R = int(arr.chunks[0])
            raise DataError(f"the stored chunk holding entries {at[part] // R * R}:"
                            f"{at[part]} could not be decoded to append after them ({exc})",
                            array=f"{name}/{part}", chunk=at[part] // R) from exc
        record_manifest(arr, seen, rows=size[part])
    group.attrs["shape"] = [old + k, int(group.attrs["shape"][1])]
