"""Reads of Zarr arrays through zarr's public API, with missing and damaged chunks named.

zarr reads a chunk that is absent from the store as the array's fill value (the Zarr spec
allows it). For training data that is a silent wrong answer, so every array read here is
viewed through a :class:`CheckedStore`, a :class:`zarr.storage.WrapperStore` that raises
:class:`MissingObject` when the store has no object for a chunk key, and
:class:`DamagedObject` when a blosc frame is shorter than its header says (blosc would
decode it from whatever memory follows), and :class:`MismatchedObject` when an array with a
manifest (:mod:`natgrad_stream.data.manifest`) reads an object other than the one written
at its key. The checks ride on the reads themselves: no extra request per chunk, on any
store.

The reads are zarr's own synchronous ``Array.get_orthogonal_selection`` into our buffers
(``out=``, through the public :mod:`zarr.buffer` module); the requests of one read run at
once from the decode pool's threads, so their chunks decompress concurrently. Nothing here
uses zarr's internal modules or changes its global configuration.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from natgrad_stream._files import SpecialFileError, check_regular
from natgrad_stream.data.metadata import blosc_frame_problem
from natgrad_stream.errors import DataError

#: Failures of a zarr read that are not about the data.
NOT_DATA_ERRORS = (MemoryError, RecursionError, DataError)


class MissingObject(LookupError):
    """The store holds no object for chunk (or shard) ``key``."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class DamagedObject(ValueError):
    """The stored object ``key`` is visibly damaged (``problem`` says how)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


class MismatchedObject(ValueError):
    """The stored object ``key`` is not the one its array's manifest records there."""

    def __init__(self, key: str, error: DataError):
        super().__init__(str(error))
        self.key, self.error = key, error


def configure_zarr_threads(n: int | None = None) -> int:
    """Give zarr ``n`` codec threads (default one per core, at least 2), unless its
    configuration already names a count; returns the count in force.

    The library never calls this: zarr's configuration is global, and belongs to the
    application. The command line calls it at start. zarr's own default is asyncio's
    executor (cores + 4 threads): on 2 cores that oversubscribed the machine and glibc kept
    a freed chunk-sized decode buffer per thread (measured on a 4M × 100 store read through
    zarr's codecs: 2 threads ran 1.3× faster with 16% less peak memory). zarr creates its
    pool once, at its first read, so call this before.
    """
    import os

    import zarr

    if zarr.config.get("threading.max_workers") is None:
        zarr.config.set({"threading.max_workers": int(n or max(2, os.cpu_count() or 2))})
    return int(zarr.config.get("threading.max_workers"))


def _checked_store_class():
    from zarr.storage import WrapperStore

    class CheckedStore(WrapperStore):
        """A store whose chunk reads never come back empty: a missing object raises
        :class:`MissingObject`, a short blosc frame :class:`DamagedObject`, an object its
        array's manifest does not record at its key :class:`MismatchedObject`.

        Only for arrays built by :func:`checked_view`, which read nothing but chunk keys
        through it (their metadata is already loaded).
        """

        def __init__(self, store, blosc_frames: bool = False, manifest=None):
            super().__init__(store)
            self.blosc_frames = bool(blosc_frames)
            self.manifest = manifest

        def _with_store(self, store):
            return type(self)(store, self.blosc_frames, self.manifest)

        async def get(self, key, prototype, byte_range=None):
            _refuse_special_file(self._store, key)
            buf = await self._store.get(key, prototype, byte_range)
            if buf is None:
                raise MissingObject(key)
            if byte_range is None and (self.blosc_frames or self.manifest is not None):
                raw = buf.as_numpy_array()
                if self.blosc_frames:
                    problem = blosc_frame_problem(raw[:16].tobytes(), int(raw.size))
                    if problem is not None:
                        raise DamagedObject(key, problem)
                if self.manifest is not None:
                    await self._verify(key, raw, prototype)
            return buf

        async def _verify(self, key, raw, prototype) -> None:
            """Compare ``raw`` with the manifest; on a mismatch, once more with the manifest
            in the store now (an append may have rewritten the chunk since it was read).
            """
            manifest = self.manifest
            problem = manifest.problem(key, raw)
            if problem is None:
                return
            meta = await self._store.get(manifest.metadata_key(), prototype)
            fresh = manifest if meta is None else manifest.fresh(meta.to_bytes())
            if fresh is None or fresh.problem(key, raw) is None:
                return  # the manifest was removed, or now records this object
            where = str(getattr(self._store, "root", self._store))
            raise MismatchedObject(key, manifest.error(key, problem, where))

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                _refuse_special_file(self._store, key)
            bufs = await self._store.get_partial_values(prototype, key_ranges)
            for (key, _), buf in zip(key_ranges, bufs, strict=True):
                if buf is None:
                    raise MissingObject(key)
            return bufs

    return CheckedStore


def _refuse_special_file(store, key: str) -> None:
    """:class:`DamagedObject` when ``key`` of a local store is a FIFO, device or socket,
    which reading would wait on for ever.
    """
    root = getattr(store, "root", None)
    if root is not None and type(store).__name__ == "LocalStore":
        try:
            check_regular(Path(root) / key)
        except SpecialFileError as exc:
            raise DamagedObject(key, exc.strerror) from None


@functools.cache
def _store_class():
    return _checked_store_class()


def checked_view(arr, *, blosc_frames: bool = False, manifest=None):
    """``arr`` (a :class:`zarr.Array`) read through a :class:`CheckedStore`: the same
    metadata, path and configuration, with missing and damaged chunks raised, and with a
    :class:`~natgrad_stream.data.manifest.Manifest`, objects other than those it records.
    """
    import zarr
    from zarr.storage import StorePath

    path = arr.store_path.path
    store = _store_class()(arr.store_path.store, blosc_frames, manifest)
    return zarr.Array(zarr.AsyncArray(arr.metadata, StorePath(store, path), arr.config))


def read_into(arr, a: int, b: int, out: np.ndarray, columns=None) -> None:
    """Decode rows ``a:b`` (and ``columns``, a tuple of slices of the other axes; default
    all) of the Zarr array ``arr`` into ``out``, through zarr's synchronous API.
    """
    from zarr.buffer import cpu, default_buffer_prototype

    sel = (slice(a, b),) + (tuple(columns) if columns is not None
                            else (slice(None),) * (out.ndim - 1))
    arr.get_orthogonal_selection(sel, out=cpu.NDBuffer.from_numpy_array(out),
                                 prototype=default_buffer_prototype())


def read_all(jobs, run) -> list:
    """Run every ``job()`` through ``run`` (a callable that runs a list of callables
    concurrently and re-raises the first failure in order), collecting each job's exception
    (or None) instead of raising it, except failures that are not about the data.
    """
    results: list = [None] * len(jobs)

    def wrap(i, job):
        try:
            job()
        except NOT_DATA_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 (returned to the caller, who locates it)
            results[i] = exc

    run([functools.partial(wrap, i, job) for i, job in enumerate(jobs)])
    return results
