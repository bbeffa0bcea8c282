"""Content identity of the rows a run has read: one 8-byte digest per chunk and array.

A stream given a :class:`ChunkDigests` hashes each chunk of each array as decoded into its
read buffer, in the stored dtype, before conversion (:func:`chunk_digest`, a pass over
bytes already in memory), and compares it with the digest recorded when the run read that
chunk before; a chunk read for the first time is recorded. So a chunk whose values, data
type or byte order changed after the run learned it stops the run at its next read with a
:class:`~natgrad_stream.errors.DataError` naming the array, the chunk and its rows, before
anything is learned from it. The map is part of the learner's state, saved in every
checkpoint (12 bytes per chunk), so a resumed run, ``evaluate`` on the training data and
follow mode compare against what the run learned.

A chunk recorded with fewer rows than it holds now (the last chunk, grown by appended
rows) is compared over the rows recorded, then recorded again with all of them; a chunk
with fewer rows than recorded is a change.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from natgrad_stream.data._digest_kernels import hash_words
from natgrad_stream.errors import DataError

#: Columns of the map: the slots of a source's arrays.
SLOTS = ("X", "y", "w")
_SALTS: dict[str, np.uint64] = {}


def _salt(dtype: np.dtype) -> np.uint64:
    """A per-dtype constant folded into a digest, so equal bytes of another dtype or byte
    order have another digest.
    """
    key = dtype.str
    if key not in _SALTS:
        _SALTS[key] = np.frombuffer(hashlib.blake2b(key.encode(), digest_size=8).digest(),
                                    dtype=np.uint64)[0]
    return _SALTS[key]


def _words(block: np.ndarray):
    """``(bytes, 64-bit words, tail)`` of a C-contiguous array (the words None when its
    start is not 8-byte aligned).
    """
    flat = block.reshape(-1).view(np.uint8)
    n8 = flat.size - flat.size % 8
    words = flat[:n8].view(np.uint64) if flat.ctypes.data % 8 == 0 else None
    return flat, words, flat[n8:]


def chunk_digest(block: np.ndarray) -> int:
    """64-bit digest of an array's bytes and dtype (never 0, which means "not recorded")."""
    flat, words, tail = _words(np.ascontiguousarray(block))
    if words is None:  # the kernel reads aligned 64-bit words
        words = flat[:flat.size - tail.size].copy().view(np.uint64)
    h = hash_words(words, tail, flat.size) ^ _salt(block.dtype)
    return int(h) or 1


