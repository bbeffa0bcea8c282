"""Zarr metadata and chunk presence, checked before anything is allocated or decoded.

Missing chunks
    zarr reads a chunk that is not in the store as the array's fill value. For training
    data that is a silent wrong answer (a deleted chunk file, or a shape enlarged in
    ``zarr.json`` without writing its chunks, would train on zeros), so every read path of
    :class:`~natgrad_stream.data.stream.ArraySource` refuses a missing chunk with a
    :class:`~natgrad_stream.errors.DataError` naming the array, the chunk and its store key.
    The price of this policy: a store written with zarr's default
    ``write_empty_chunks=False`` omits chunks that hold only the fill value (e.g. a chunk
    of all-0 labels) and is refused too. This project's writers store every chunk
    (``config={"write_empty_chunks": True}``); a store written otherwise is repaired with
    :func:`write_missing_chunks`, once its owner knows the gaps are such chunks.

Bounds
    A shape, chunk shape or stream plan is refused when it is impossible: a chunk
    dimension below 1, one chunk larger than the machine's memory, or a stream whose
    per-epoch chunk permutation and read buffers exceed it (:func:`memory_limit`).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
from pathlib import Path

import numpy as np

from natgrad_stream.errors import DataError

#: How to get past a missing-chunk error (the end of its message; ``{fill}`` is the fill
#: value).
MISSING_CHUNK_HINT = (
    "zarr would read it as the fill value{fill}. It was deleted, never written, or the "
    "shape in zarr.json was enlarged. If the store was written with zarr's default "
    "write_empty_chunks=False, which skips chunks holding only the fill value, rewrite it "
    "with config={'write_empty_chunks': True} or store the skipped chunks with "
    "natgrad_stream.data.metadata.write_missing_chunks(path)")


def memory_limit() -> int:
    """Bytes this process may use at most: physical memory, or a smaller cgroup limit."""
    limit = 1 << 40  # when the machine does not say
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def format_bytes(n: float) -> str:
    """``n`` bytes for a message (``"7.3 TiB"``)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def is_zarr_array(arr) -> bool:
    """Whether ``arr`` is a :class:`zarr.Array` (without importing zarr when it is not)."""
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(arr, zarr.Array)


def check_zarr_layout(arr, label: str) -> None:
    """Refuse a Zarr array whose metadata cannot be read safely.

    Raises
    ------
    DataError
        When the chunk grid is not regular, a chunk (or shard) dimension is below 1, the
        chunk shape does not match the array's dimensions, or one chunk would not fit in
        memory (zarr decodes whole chunks).
    """
    md = arr.metadata
    shape = tuple(int(s) for s in md.shape)
    grid = getattr(getattr(md, "chunk_grid", None), "chunk_shape", None)
    if grid is None:
        raise DataError("has a chunk grid other than 'regular', which cannot be read",
                        array=label)
    shapes = [tuple(int(c) for c in grid)]
    try:
        inner = tuple(int(c) for c in arr.chunks)  # chunks inside shards
    except (NotImplementedError, TypeError, ValueError):
        inner = shapes[0]
    if inner != shapes[0]:
        shapes.append(inner)
    for chunks in shapes:
        if len(chunks) != len(shape):
            raise DataError(f"has chunk shape {list(chunks)} in its zarr.json, which does not "
                            f"match its shape {list(shape)}", array=label)
        if min(chunks, default=1) < 1:
            raise DataError(f"has chunk shape {list(chunks)} in its zarr.json: every chunk "
                            "dimension must be at least 1", array=label)
    if min(shape, default=0) < 0:
        raise DataError(f"has shape {list(shape)} in its zarr.json", array=label)
    itemsize = getattr(getattr(arr, "dtype", None), "itemsize", 8)
    nbytes = math.prod(shapes[0]) * itemsize
    limit = memory_limit()
    if nbytes > limit:
        raise DataError(f"one stored chunk ({' × '.join(map(str, shapes[0]))} values in its "
                        f"zarr.json) needs {format_bytes(nbytes)} to decode, more than this "
                        f"machine's {format_bytes(limit)} of memory", array=label)


def check_plan_memory(label: str, *, n_chunks: int, buffer_bytes: int = 0,
                      what: str = "") -> None:
    """Refuse a stream whose chunk permutation (8 bytes per chunk) and buffers exceed memory.

    Raises
    ------
    DataError
        With what the plan needs and what is available.
    """
    order = 8 * int(n_chunks)
    need = order + int(buffer_bytes)
    limit = memory_limit()
    if need <= limit:
        return
    parts = [f"{format_bytes(order)} for the per-epoch order of its {n_chunks:,} chunks"]
    if buffer_bytes:
        parts.append(f"{format_bytes(buffer_bytes)} for {what or 'read buffers'}")
    raise DataError(f"streaming it needs {format_bytes(need)} of memory ({', '.join(parts)}), "
                    f"more than this machine's {format_bytes(limit)}; check the shape and "
                    "chunk shape in its zarr.json, or read fewer or smaller chunks at once",
                    array=label)


