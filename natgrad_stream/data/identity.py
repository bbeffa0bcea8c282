"""What a run was trained on: the store's location and, per array, its shape, chunks,
dtype, codec chain (byte order included), a fingerprint of its metadata (without the
shape, which grows when rows are appended) and one of its first chunk's values, so a
resumed run can tell other data from the same data grown, and name what changed. The
values of every chunk a run read are compared by their digests
(:mod:`natgrad_stream.data.digests`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def data_identity(data, names, *, head_rows: dict | None = None) -> dict | None:
    """Identity of the Zarr group behind ``data`` (a path) for the arrays ``names``
    (None entries skipped); None for in-memory data.

    ``head_rows`` (name -> rows) fixes how many leading rows the values fingerprint
    covers, to compare with a recorded identity (default: the first chunk, or fewer rows
    when the array is shorter; a first chunk still filling up is compared over the rows it
    had).
    """
    if not isinstance(data, str | os.PathLike):
        return None
    from natgrad_stream.data.tables import is_table_path, table_identity

    if is_table_path(data):  # Parquet, CSV, .npy: the files' sizes and metadata
        return table_identity(data) if os.path.exists(data) else None
    import zarr

    from natgrad_stream.data.stream import read_rows, zarr_member

    try:
        group = zarr.open_group(str(data), mode="r")
    except Exception:  # noqa: BLE001 - not a group: the source reports the real error
        return None
    from natgrad_stream.data.csr_store import is_csr_group

    arrays = {}
    expanded = []
    for name in names:
        if name is None:
            continue
        member = zarr_member(group, name)  # (bad metadata: a DataError naming the array)
        # a CSR group (sparse X) is identified by its three arrays
        expanded += ([f"{name}/{part}" for part in ("data", "indices", "indptr")]
                     if is_csr_group(member) else [name])
    for name in expanded:
        a = zarr_member(group, name)
        if a is None or not hasattr(a, "chunks"):
            continue
        meta = a.metadata.to_dict()
        meta.pop("shape", None)
        meta.pop("attributes", None)
        k = min(int(a.chunks[0]), int(a.shape[0]))
        if head_rows and name in head_rows:
            k = min(int(head_rows[name]), int(a.shape[0]))
        head = read_rows(a, 0, k, label=name)
        arrays[name] = {
            "shape": list(a.shape), "chunks": list(a.chunks), "dtype": str(a.dtype),
            "codecs": _codecs(meta.get("codecs")),
            "metadata": _digest(json.dumps(meta, sort_keys=True, default=str).encode()),
            "head_rows": k, "first_chunk": _digest(np.ascontiguousarray(head).tobytes()),
        }
    return {"path": str(Path(data).resolve()), "arrays": arrays}


def _codecs(codecs) -> str | None:
    """The codec chain as one line, e.g. ``bytes(endian=little) > zstd(level=1)``."""
    if not isinstance(codecs, list | tuple):
        return None
    out = []
    for c in codecs:
        if not isinstance(c, dict):
            out.append(str(c))
            continue
        conf = c.get("configuration") or {}
        args = ", ".join(f"{k}={v}" for k, v in sorted(conf.items()))
        out.append(f"{c.get('name')}({args})" if args else str(c.get("name")))
    return " > ".join(out)


def compare_identity(recorded: dict | None, current: dict | None) -> tuple[list, list]:
    """``(differences, notes)`` between a run's recorded data identity and the data given
    now. Differences make other data (shapes other than more rows, chunks, dtype,
    metadata, first chunk's values, arrays); notes are benign (a moved store, rows
    appended).
    """
    if not recorded or not current:
        return [], []
    differences, notes = [], []
    if recorded["path"] != current["path"]:
        notes.append(f"the data moved from {recorded['path']} to {current['path']}")
    if "files" in recorded or "files" in current:  # a table: its files
        from natgrad_stream.data.tables import compare_files

        more, also = compare_files(recorded.get("files", {}), current.get("files", {}))
        differences += more
        notes += also
    for name, old in recorded["arrays"].items():
        new = current["arrays"].get(name)
        if new is None:
            differences.append(f"array {name!r} is missing")
            continue
        for key in ("dtype", "chunks", "codecs", "metadata", "first_chunk"):
            if key == "codecs" and (old.get(key) is None or new.get(key) is None):
                continue  # a record from before codecs were recorded: the metadata's
            if key == "metadata" and any(old.get(k) != new.get(k) for k in ("dtype", "codecs")):
                continue  # named already
            if old[key] != new[key]:
                what = {"first_chunk": "values (first chunk)", "metadata": "metadata"}.get(
                    key, key)
                shown = "" if key in ("metadata", "first_chunk") else \
                    f": {old[key]} then, {new[key]} now"
                differences.append(f"array {name!r} has other {what}{shown}")
        if old["shape"][1:] != new["shape"][1:] or new["shape"][0] < old["shape"][0]:
            differences.append(f"array {name!r} has shape {tuple(new['shape'])}, the run was "
                               f"trained on {tuple(old['shape'])}")
        elif new["shape"][0] > old["shape"][0]:
            notes.append(f"array {name!r} has {new['shape'][0] - old['shape'][0]} rows "
                         "appended since the checkpoint (they join at the next epoch)")
    return differences, notes
