"""Read buffers sized by a byte budget: how many chunks a read holds, how many reads wait.

A stream of chunked data keeps ``prefetch + 2`` pooled read buffers of ``chunks_per_read``
chunks each (one being filled, ``prefetch`` queued, one being consumed), plus staging and
batch buffers. Sized in rows, that grows with the number of features ``d``; under a byte
budget the stream keeps the requested plan when it fits and otherwise lowers, in this
order,

1. ``prefetch`` (down to 1): it changes nothing but how far the reader runs ahead;
2. ``chunks_per_read`` (down to 1): it changes the reads, so the row order of a shuffled
   epoch (rows are permuted within a read) and the meaning of a cursor's ``read_index`` —
   both still a pure function of ``(seed, epoch, read_index)`` and of the budget, so the
   same budget on the same data gives the same order and resumes exactly.

The unit of reading stays one whole chunk (chunk alignment, the direct zstd decoder and the
integrity checks are per chunk), so the smallest plan is one chunk per read with three
buffers. A chunk too large for that is still read, over the budget, by that smallest plan
(:attr:`ReadPlan.over_budget`; the stream logs a warning once per source); rechunking the
data (e.g. ``make-data --chunk-rows``) is the cure, and the default chunking of the data
the project writes and of in-memory arrays (:func:`default_chunk_rows`) avoids it: chunks
of at most ``DEFAULT_CHUNK_BYTES`` of features, so the default plan fits the default budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from natgrad_stream._constants import (
    CHUNK_ROWS_MULTIPLE,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_ROWS,
)

log = logging.getLogger("natgrad_stream")


def default_chunk_rows(row_bytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk of the default chunking, for rows of ``row_bytes`` bytes of features.

    ``DEFAULT_CHUNK_ROWS`` (65,536) when that many rows take at most ``chunk_bytes``, so
    narrow data are chunked as they always were; otherwise the most rows within
    ``chunk_bytes`` in a multiple of ``CHUNK_ROWS_MULTIPLE`` (1,024, the default batch), and
    at least that many (a row wider than ``chunk_bytes / 1,024`` gets 1,024-row chunks over
    the target).

    Parameters
    ----------
    row_bytes : int
        Bytes of one row's features: ``features × itemsize`` of their (compute) dtype.
    chunk_bytes : int
        The target bytes of features per chunk.
    """
    row_bytes, chunk_bytes = int(row_bytes), int(chunk_bytes)
    if row_bytes < 1:
        raise ValueError(f"row_bytes must be >= 1, got {row_bytes}")
    if DEFAULT_CHUNK_ROWS * row_bytes <= chunk_bytes:
        return DEFAULT_CHUNK_ROWS
    m = CHUNK_ROWS_MULTIPLE
    return max(m, chunk_bytes // row_bytes // m * m)


@dataclass(frozen=True)
class ReadPlan:
    """What a stream reads at once.

    Attributes
    ----------
    chunks_per_read : int
        Chunks per read (``≤`` the requested count).
    prefetch : int
        Reads prepared ahead (``≤`` the requested count); ``prefetch + 2`` buffers.
    nbytes : int
        Bytes of the plan's buffers (by the stream's own cost function).
    over_budget : bool
        Even one chunk per read with ``prefetch = 1`` exceeds the budget.
    """

    chunks_per_read: int
    prefetch: int
    nbytes: int
    over_budget: bool = False


def plan_reads(cost: Callable[[int, int], int], chunks_per_read: int, prefetch: int,
               budget: int | None) -> ReadPlan:
    """The largest plan within ``budget`` bytes, reducing ``prefetch`` before
    ``chunks_per_read`` (see the module docstring).

    Parameters
    ----------
    cost : callable
        ``cost(chunks_per_read, prefetch) -> bytes`` of the stream's buffers; must not
        decrease in either argument.
    chunks_per_read, prefetch : int
        The requested plan (each ``>= 1``).
    budget : int or None
        Bytes; None keeps the requested plan whatever it costs.

    Returns
    -------
    ReadPlan
        The requested plan when it fits (or when ``budget`` is None), else the first plan
        that fits, else ``(1, 1)`` marked ``over_budget``.
    """
    k, p = int(chunks_per_read), int(prefetch)
    if budget is None:
        return ReadPlan(k, p, int(cost(k, p)))
    least = min(p, 1)  # (a requested 0 or -1, fewer buffers, is kept: already the least)
    if cost(1, least) > budget:
        return ReadPlan(1, least, int(cost(1, least)), over_budget=True)
    # the most chunks that fit with the least prefetch, then the most prefetch with them
    # (cost is monotone, so this is the first fit in the order (k, p), (k, p-1), ..., (k-1, p))
    k = _largest(lambda kk: cost(kk, least) <= budget, k)
    p = _largest(lambda pp: cost(k, pp) <= budget, p) if p >= 1 else p
    return ReadPlan(k, p, int(cost(k, p)))


def _largest(fits: Callable[[int], bool], high: int) -> int:
    """The largest ``n`` in ``[1, high]`` with ``fits(n)``, for ``fits`` true at 1 and
    monotone (true up to some ``n``, false beyond): a binary search, so plans of ``10**12``
    chunks cost about 40 evaluations.
    """
    lo, hi = 1, int(high)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def warn_over_budget(plan: ReadPlan, budget: int, chunk_bytes: int, name: str) -> None:
    """Log (once per call site's caller) that ``name``'s chunks do not fit ``budget``."""
    from natgrad_stream.data.metadata import format_bytes

    log.warning("%s: one chunk takes %s in a read buffer, too large for read_buffer_bytes = "
                "%s (3 buffers of one chunk at least); reading one chunk at a time with "
                "3 buffers, %s in all (rechunk the data into smaller chunks, or raise "
                "--read-buffer-bytes)", name, format_bytes(chunk_bytes), format_bytes(budget),
                format_bytes(plan.nbytes))