class StoredChunks:
    """The stored objects (chunk files, or shard files) of one Zarr array, by rows.

    Parameters
    ----------
    arr : zarr.Array
    label : str, optional
        The array's name in messages (default: its name in its group).

    Attributes
    ----------
    chunk_rows : int
        Rows per chunk (inside shards, for sharded arrays).
    rows_per_object : int
        Rows per stored object (chunk, or shard).
    """

    def __init__(self, arr, label: str | None = None):
        self._arr = arr
        self._md = arr.metadata
        self.label = label or arr.store_path.path.rsplit("/", 1)[-1] or "array"
        self.shape = tuple(int(s) for s in self._md.shape)
        self.grid = tuple(int(c) for c in self._md.chunk_grid.chunk_shape)
        self.rows_per_object = self.grid[0]
        try:
            self.chunk_rows = int(arr.chunks[0])
        except (AttributeError, IndexError, NotImplementedError, TypeError):
            self.chunk_rows = self.rows_per_object
        self.tail_coords = list(itertools.product(
            *(range(math.ceil(s / c)) for s, c in zip(self.shape[1:], self.grid[1:],
                                                       strict=True))))
        self._store = arr.store_path.store
        self._prefix = arr.store_path.path
        root = getattr(self._store, "root", None)
        self._root = (Path(root) if type(self._store).__name__ == "LocalStore"
                      and root is not None else None)
        self.fill_value = getattr(self._md, "fill_value", None)
        self._blosc = _stores_blosc_frames(self._md)

    def where(self) -> str:
        """The store's location, for messages."""
        return str(getattr(self._store, "root", self._store))

    def key(self, coords) -> str:
        """Store key of the object at chunk-grid ``coords``."""
        key = self._md.encode_chunk_key(tuple(int(c) for c in coords))
        return f"{self._prefix}/{key}" if self._prefix else key

    def objects(self, a: int, b: int, *, coords: bool = False):
        """``(first_row, key)`` of every stored object holding rows ``a:b``, in row order
        (``(first_row, grid_coords, key)`` with ``coords``).
        """
        R = self.rows_per_object
        out = []
        for rc in range(a // R, (b - 1) // R + 1):
            row = max(a, rc * R)
            for t in self.tail_coords:
                c = (rc,) + t
                out.append((row, c, self.key(c)) if coords else (row, self.key(c)))
        return out

    @functools.cached_property
    def checked(self):
        """The array read through a store that raises on missing or damaged objects, and on
        objects its manifest does not record (see :mod:`natgrad_stream.data.zarr_reads`).
        """
        from natgrad_stream.data.manifest import Manifest
        from natgrad_stream.data.zarr_reads import checked_view

        return checked_view(self._arr, blosc_frames=self._blosc,
                            manifest=Manifest.of(self._arr, self.label))

    def row_of(self, key: str, a: int, b: int) -> int:
        """First row, within ``a:b``, of the stored object ``key`` (``a`` if not among them)."""
        for row, k in self.objects(a, b):
            if k == key:
                return row
        return a

    def region(self, coords) -> tuple:
        """The slices, one per axis, of the array the object at grid ``coords`` holds."""
        return tuple(slice(c * g, min((c + 1) * g, s))
                     for c, g, s in zip(coords, self.grid, self.shape, strict=True))

    def read_region(self, coords, a: int | None = None, b: int | None = None) -> np.ndarray:
        """Rows ``a:b`` (default all) of the object at grid ``coords``, read through
        :attr:`checked` (so a missing or damaged object raises).
        """
        from natgrad_stream.data.zarr_reads import read_into

        rows, *cols = self.region(coords)
        a = rows.start if a is None else a
        b = rows.stop if b is None else b
        out = np.empty((b - a,) + tuple(s.stop - s.start for s in cols),
                       dtype=self._arr.dtype)
        read_into(self.checked, a, b, out, cols)
        return out

    def exists(self, coords) -> bool:
        """Whether the store holds the object at grid ``coords``: a ``stat`` for a local
        store, else a read of its first row through :attr:`checked` (zarr's public API has
        no synchronous existence test; the read raises when the object is absent).
        """
        if self._root is not None:
            return os.path.isfile(os.path.join(str(self._root), self.key(coords)))
        from natgrad_stream.data.zarr_reads import MissingObject

        first = int(coords[0]) * self.rows_per_object
        try:
            self.read_region(coords, first, first + 1)
        except MissingObject:
            return False
        except (MemoryError, RecursionError, OSError, TimeoutError):
            raise  # the store did not answer: neither present nor absent
        except Exception:  # noqa: BLE001 (present, though damaged: not ours to report here)
            return True
        return True

    def error(self, row: int, key: str, problem: str | None, chunk_rows: int) -> DataError:
        """The error for object ``key`` (first row ``row``): missing (``problem`` None) or
        damaged, located in chunks of ``chunk_rows`` rows.
        """
        if problem is None:
            return self.missing_error(row, key, chunk_rows)
        return DataError(f"could not be decoded from key {key!r} in {self.where()} "
                         f"({problem})", array=self.label, chunk=row // chunk_rows, row=row)

    def missing_error(self, row: int, key: str, chunk_rows: int) -> DataError:
        """The error for the missing object ``key`` (first row ``row``), located in chunks of
        ``chunk_rows`` rows.
        """
        return missing_chunk_error(self.label, chunk=row // chunk_rows, row=row, key=key,
                                   where=self.where(), fill_value=self.fill_value)


def _stores_blosc_frames(md) -> bool:
    """True when an array's stored objects are blosc frames (blosc is its last codec)."""
    try:
        if getattr(md, "zarr_format", 3) == 2:
            return getattr(getattr(md, "compressor", None), "codec_id", None) == "blosc"
        from zarr.codecs import BloscCodec

        return isinstance(md.codecs[-1], BloscCodec)
    except (AttributeError, ImportError, IndexError, TypeError):
        return False


def blosc_frame_problem(head: bytes, size: int) -> str | None:
    """What is wrong with a blosc frame of ``size`` bytes starting with ``head``, or None.

    The 16-byte header (c-blosc format 2) records the frame's length (bytes 12:16).
    """
    if len(head) < 16:
        return f"{size} bytes, shorter than a blosc header"
    cbytes = int.from_bytes(head[12:16], "little")
    if cbytes != size:
        return f"its blosc header records {cbytes} bytes but it holds {size}"
    return None


def missing_chunk_error(label: str, *, chunk: int, row: int, key: str, where: str = "",
                        fill_value=None) -> DataError:
    """The :class:`DataError` for a chunk that is not in the store."""
    loc = f"key {key!r}" + (f" in {where}" if where else "")
    fill_value = getattr(fill_value, "item", lambda: fill_value)()
    fill = "" if fill_value is None else f" {fill_value!r}"
    hint = MISSING_CHUNK_HINT.replace("{fill}", fill)
    return DataError(f"chunk is missing from the store ({loc}); {hint}", array=label,
                     chunk=chunk, row=row)


def write_missing_chunks(path, names=None) -> dict[str, int]:
    """Store, as the fill value, every chunk missing from the arrays of the group at ``path``.

    For stores written with zarr's default ``write_empty_chunks=False``, which skips chunks
    holding only the fill value; the streams of this package refuse missing chunks. Run it
    only when that is why chunks are missing: it also fills chunks that were lost.

    Parameters
    ----------
    path : path-like
        A Zarr group opened read-write.
    names : iterable of str, optional
        Arrays to repair (default: all arrays of the group).

    Returns
    -------
    dict
        Chunks written, per array.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    written = {}
    for name in sorted(group.array_keys()) if names is None else names:
        arr = group[name]
        check_zarr_layout(arr, name)
        arr = arr.with_config({"write_empty_chunks": True})
        stored = StoredChunks(arr, name)
        n = 0
        grid_counts = [math.ceil(s / c) for s, c in zip(stored.shape, stored.grid, strict=True)]
        for coords in itertools.product(*(range(k) for k in grid_counts)):
            if stored.exists(coords):
                continue
            arr[stored.region(coords)] = stored.fill_value
            n += 1
        written[name] = n
    return written


def group_attribute(group, name: str = "natgrad_stream") -> dict:
    """The group attribute ``name`` as a dict (empty when absent).

    Raises
    ------
    DataError
        When it is not a JSON object, naming the attribute and the store (instead of
        ``cannot convert dictionary update sequence element #0`` from deep inside).
    """
    where = getattr(group.store, "root", None) or group.store
    value = group.attrs.asdict().get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"group attribute {name!r} of {where} must be a JSON object, got "
                        f"{type(value).__name__}")
    return value


def attribute_int(meta: dict, key: str, where: str, *, minimum: int = 0) -> int | None:
    """``meta[key]`` as an int >= ``minimum`` (None when absent); a DataError naming
    ``where`` (the attribute's path and store) when it is anything else.
    """
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value
