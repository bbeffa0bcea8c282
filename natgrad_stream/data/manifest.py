"""Self-verifying stores: checksummed chunks and a manifest of which chunk was written where.

Checksums
    The project's writers (``make-data``, :func:`~natgrad_stream.data.follow.append_rows`)
    store zstd frames with content checksums (:func:`checksummed_zstd`). zstd verifies a
    frame's checksum whenever it decodes it — in zarr's codec pipeline and in the direct
    reader alike — so damaged bytes are a :class:`~natgrad_stream.errors.DataError`, never
    wrong values. Stores written without checksums read as before.

Manifest
    The same writers record, in each array's attributes under :data:`MANIFEST_ATTR`, what
    they stored: the rows written and, per chunk key, the stored object's size and checksum
    (the frame's own content checksum — the last 4 bytes of a checksummed zstd frame — or,
    for other codecs, the CRC-32C of the stored bytes). Readers compare every whole object
    they read with its entry, from the bytes already in hand (for zstd frames, 4 bytes and
    the size): a chunk moved, copied or swapped from elsewhere, and rows past the rows
    written (a shape enlarged in ``zarr.json``, even inside the last chunk's padding), are
    refused with one line naming the array, chunk and rows. An append in progress marks
    the rows it rewrites (``writing_from``): until it records their new entries, those
    chunks are verified by their checksums only. A reader whose manifest is older than the
    chunk it reads re-reads the array's ``zarr.json`` once before refusing.

    Layout: ``{"version": 1, "hash": "zstd-checksum" | "crc32c", "rows": M,
    "writing_from": None | row, "chunks": {"c/0/0": [size, "8 hex digits"], ...}}``.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from natgrad_stream.errors import DataError

#: Array attribute holding the manifest.
MANIFEST_ATTR = "natgrad_stream_manifest"
MANIFEST_VERSION = 1
#: zstd level of the project's writers.
WRITER_ZSTD_LEVEL = 1
#: How to get past a manifest mismatch (the end of its message).
MANIFEST_HINT = (
    "if the store's chunks or shape were changed on purpose, record them with "
    "natgrad_stream.data.manifest.write_manifest(path)")


def checksummed_zstd(level: int = WRITER_ZSTD_LEVEL):
    """The compressor of the project's writers: zstd with content checksums."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=level, checksum=True)


def hash_kind(md) -> str:
    """``"zstd-checksum"`` when an array's stored objects are checksummed zstd frames, else
    ``"crc32c"`` (of the stored bytes).
    """
    try:
        from zarr.codecs import ZstdCodec

        last = md.codecs[-1]
        if isinstance(last, ZstdCodec) and last.checksum:
            return "zstd-checksum"
    except (AttributeError, ImportError, IndexError, TypeError):
        pass
    return "crc32c"


def frame_has_checksum(data) -> bool:
    """Whether ``data`` starts a zstd frame whose header announces a content checksum."""
    head = bytes(memoryview(data).cast("B")[:5])
    return len(head) == 5 and head[:4] == b"\x28\xb5\x2f\xfd" and bool(head[4] & 0x04)


def object_hash(kind: str, data) -> str | None:
    """The manifest's hash of one stored object (None: a zstd frame without a checksum)."""
    view = memoryview(data).cast("B")
    if kind == "zstd-checksum":
        if len(view) < 9 or not frame_has_checksum(view):
            return None
        return bytes(view[-4:]).hex()
    import google_crc32c

    return f"{google_crc32c.value(bytes(view)):08x}"


def _coords(md, rel_key: str) -> tuple[int, ...] | None:
    """Chunk-grid coordinates of an array-relative chunk key (None: not a chunk key)."""
    enc = md.chunk_key_encoding
    sep = getattr(enc, "separator", "/")
    parts = rel_key.split(sep)
    if getattr(enc, "name", "default") == "default":
        if not parts or parts[0] != "c":
            return None
        parts = parts[1:]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return None


