"""Whole-chunk reads of zstd-compressed Zarr v3 arrays, decoded straight into our buffers.

zarr's codec pipeline decodes a chunk into a buffer of its own and then copies the selection
into the caller's ``out`` array, with asyncio bookkeeping per chunk. For the layout this
project writes and reads most — codecs ``[bytes (native endian), zstd]``, no filters or
sharding, C order, chunks spanning every axis but the first — in a local directory store, a
whole-chunk read needs none of that: map the chunk's file and let zstd decompress it in
place. Every other store and layout takes zarr's public API
(:mod:`natgrad_stream.data.zarr_reads`), which yields the same batches.
Measured on 65,536 × 100 float32 chunks: about 20% less CPU per row than the zarr path
(``scripts/bench.py`` reports the reader's rate). Anything else takes zarr's own path.

Frames with content checksums are verified by zstd as it decodes them; an array with a
manifest (:mod:`natgrad_stream.data.manifest`) has each chunk's size and checksum compared
with its entry first, from the mapped bytes.
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from natgrad_stream._files import SpecialFileError, open_regular
from natgrad_stream.data.manifest import Manifest, frame_has_checksum
from natgrad_stream.data.metadata import missing_chunk_error
from natgrad_stream.errors import DataError

_POOL: ThreadPoolExecutor | None = None
_POOL_PID = -1


def _pool() -> ThreadPoolExecutor:
    """One decode thread per core (zstd releases the GIL while it decompresses).

    Made per process: a forked child inherits the pool object but not its threads, and
    would wait forever on it.
    """
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                   thread_name_prefix="natgrad-zstd")
        _POOL_PID = os.getpid()
    return _POOL


class DirectChunks:
    """Whole-chunk decoder for one Zarr v3 array, or None from :meth:`for_array`.

    Attributes
    ----------
    chunk_rows : int
        Rows per chunk (the first axis).
    """

    def __init__(self, arr, label: str = "array"):
        from numcodecs import Zstd

        self.label = label
        self._store_path = arr.store_path
        self._md = arr.metadata
        self.chunk_rows = int(arr.chunks[0])
        self.n_rows = int(arr.shape[0])
        self.shape_tail = tuple(int(s) for s in arr.shape[1:])
        self.dtype = np.dtype(arr.dtype)
        self._codec = Zstd()
        self._checksummed = bool(getattr(self._md.codecs[-1], "checksum", False))
        self._manifest = Manifest.of(arr, label)

    @classmethod
    def for_array(cls, arr, label: str = "array") -> DirectChunks | None:
        """A decoder when ``arr`` has the simple layout in a local store (see the module
        docstring).
        """
        try:
            from zarr.codecs import BytesCodec, ZstdCodec

            md = arr.metadata
            if md.zarr_format != 3 or len(md.codecs) != 2:
                return None
            raw, zstd = md.codecs
            if not (isinstance(raw, BytesCodec) and isinstance(zstd, ZstdCodec)):
                return None
            if raw.endian is not None and raw.endian.value != sys.byteorder:
                return None
            if tuple(arr.chunks[1:]) != tuple(arr.shape[1:]) or arr.order != "C":
                return None
            decoder = cls(arr, label)
            return decoder if decoder.local_path(0) is not None else None
        except (AttributeError, ImportError, TypeError, ValueError):
            return None

    def local_path(self, a: int):
        """The file holding the chunk at row ``a`` when the store is a local directory."""
        store = self._store_path.store
        root = getattr(store, "root", None)
        if type(store).__name__ != "LocalStore" or root is None:
            return None
        prefix = self._store_path.path
        key = self._key(a)
        return Path(root) / (f"{prefix}/{key}" if prefix else key)

    def spans(self, a: int, b: int) -> list[tuple[int, int, int]] | None:
        """``(chunk start, lo, hi)`` of each stored chunk holding rows of ``a:b``, its rows
        ``lo:hi`` being theirs (:meth:`read_into` each into ``out[lo − a:hi − a]``); None
        when ``a:b`` reaches past the rows this decoder was opened with.
        """
        if not 0 <= a < b <= self.n_rows:
            return None
        R = self.chunk_rows
        return [(s, max(a, s), min(b, s + R)) for s in range(a - a % R, b, R)]

    def read_into(self, a: int, b: int, out: np.ndarray, lo: int | None = None) -> None:
        """Read, then decompress, the chunk at row ``a`` into ``out``: its rows ``lo:b``
        (default ``a:b``; part of a chunk is decompressed whole, then copied) (in the
        calling thread).

        The chunk file is memory-mapped and decoded from the page cache without a copy.
        """
        path = self.local_path(a)
        try:
            fh = open_regular(path)  # a FIFO or device is refused, never waited on
        except (FileNotFoundError, NotADirectoryError):
            raise self.missing(a) from None
        except SpecialFileError as exc:
            raise DataError(f"chunk file {path} {exc.strerror}", array=self.label,
                            chunk=a // self.chunk_rows, row=a) from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                self.decode(b"", a, b, out, lo)
                return
            failed = False
            with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
                view = np.frombuffer(mm, dtype=np.uint8)
                try:
                    self.decode(view, a, b, out, lo)
                except DataError:  # its traceback would pin the map: report from a copy
                    failed = True
                del view
            if failed:
                fh.seek(0)
                self.decode(fh.read(), a, b, out, lo)

    def missing(self, a: int) -> DataError:
        """The error for the chunk at row ``a``, absent from the store (see
        :mod:`natgrad_stream.data.metadata`: never read as the fill value).
        """
        sp = self._store_path
        key = f"{sp.path}/{self._key(a)}" if sp.path else self._key(a)
        return missing_chunk_error(self.label, chunk=a // self.chunk_rows, row=a, key=key,
                                   where=str(getattr(sp.store, "root", sp.store)),
                                   fill_value=self._md.fill_value)

    def covers(self, a: int, b: int) -> bool:
        """True when rows ``a:b`` are exactly one whole chunk (the last may be short)."""
        return a % self.chunk_rows == 0 and b == min(a + self.chunk_rows, self.n_rows)

    def _key(self, a: int) -> str:
        key = self._md.encode_chunk_key((a // self.chunk_rows,) + (0,) * len(self.shape_tail))
        return key

    def decode(self, data, a: int, b: int, out: np.ndarray, lo: int | None = None) -> None:
        """Decompress one chunk's bytes (the chunk at row ``a``) into ``out``: its rows
        ``lo:b`` (default ``a:b``).

        Raises
        ------
        DataError
            When the chunk is not in the store (``data`` None), or the stored bytes are not
            a valid zstd frame of the chunk's size.
        """
        if data is None:
            raise self.missing(a)
        first = a if lo is None else lo
        full_shape = (self.chunk_rows,) + self.shape_tail
        expected = int(np.prod(full_shape)) * self.dtype.itemsize
        where = {"array": self.label, "chunk": a // self.chunk_rows, "row": a}
        if self._manifest is not None:
            self._verify(a, data)
        try:
            size = frame_content_size(data)
            if self._checksummed and not frame_has_checksum(data):
                raise DataError(f"is stored without the content checksum its array declares "
                                f"(key {self._full_key(a)!r}, rows {a}:{b}): damaged or "
                                "written by another writer", **where)
            if size is None:  # the frame does not record its size: decode, then compare
                raw = self._codec.decode(data)
                size = len(memoryview(raw).cast("B"))
                if size == expected:
                    out[...] = np.frombuffer(raw, dtype=self.dtype).reshape(full_shape)[
                        first - a:b - a]
                    return
            if size != expected:  # a short frame would leave part of ``out`` unwritten
                raise DataError(f"decompresses to {size} bytes, not the chunk's {expected}",
                                **where)
            if first == a and b - a == self.chunk_rows and out.flags.c_contiguous:
                self._codec.decode(data, out=out)
                return
            full = np.empty(full_shape, dtype=self.dtype)
            self._codec.decode(data, out=full)
        except (RuntimeError, ValueError, TypeError) as exc:
            if isinstance(exc, DataError):
                raise
            if "checksum" in str(exc):
                raise DataError(f"its content does not match the checksum stored with it: "
                                f"the bytes of key {self._full_key(a)!r} (rows {a}:{b}) "
                                "are damaged", **where) from exc
            raise DataError(f"could not be decompressed from key {self._full_key(a)!r} "
                            f"(rows {a}:{b}): {exc}", **where) from exc
        out[...] = full[first - a:b - a]

    def _full_key(self, a: int) -> str:
        prefix = self._store_path.path
        return f"{prefix}/{self._key(a)}" if prefix else self._key(a)

    def _verify(self, a: int, data) -> None:
        """Compare the chunk at row ``a`` with the manifest; on a mismatch, once more with
        the manifest in ``zarr.json`` now (an append may have rewritten the chunk).
        """
        key = self._full_key(a)
        problem = self._manifest.problem(key, data)
        if problem is None:
            return
        root = Path(self._store_path.store.root)
        try:
            fresh = self._manifest.fresh((root / self._manifest.metadata_key()).read_bytes())
        except OSError:
            fresh = self._manifest
        if fresh is not None and fresh.problem(key, data) is not None:
            raise self._manifest.error(key, problem, str(root))
        self._manifest = fresh  # None: the manifest was removed (an unverified store)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def frame_content_size(data) -> int | None:
    """Decompressed size recorded in a zstd frame header (RFC 8878), or None if absent.

    Raises
    ------
    ValueError
        When ``data`` does not start with a zstd frame.
    """
    head = bytes(memoryview(data).cast("B")[:18])
    if len(head) < 6 or head[:4] != _ZSTD_MAGIC:
        raise ValueError("not a zstd frame (bad magic number)")
    fhd = head[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0:
        return None
    if len(head) < pos + width:
        raise ValueError("truncated zstd frame header")
    value = int.from_bytes(head[pos:pos + width], "little")
    return value + 256 if width == 2 else value


def run_in_order(tasks) -> None:
    """Run callables on the decode pool; re-raise the first failure in task order."""
    futures = [_pool().submit(t) for t in tasks]
    errors = []
    for f in futures:
        try:
            f.result()
        except BaseException as exc:  # noqa: BLE001 (re-raised below, in order)
            errors.append(exc)
    if errors:
        raise errors[0]


def read_direct(jobs) -> None:
    """Run ``(decoder, a, b, out, lo)`` jobs (:meth:`DirectChunks.read_into`) concurrently
    on the decode pool (in order for errors).
    """
    run_in_order([functools.partial(dec.read_into, a, b, out, lo)
                  for dec, a, b, out, lo in jobs])
