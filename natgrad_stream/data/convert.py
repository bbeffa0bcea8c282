"""``natgrad-stream convert``: a table (or any dense source) copied into a checksummed Zarr
store that fits as the source does.

The copy holds the arrays ``X`` (the selected feature columns, in their common stored
dtype; one-hot or hashed columns as a CSR group, the layout of
:mod:`natgrad_stream.data.sparse_writer`, built in memory), ``y`` and ``w`` (each in its
own dtype), written chunk by chunk as ``make-data``
writes (checksummed zstd, every chunk stored, a manifest per array) under a temporary name
renamed into place. Its chunks are the source's chunks (a Parquet file's row groups when
they share one size), so a fit of the copy follows the same plans, reads the same rows in
the same batches, and equals the fit of the source; the values are the source's, bit for
bit. The group attribute ``natgrad_stream`` records where they came from and the feature
columns' names.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from natgrad_stream._files import staged_directory
from natgrad_stream.data.manifest import checksummed_zstd, record_manifest, recording_view
from natgrad_stream.errors import DataError


def convert_to_zarr(data, out, *, x: str | None = "X", y: str | None = "y",
                    w: str | None = None, chunk_rows: int | None = None,
                    overwrite: bool = False) -> dict:
    """Copy ``data``'s ``x``, ``y`` and ``w`` into the Zarr group ``out``.

    Parameters
    ----------
    data : path or object :func:`~natgrad_stream.data.stream.as_source` reads as dense
        arrays (a Parquet file or directory, a CSV or ``.npy`` file, an Arrow table, a
        Zarr group, arrays)
    out : path
        The Zarr group to write (``*.zarr``).
    x, y, w : str or None
        Feature columns (names and globs), target and weight columns, as for ``fit``.
    chunk_rows : int, optional
        Rows per chunk of the copy (default: the source's, so the copy fits as it does).
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    dict
        ``path``, ``rows``, ``features``, ``chunk_rows``, ``dtype``, ``columns`` (the
        feature columns), ``y``, ``w``.
    """
    import zarr

    from natgrad_stream.data.sparse_source import SparseSource
    from natgrad_stream.data.stream import ArraySource, as_source, read_rows

    source = as_source(data, x="X" if x is None else x, y=y, w=w)
    sparse = isinstance(source, SparseSource)
    if not isinstance(source, ArraySource | SparseSource):
        raise TypeError(f"convert copies rows that can be read by position (tables, "
                        f"arrays, Zarr arrays), not a {type(source).__name__}")
    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    for f in getattr(source, "table_files", ()):
        if Path(f).resolve() == path.resolve():
            raise DataError(f"convert would overwrite its source {f}")
    n = int(source.n_rows)
    R = min(int(chunk_rows or source.chunk_rows), n)
    if R < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    codec, config = checksummed_zstd(), {"write_empty_chunks": True}
    with staged_directory(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        if sparse:
            from natgrad_stream.data.sparse_writer import write_csr_matrix

            write_csr_matrix(group, "X", _csr_of(source), chunk_rows=R)
        for name, arr in (("X", None if sparse else source.X), ("y", source.y),
                          ("w", source.w)):
            if arr is None:
                continue
            shape = tuple(int(s) for s in arr.shape)
            A = group.create_array(name, shape=shape, chunks=(R,) + shape[1:],
                                   dtype=arr.dtype, compressors=codec, config=config,
                                   dimension_names=("row", "feature")[:len(shape)])
            view, seen = recording_view(A)
            for c in range(math.ceil(n / R)):
                a, b = c * R, min((c + 1) * R, n)
                view[a:b] = read_rows(arr, a, b, label=name)
            record_manifest(A, seen, rows=n, replace=True)
        columns = getattr(source, "feature_names", None)
        record = {"converted_from": str(data) if isinstance(data, str | os.PathLike)
                  else type(data).__name__, "rows": n, "features": int(source.n_features),
                  "chunk_rows": R, "columns": columns, "y": y if source.has_targets else None,
                  "w": w if source.has_weights else None}
        group.attrs["natgrad_stream"] = record
    return {"path": str(path), **{k: v for k, v in record.items() if k != "converted_from"},
            "dtype": str(source.x_dtype if sparse else source.X.dtype), "sparse": sparse}


def _csr_of(source):
    """The rows of a sparse source, in order, as one SciPy CSR matrix (in memory)."""
    import numpy as np
    import scipy.sparse as sp

    parts = []
    with source.batches(batch_size=source.chunk_rows, shuffle=False, epochs=1) as stream:
        parts = [batch.X.compact().to_scipy().copy() for batch in stream]
    out = sp.vstack(parts, format="csr")
    out.indices = out.indices.astype(np.int32)
    return out