class Manifest:
    """The manifest of one array, as read with its shape, checking stored objects.

    Parameters
    ----------
    doc : dict
        The :data:`MANIFEST_ATTR` attribute.
    md : zarr array metadata
        For the chunk grid and key encoding.
    shape : tuple of int
        The array's shape read with ``doc`` (from the same ``zarr.json``).
    prefix : str
        The array's path in its store (keys given to :meth:`problem` include it).
    label : str
        The array's name in messages.
    """

    def __init__(self, doc, md, shape, prefix: str, label: str):
        self.label, self.prefix, self._md = label, prefix, md
        self.shape = tuple(int(s) for s in shape)
        self.rows_per_object = int(md.chunk_grid.chunk_shape[0])
        try:
            if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {doc.get('version')!r} is not "
                                 f"{MANIFEST_VERSION}" if isinstance(doc, dict) else
                                 "not a JSON object")
            self.kind = doc["hash"]
            if self.kind not in ("zstd-checksum", "crc32c"):
                raise ValueError(f"unknown hash {self.kind!r}")
            self.rows = int(doc["rows"])
            w = doc.get("writing_from")
            self.writing_from = None if w is None else int(w)
            self.chunks = {str(k): (int(v[0]), str(v[1])) for k, v in doc["chunks"].items()}
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataError(f"has a malformed {MANIFEST_ATTR} attribute in its zarr.json "
                            f"({type(exc).__name__}: {exc}); delete it to read the array "
                            "unverified, or rewrite it with natgrad_stream.data.manifest."
                            "write_manifest(path)", array=label) from None

    @classmethod
    def of(cls, arr, label: str) -> Manifest | None:
        """The manifest of the zarr array ``arr``, or None when it has none."""
        md = arr.metadata
        doc = (getattr(md, "attributes", None) or {}).get(MANIFEST_ATTR)
        if doc is None:
            return None
        return cls(doc, md, md.shape, arr.store_path.path, label)

    def fresh(self, zarr_json: bytes | None) -> Manifest | None:
        """The array's manifest as recorded now in ``zarr_json`` (its bytes): None when it
        records none, this one when it cannot be parsed.
        """
        try:
            meta = json.loads(zarr_json)
            doc = (meta.get("attributes") or {}).get(MANIFEST_ATTR)
            shape = meta["shape"]
        except (TypeError, ValueError, KeyError, AttributeError):
            return self
        if doc is None:
            return None
        return Manifest(doc, self._md, shape, self.prefix, self.label)

    def metadata_key(self) -> str:
        """Store key of the array's ``zarr.json``."""
        return f"{self.prefix}/zarr.json" if self.prefix else "zarr.json"

    def rows_of(self, key: str) -> tuple[int, int] | None:
        """Rows ``(a, b)`` of the array held by the object at store key ``key``."""
        rel = key[len(self.prefix) + 1:] if self.prefix else key
        coords = _coords(self._md, rel)
        if not coords:
            return None
        a = coords[0] * self.rows_per_object
        return a, min(a + self.rows_per_object, self.shape[0])

    def problem(self, key: str, data) -> str | None:
        """What is wrong with ``data``, the stored object at store key ``key``, or None."""
        rel = key[len(self.prefix) + 1:] if self.prefix else key
        coords = _coords(self._md, rel)
        if not coords:
            return None
        R = self.rows_per_object
        lo = coords[0] * R
        if self.writing_from is not None and lo + R > self.writing_from:
            return None  # being rewritten by an append: its checksum still holds
        end_now, end_written = min(lo + R, self.shape[0]), min(lo + R, self.rows)
        if end_now > end_written:
            return (f"holds rows {max(lo, self.rows)}:{end_now} that were never written: the "
                    f"array's shape has {self.shape[0]} rows, its manifest records "
                    f"{self.rows} written (a shape enlarged in zarr.json, or rows appended "
                    "by a writer that keeps no manifest)")
        if end_now < end_written:
            return (f"ends at row {end_now} but its manifest records rows up to "
                    f"{end_written} written there (the shape in zarr.json was shrunk)")
        entry = self.chunks.get(rel)
        if entry is None:
            return "has no entry in the array's manifest"
        size, want = entry
        got = object_hash(self.kind, data)
        n = len(memoryview(data).cast("B"))
        if n != size or got != want:
            return (f"is not the chunk written there: {n} bytes with checksum {got}, its "
                    f"manifest records {size} bytes with checksum {want} (chunks swapped, "
                    "copied or overwritten)")
        return None

    def error(self, key: str, problem: str, where: str) -> DataError:
        """The error for the stored object ``key`` with ``problem``, rows located by key."""
        a, b = self.rows_of(key) or (0, 0)
        return DataError(f"stored chunk {key!r} in {where} (rows {a}:{b}) {problem}; "
                         f"{MANIFEST_HINT}", array=self.label,
                         chunk=a // self.rows_per_object, row=a)


# -- writing -----------------------------------------------------------------------------------
def _recording_store_class():
    from zarr.storage import WrapperStore

    class RecordingStore(WrapperStore):
        """A store that records the size and hash of every object written (or read) through
        it, keyed by store key; deleted keys map to None.
        """

        def __init__(self, store, kind: str, reads: bool = False):
            super().__init__(store)
            self.kind, self.reads, self.seen = kind, reads, {}

        def _with_store(self, store):
            clone = type(self)(store, self.kind, self.reads)
            clone.seen = self.seen
            return clone

        def _record(self, key, value) -> None:
            if not key.endswith("zarr.json"):
                raw = value.as_numpy_array()
                self.seen[key] = (int(raw.size), object_hash(self.kind, raw))

        async def set(self, key, value):
            await self._store.set(key, value)
            self._record(key, value)

        async def delete(self, key):
            await self._store.delete(key)
            self.seen[key] = None

        async def get(self, key, prototype, byte_range=None):
            buf = await self._store.get(key, prototype, byte_range)
            if buf is None and self.reads:
                from natgrad_stream.data.zarr_reads import MissingObject

                raise MissingObject(key)
            if self.reads and buf is not None and byte_range is None:
                self._record(key, buf)
            return buf

    return RecordingStore


@functools.cache
def _recording_class():
    return _recording_store_class()


def recording_view(arr, *, reads: bool = False):
    """``(view, seen)``: ``arr`` through a store that records what is written (with
    ``reads``, also read) through it, and the ``{key: (size, hash) | None}`` it fills.
    """
    import zarr
    from zarr.storage import StorePath

    store = _recording_class()(arr.store_path.store, hash_kind(arr.metadata), reads)
    view = zarr.Array(zarr.AsyncArray(arr.metadata, StorePath(store, arr.store_path.path),
                                      arr.config))
    return view, store.seen


def check_manifest_rows(arr, rows: int, label: str) -> None:
    """Refuse to append to ``arr`` after row ``rows`` when its manifest records fewer rows
    (rows written by a writer that keeps no manifest would stay unrecorded).

    Raises
    ------
    DataError
    """
    manifest = Manifest.of(arr, label)
    if manifest is not None and manifest.writing_from is None and manifest.rows < rows:
        raise DataError(f"its manifest records {manifest.rows} rows written but {rows} are "
                        f"there (rows {manifest.rows}:{rows} were written by a writer that "
                        f"keeps no manifest); {MANIFEST_HINT}", array=label,
                        chunk=manifest.rows // manifest.rows_per_object, row=manifest.rows)


def begin_rewrite(arr, from_row: int):
    """Mark rows from ``from_row`` of ``arr`` as being rewritten (only if it has a
    manifest); returns the array handle to keep writing through.
    """
    doc = (arr.metadata.attributes or {}).get(MANIFEST_ATTR)
    if not isinstance(doc, dict):
        return arr
    return arr.update_attributes({MANIFEST_ATTR: {**doc, "writing_from": int(from_row)}})


def record_manifest(arr, seen: dict, *, rows: int, replace: bool = False):
    """Record the objects ``seen`` (from :func:`recording_view`) in ``arr``'s manifest, which
    now covers ``rows`` rows; entries of chunks past them are dropped. Without ``replace``
    only an existing manifest is updated. Returns the array handle.
    """
    doc = (arr.metadata.attributes or {}).get(MANIFEST_ATTR)
    if not isinstance(doc, dict) or replace:
        if not replace:
            return arr
        doc = {"chunks": {}}
    prefix = arr.store_path.path
    md = arr.metadata
    R = int(md.chunk_grid.chunk_shape[0])
    chunks = dict(doc.get("chunks") or {})
    for key, entry in seen.items():
        rel = key[len(prefix) + 1:] if prefix else key
        if entry is None or entry[1] is None:
            chunks.pop(rel, None)
        else:
            chunks[rel] = [entry[0], entry[1]]
    for rel in list(chunks):
        coords = _coords(md, rel)
        if not coords or coords[0] * R >= rows:
            del chunks[rel]
    new = {"version": MANIFEST_VERSION, "hash": hash_kind(md), "rows": int(rows),
           "writing_from": None, "chunks": dict(sorted(chunks.items()))}
    return arr.update_attributes({MANIFEST_ATTR: new})


def write_manifest(path, names=None) -> dict[str, int]:
    """Record, for every array of the group at ``path`` (or ``names``), the manifest of
    what is stored now: each chunk is read and decoded once (so checksums are verified and a
    missing chunk is refused), then its size and hash are recorded with the array's rows.

    For stores whose chunks or shape were changed on purpose by another writer, and to give
    an older store a manifest. Returns the chunks recorded per array.
    """
    import zarr

    from natgrad_stream.data.metadata import StoredChunks, check_zarr_layout
    from natgrad_stream.data.zarr_reads import MissingObject, read_into

    group = zarr.open_group(str(path), mode="r+")
    recorded = {}
    for name in sorted(group.array_keys()) if names is None else names:
        arr = group[name]
        if arr.ndim == 0:
            continue
        check_zarr_layout(arr, name)
        stored = StoredChunks(arr, name)
        view, seen = recording_view(arr, reads=True)
        n, step = int(arr.shape[0]), stored.rows_per_object
        for a in range(0, n, step):
            out = np.empty((min(a + step, n) - a,) + tuple(arr.shape[1:]), dtype=arr.dtype)
            try:
                read_into(view, a, a + out.shape[0], out)
            except MissingObject as exc:
                raise stored.missing_error(a, exc.key, stored.chunk_rows) from None
            except (RuntimeError, ValueError, TypeError) as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"rows {a}:{a + out.shape[0]} could not be decoded, so their "
                                f"chunk is not recorded ({type(exc).__name__}: {exc})",
                                array=name, chunk=a // step, row=a) from None
        record_manifest(arr, seen, rows=n, replace=True)
        recorded[name] = sum(v is not None for v in seen.values())
    return recorded
