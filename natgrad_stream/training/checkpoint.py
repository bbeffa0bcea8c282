"""Atomic, pickle-free checkpoints.

A checkpoint is one ``.npz`` file: every array of the learner's state under a
slash-separated key (``"fisher/sum"``), plus one entry ``"__meta__"`` holding a JSON
document (scalars, options, cursor, RNG state) as a unicode scalar. It is written to a
temporary file in the same directory, flushed and fsynced, then moved into place with
:func:`os.replace`, so a reader sees either the old or the new checkpoint, never a torn
one. Loading uses ``allow_pickle=False``: a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from natgrad_stream.errors import CheckpointError

#: Bumped when the layout changes incompatibly.
FORMAT_VERSION = 1
_META = "__meta__"


def flatten(tree: dict, prefix: str = "") -> tuple[dict, dict]:
    """Split a nested dict into ``(arrays, meta)``: ndarrays by slash keys, the rest as JSON."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"state keys may not contain '/': {key!r}")
        if isinstance(value, np.ndarray):
            arrays[prefix + key] = value
        elif isinstance(value, dict):
            sub_arrays, sub_meta = flatten(value, prefix + key + "/")
            arrays.update(sub_arrays)
            meta[key] = sub_meta
        else:
            meta[key] = value.item() if isinstance(value, np.generic) else value
    return arrays, meta


def unflatten(arrays: dict, meta: dict) -> dict:
    """Inverse of :func:`flatten`."""
    tree = json.loads(json.dumps(meta))
    for key, value in arrays.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (nested dict of arrays and JSON values) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, meta = flatten(state)
    meta = {"format_version": FORMAT_VERSION, "state": meta}
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    payload[_META] = np.array(json.dumps(meta, allow_nan=True))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz[_META][()]))
            arrays = {k: npz[k] for k in npz.files if k != _META}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version')}, "
            f"this natgrad_stream reads version {FORMAT_VERSION}"
        )
    return unflatten(arrays, meta["state"])
