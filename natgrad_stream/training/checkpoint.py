"""Atomic, verified, pickle-free checkpoints.

A checkpoint is one ``.npz`` file: every array of the learner's state under a
slash-separated key (``"fisher/sum"``), plus one entry ``"__meta__"`` holding a JSON
document (scalars, options, cursor, RNG state, and a BLAKE2b checksum of every array) as a
unicode scalar. It is written to a temporary file in the same directory, flushed and
fsynced, then moved into place with :func:`os.replace` and the directory fsynced, so a
reader sees either the old or the new checkpoint, never a torn one. Loading uses
``allow_pickle=False`` (a checkpoint cannot execute code) and verifies every checksum, so
a damaged file is refused rather than resumed from.

:func:`save_checkpoint` with ``keep=k`` keeps the previous ``k − 1`` checkpoints beside
the newest as ``NAME.1.npz``, ``NAME.2.npz``, … (newest first);
:func:`load_latest_checkpoint` falls back to them, with a warning, when the newest is
damaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from natgrad_stream.errors import CheckpointError

#: Bumped when the layout changes incompatibly.
FORMAT_VERSION = 1
_META = "__meta__"
_TMP_PREFIX, _TMP_SUFFIX = ".checkpoint-", ".npz.tmp"
#: Held while a checkpoint is being written (a signal handler can defer to it).
WRITING = threading.Event()


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


def _checksum(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def rotated(path: Path, k: int) -> Path:
    """The ``k``-th previous checkpoint beside ``path`` (``k = 0``: ``path`` itself)."""
    return path if k == 0 else path.with_name(f"{path.stem}.{k}{path.suffix}")


def save_checkpoint(path, state: dict, *, keep: int = 1) -> Path:
    """Write ``state`` (nested dict of arrays and JSON values) atomically to ``path``.

    With ``keep > 1`` the checkpoint it replaces becomes ``NAME.1.npz`` (and so on, up to
    ``keep − 1`` previous ones). Never writes through a symbolic link.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, meta = flatten(state)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {"format_version": FORMAT_VERSION, "state": meta,
            "checksums": {k: _checksum(v) for k, v in payload.items()}}
    payload[_META] = np.array(json.dumps(meta, allow_nan=True))
    WRITING.set()
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **payload)
                fh.flush()
                os.fsync(fh.fileno())
            for k in range(max(1, keep) - 1, 1, -1):  # shift the previous ones down
                older = rotated(path, k - 1)
                if older.is_file() and not older.is_symlink():
                    os.replace(older, rotated(path, k))
            if keep > 1 and path.is_file() and not path.is_symlink():
                _link_over(path, rotated(path, 1))  # NAME.npz itself stays in place
            os.replace(tmp, path)
        except OSError as exc:  # e.g. a full disk: name the file; the old one is intact
            Path(tmp).unlink(missing_ok=True)
            raise OSError(exc.errno, f"{exc.strerror} (writing a checkpoint; the previous "
                          "one is intact)", str(path)) from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    finally:
        WRITING.clear()
    return path


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link, else a copy), so
    that ``src`` exists at every moment of a rotation.
    """
    tmp = dst.with_name(f"{_TMP_PREFIX}link-{os.getpid()}{_TMP_SUFFIX}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``NAME.damaged-N.npz`` (kept for inspection, never
    rotated or loaded again); returns the new path.
    """
    k = 0
    while True:
        dest = path.with_name(f"{path.stem}.damaged-{k}{path.suffix}")
        if not dest.exists():
            os.replace(path, dest)
            return dest
        k += 1


def remove_rotated(path) -> None:
    """Delete the previous checkpoints ``NAME.1.npz``, … beside ``path`` (a replaced run's)."""
    path = Path(path)
    for older in path.parent.glob(f"{path.stem}.[0-9]*{path.suffix}"):
        older.unlink(missing_ok=True)


def remove_stale_temporaries(directory) -> list[Path]:
    """Delete checkpoint temp files left by killed writers; returns what was removed."""
    removed = []
    for tmp in Path(directory).glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


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
    """Read and verify a checkpoint written by :func:`save_checkpoint` (nested dict).

    Raises
    ------
    CheckpointError
        When the file is missing, unreadable, truncated, fails a checksum, or has another
        format version; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            meta = json.loads(str(npz[_META][()]))
            arrays = {k: npz[k] for k in npz.files if k != _META}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (damaged or truncated: "
                              f"{type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, "
            f"this natgrad_stream reads version {FORMAT_VERSION}")
    checksums = meta.get("checksums")
    if checksums is not None:  # checkpoints written before checksums have none
        if set(checksums) != set(arrays):
            raise CheckpointError(f"checkpoint {path} is damaged: its arrays do not match "
                                  "its index")
        bad = sorted(k for k, v in arrays.items() if _checksum(v) != checksums[k])
        if bad:
            raise CheckpointError(f"checkpoint {path} is damaged: checksum mismatch in "
                                  f"{', '.join(bad)}")
    return unflatten(arrays, meta["state"])


def load_latest_checkpoint(path, *, set_damaged_aside: bool = False) -> tuple[dict, Path]:
    """The newest good checkpoint among ``path``, ``NAME.1.npz``, …: ``(state, file)``.

    A damaged newer checkpoint is skipped with a warning naming it (and, with
    ``set_damaged_aside``, renamed by :func:`set_aside` so that no later rotation keeps
    it); when none is good, :class:`CheckpointError` lists what was tried.
    """
    path = Path(path)
    candidates = [path] + sorted(path.parent.glob(f"{path.stem}.[0-9]*{path.suffix}"),
                                 key=_rotation_index)
    problems, damaged = [], []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as exc:
            problems.append(str(exc))
            damaged.append(candidate)
            continue
        if set_damaged_aside:
            for bad in damaged:
                set_aside(bad)
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resuming from the previous checkpoint "
                          f"{candidate.name}", RuntimeWarning, stacklevel=2)
        return state, candidate
    if not problems:
        raise CheckpointError(f"no checkpoint at {path}")
    raise CheckpointError(f"no good checkpoint in {path.parent}: {'; '.join(problems)}")


def _rotation_index(p: Path) -> int:
    try:
        return int(p.stem.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30