class ChunkDigests:
    """Per-chunk digests of the rows a run has read (see the module docstring).

    ``digest[c, s]`` (uint64) is the digest of chunk ``c`` of the array in slot ``s`` (X,
    y, w), 0 where not recorded; ``rows[c]`` (uint32) the rows it covered. Chunks are the
    source's read units of ``chunk_rows`` rows. Thread-safe: a stream's decode tasks check
    chunks concurrently.
    """

    def __init__(self, digest=None, rows=None, chunk_rows: int | None = None):
        self._digest = np.zeros((0, len(SLOTS)), dtype=np.uint64) if digest is None else \
            np.array(digest, dtype=np.uint64).reshape(-1, len(SLOTS))
        self._rows = np.zeros(len(self._digest), dtype=np.uint32) if rows is None else \
            np.array(rows, dtype=np.uint32).reshape(-1)
        if len(self._rows) != len(self._digest):
            raise ValueError(f"digest map: {len(self._digest)} digests for "
                             f"{len(self._rows)} row counts")
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        # chunks compared or recorded since the map was loaded (not saved)
        self._seen = np.zeros(len(self._rows), dtype=bool)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pickle and deepcopy: everything but the lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Chunks recorded."""
        return int(np.count_nonzero(self._rows))

    def recorded(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` has a digest."""
        return 0 <= chunk < len(self._rows) and bool(self._rows[chunk])

    def unverified(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` has a digest not compared since the map was loaded (a
        resumed stream compares those it will not read again).
        """
        return self.recorded(chunk) and not self._seen[chunk]

    def unverified_chunks(self) -> np.ndarray:
        """Indices of the chunks :meth:`unverified` holds for."""
        with self._lock:
            return np.flatnonzero((self._rows > 0) & ~self._seen)

    def bind(self, chunk_rows: int, label: str) -> None:
        """Fix the chunk size of the map (on first use); another one is a DataError."""
        with self._lock:
            if self.chunk_rows is None or not len(self):
                self.chunk_rows = int(chunk_rows)
            elif self.chunk_rows != int(chunk_rows):
                raise DataError(f"is read in chunks of {chunk_rows} rows, but the run "
                                f"recorded its data's content in chunks of {self.chunk_rows}",
                                array=label)

    def check(self, chunk: int, row0: int, blocks) -> None:
        """Compare chunk ``chunk`` (first row ``row0``) with its recorded digests, or record
        them. ``blocks``: ``(slot, label, array)`` for each array read, its rows of the chunk.

        Raises
        ------
        DataError
            When a block differs from what was recorded (naming array, chunk and rows).
        """
        k = int(blocks[0][2].shape[0])
        now = [(s, label, b, chunk_digest(b)) for s, label, b in blocks]
        with self._lock:
            old_rows = int(self._rows[chunk]) if chunk < len(self._rows) else 0
            old = [int(self._digest[chunk, s]) if old_rows else 0 for s, *_ in now]
        if old_rows > k:
            raise DataError(f"rows {row0}:{row0 + old_rows} were read by the run, but the "
                            f"chunk now ends at row {row0 + k}: the data changed",
                            array=blocks[0][1], chunk=chunk)
        for (_, label, b, h), then in zip(now, old, strict=True):
            if not then:
                continue
            h = h if old_rows == k else chunk_digest(b[:old_rows])  # a grown last chunk
            if h != then:
                raise DataError(
                    f"rows {row0}:{row0 + old_rows} changed after the run read them "
                    f"(content digest {then:016x} then, {h:016x} now): the data a run "
                    "learned from must not change (append rows instead)",
                    array=label, chunk=chunk)
        self._record(chunk, k, [(s, h) for s, _, _, h in now])

    def check_known(self, chunk: int, row0: int, rows: int, digests) -> bool:
        """:meth:`check` from digests computed when the chunk was read (``(slot, label,
        digest)`` of its ``rows`` rows), for a source that kept the chunk in memory.
        Returns False, comparing nothing, when the map recorded another row count for it
        (the caller then reads the chunk again).

        Raises
        ------
        DataError
            When a digest differs from the recorded one.
        """
        with self._lock:
            old_rows = int(self._rows[chunk]) if chunk < len(self._rows) else 0
            old = [int(self._digest[chunk, s]) if old_rows else 0 for s, _, _ in digests]
        if old_rows not in (0, rows):
            return False
        for (_, label, h), then in zip(digests, old, strict=True):
            if then and h != then:
                raise DataError(
                    f"rows {row0}:{row0 + rows} changed after the run read them (content "
                    f"digest {then:016x} then, {h:016x} now): the data a run learned from "
                    "must not change (append rows instead)", array=label, chunk=chunk)
        self._record(chunk, rows, [(s, h) for s, _, h in digests])
        return True

    def _record(self, chunk: int, rows: int, digests) -> None:
        with self._lock:
            if chunk >= len(self._rows):
                grow = max(chunk + 1, 2 * len(self._rows)) - len(self._rows)
                self._digest = np.concatenate(
                    [self._digest, np.zeros((grow, len(SLOTS)), np.uint64)])
                self._rows = np.concatenate([self._rows, np.zeros(grow, np.uint32)])
                self._seen = np.concatenate([self._seen, np.zeros(grow, bool)])
            for s, h in digests:
                self._digest[chunk, s] = h
            self._rows[chunk] = rows
            self._seen[chunk] = True

    def to_dict(self) -> dict:
        """``{"digest": (n, 3) uint64, "rows": (n,) uint32, "chunk_rows"}``, trimmed to the
        last chunk recorded.
        """
        with self._lock:
            used = np.flatnonzero(self._rows)
            n = int(used[-1]) + 1 if used.size else 0
            return {"digest": self._digest[:n].copy(), "rows": self._rows[:n].copy(),
                    "chunk_rows": self.chunk_rows}

    @classmethod
    def from_dict(cls, d: dict | None) -> ChunkDigests:
        """Inverse of :meth:`to_dict` (an empty map for None)."""
        if not d:
            return cls()
        return cls(d.get("digest"), d.get("rows"), d.get("chunk_rows"))
