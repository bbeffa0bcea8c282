"""Data sources: chunk-aligned Zarr/NumPy streams, iterators, cursors, synthetic data.

The data layer knows nothing about models: it delivers validated :class:`Batch` objects and
runs whatever checks it is handed.
"""

from natgrad_stream.data.follow import FollowSource, append_rows
from natgrad_stream.data.sparse_source import SparseSource
from natgrad_stream.data.stream import (
    ArraySource,
    Batch,
    BatchStream,
    Cursor,
    IteratorSource,
    Source,
    as_source,
    epoch_plan,
    open_zarr,
    read_permutation,
)
from natgrad_stream.data.validation import Check, check_finite, check_nonnegative
from natgrad_stream.data.zarr_reads import configure_zarr_threads

__all__ = [
    "ArraySource", "Batch", "BatchStream", "Check", "Cursor", "FollowSource", "IteratorSource",
    "Source", "SparseSource", "append_rows", "as_source", "check_finite", "check_nonnegative",
    "configure_zarr_threads", "epoch_plan", "open_zarr", "read_permutation",
]
