"""Atomic, verified, pickle-free checkpoints.

A checkpoint is one ``.npz`` file: every array of the learner's state under a
slash-separated key (``"fisher/sum"``), plus one entry ``"__meta__"`` holding a JSON
document (scalars, options, cursor, RNG state, a BLAKE2b checksum of every array, and the
digest of the checkpoint it follows, its *predecessor*) as a unicode scalar. It is written
to a temporary file in the same directory, flushed and fsynced, then moved into place with
:func:`os.replace` and the directory fsynced, so a reader sees either the old or the new
checkpoint, never a torn one. Loading uses ``allow_pickle=False`` (a checkpoint cannot
execute code), opens regular files only (a FIFO or device is refused before it is
opened), and verifies every checksum: a checkpoint whose checksum index is missing or does
not match its arrays is damaged, and refused rather than resumed from. A checkpoint's
*digest* is the BLAKE2b hash of its ``__meta__`` document, which holds every array's
checksum: it names the checkpoint's whole content.

Checkpoints of format 1 (written before checksums were mandatory and runs recorded their
identity) are *legacy*: they load only with ``allow_legacy=True``.

:func:`save_checkpoint` with ``keep=k`` keeps the previous ``k − 1`` checkpoints beside
the newest as ``NAME.1.npz``, ``NAME.2.npz``, … (newest first);
:func:`load_latest_checkpoint` falls back to them, with a one-line warning naming the
checkpoint used and why the newer ones were not, when the newest is damaged, missing or
not a regular file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natgrad_stream.errors import CheckpointError

#: Bumped when the layout changes incompatibly. Format 2: the checksum index is
#: mandatory and each checkpoint names its predecessor.
FORMAT_VERSION = 2
#: Formats read only with ``allow_legacy=True`` (format 1: checksums optional, no run
#: identity, no predecessor).
LEGACY_VERSIONS = (1,)
_META = "__meta__"
_TMP_PREFIX, _TMP_SUFFIX = ".checkpoint-", ".npz.tmp"
#: Held while a checkpoint is being written (a signal handler can defer to it).
WRITING = threading.Event()


class LegacyCheckpointError(CheckpointError):
    """A legacy checkpoint (format 1) read without ``allow_legacy``."""


def _holds_arrays(value) -> bool:
    """Whether ``value`` is an ndarray or a dict with one somewhere inside."""
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, dict) and any(_holds_arrays(v) for v in value.values())


def flatten(tree: dict, prefix: str = "") -> tuple[dict, dict]:
    """Split a nested dict into ``(arrays, meta)``: ndarrays by slash keys, the rest as JSON."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {}
    for key, value in tree.items():
        if "/" in key and _holds_arrays(value):  # JSON-only entries may (array paths)
            raise ValueError(f"state keys of arrays may not contain '/': {key!r}")
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


def _digest(meta_text: str) -> str:
    """A checkpoint's digest: the hash of its ``__meta__`` document."""
    return hashlib.blake2b(meta_text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its ``state`` (nested dict), the ``path`` read, its
    ``digest``, the digest of the checkpoint it follows (``predecessor``, None for a run's
    first) and whether it is ``legacy`` (format 1).
    """

    state: dict
    path: Path
    digest: str
    predecessor: str | None
    legacy: bool


def save_checkpoint(path, state: dict, *, keep: int = 1) -> Path:
    """Write ``state`` (nested dict of arrays and JSON values) atomically to ``path``.

    With ``keep > 1`` the checkpoint it replaces becomes ``NAME.1.npz`` (and so on, up to
    ``keep − 1`` previous ones). Never writes through a symbolic link.
    """
    path = Path(path)
    write_checkpoint(path, state, keep=keep)
    return path


def write_checkpoint(path, state: dict, *, keep: int = 1,
                     predecessor: str | None = None) -> str:
    """:func:`save_checkpoint` recording ``predecessor`` (the digest of the checkpoint
    this state continues from, None for a run's first); returns the new one's digest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, meta = flatten(state)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {"format_version": FORMAT_VERSION, "state": meta,
            "checksums": {k: _checksum(v) for k, v in payload.items()},
            "predecessor": predecessor}
    meta_text = json.dumps(meta, allow_nan=True)
    payload[_META] = np.array(meta_text)
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
    return _digest(meta_text)


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


def file_kind(path: Path) -> str | None:
    """None for a regular file (symbolic links followed), else what ``path`` is:
    ``"missing"``, ``"a directory"``, ``"a FIFO"``, ... (:func:`os.stat` only: nothing is
    opened).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: Path, what: str = "checkpoint"):
    """``path`` opened for binary reading if it is a regular file, checked before opening
    and on the open descriptor (a FIFO swapped in meanwhile cannot block the open: it is
    opened non-blocking); else :class:`CheckpointError` saying what ``what`` is instead.
    """
    kind = file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{what} {path} is {kind}, not a {what} file"
                              if kind != "missing" else f"no {what} at {path}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{what} {path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_checkpoint(path, *, allow_legacy: bool = False) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        When the file is missing, not a regular file, unreadable, truncated, has no
        checksum index or fails a checksum, has another format version, or is a legacy
        checkpoint (format 1) and ``allow_legacy`` is False; the message names the file.
    """
    path = Path(path)
    try:
        with open_regular(path) as fh, np.load(fh, allow_pickle=False) as npz:
            meta_text = str(npz[_META][()])
            meta = json.loads(meta_text)
            arrays = {k: npz[k] for k in npz.files if k != _META}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (damaged or truncated: "
                              f"{type(exc).__name__}: {exc})") from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    legacy = version in LEGACY_VERSIONS
    if version != FORMAT_VERSION and not legacy:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, "
            f"this natgrad_stream reads version {FORMAT_VERSION}")
    if legacy and not allow_legacy:
        raise LegacyCheckpointError(
            f"checkpoint {path} is a legacy checkpoint (format {version}, written by an "
            "earlier natgrad_stream: not bound to its run, its checksums optional); to use "
            "it anyway pass --allow-legacy-checkpoint (Python: allow_legacy=True)")
    checksums = meta.get("checksums")
    if checksums is None and legacy:  # format 1 before checksums: nothing to verify
        pass
    elif not isinstance(checksums, dict) or not all(isinstance(v, str)
                                                    for v in checksums.values()):
        raise CheckpointError(f"checkpoint {path} is damaged: it has no valid checksum index "
                              "(its arrays cannot be verified)")
    else:
        if set(checksums) != set(arrays):
            raise CheckpointError(f"checkpoint {path} is damaged: its arrays do not match "
                                  "its index")
        bad = sorted(k for k, v in arrays.items() if _checksum(v) != checksums[k])
        if bad:
            raise CheckpointError(f"checkpoint {path} is damaged: checksum mismatch in "
                                  f"{', '.join(bad)}")
    if not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} is damaged: it holds no state")
    predecessor = meta.get("predecessor")
    return Checkpoint(unflatten(arrays, meta["state"]), path, _digest(meta_text),
                      predecessor if isinstance(predecessor, str) else None, legacy)


def load_checkpoint(path, *, allow_legacy: bool = False) -> dict:
    """The verified state of a checkpoint (nested dict): :func:`read_checkpoint`'s."""
    return read_checkpoint(path, allow_legacy=allow_legacy).state


def read_predecessor(path) -> str | None:
    """The predecessor digest a checkpoint records (its ``__meta__`` alone is read, not
    verified); None when it records none or cannot be read.
    """
    try:
        with open_regular(Path(path)) as fh, np.load(fh, allow_pickle=False) as npz:
            meta = json.loads(str(npz[_META][()]))
    except (CheckpointError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            zlib.error):
        return None
    value = meta.get("predecessor") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def checkpoint_candidates(path) -> list[Path]:
    """``path`` and its previous checkpoints ``NAME.1.npz``, … beside it, newest first."""
    path = Path(path)
    older = sorted((p for p in path.parent.glob(f"{path.stem}.[0-9]*{path.suffix}")
                    if _rotation_index(p) < 1 << 30), key=_rotation_index)
    return [path, *older]


def load_latest_checkpoint(path, *, set_damaged_aside: bool = False,
                           allow_legacy: bool = False, check=None) -> tuple[dict, Path]:
    """The newest good checkpoint among ``path``, ``NAME.1.npz``, …: ``(state, file)``.

    :func:`read_latest_checkpoint`'s, as a state dict.
    """
    found = read_latest_checkpoint(path, set_damaged_aside=set_damaged_aside,
                                   allow_legacy=allow_legacy, check=check)
    return found.state, found.path


def read_latest_checkpoint(path, *, set_damaged_aside: bool = False,
                           allow_legacy: bool = False, check=None) -> Checkpoint:
    """The newest good checkpoint among ``path``, ``NAME.1.npz``, … (a :class:`Checkpoint`).

    A newer checkpoint that is missing, not a regular file or damaged is skipped, and the
    one used is named in one warning saying why each newer one was not (with
    ``set_damaged_aside``, damaged ones are renamed by :func:`set_aside` so that no later
    rotation keeps it). ``check(checkpoint)`` may refuse a good one by raising
    :class:`CheckpointError` (e.g. a checkpoint of another run): that error propagates,
    as does a legacy checkpoint's when ``allow_legacy`` is False. A checkpoint that an
    older-named one continues from (its digest is that one's predecessor) is stale: an
    earlier state put in the newer's place, refused. When none is good,
    :class:`CheckpointError` lists what was tried.
    """
    path = Path(path)
    candidates = checkpoint_candidates(path)
    problems, damaged = [], []
    for i, candidate in enumerate(candidates):
        kind = file_kind(candidate)
        if kind is not None:
            if kind != "missing" or candidate == path:
                problems.append(f"{candidate.name} is {kind}")
            continue
        try:
            found = read_checkpoint(candidate, allow_legacy=allow_legacy)
        except LegacyCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            damaged.append(candidate)
            continue
        if check is not None:
            check(found)
        for later in candidates[i + 1:]:
            if read_predecessor(later) == found.digest:
                raise CheckpointError(
                    f"checkpoint {candidate} is stale: the older-named {later.name} "
                    "continues from it, so an earlier state of the run was put in place of "
                    f"a newer one; remove {candidate.name} to use {later.name}, or restore "
                    "the run's newest checkpoint")
        if set_damaged_aside:
            for bad in damaged:
                set_aside(bad)
        if problems:
            warnings.warn(f"using the older checkpoint {candidate} ("
                          f"{'; '.join(problems)})", RuntimeWarning, stacklevel=3)
        return found
    if all(file_kind(c) == "missing" for c in candidates):
        raise CheckpointError(f"no checkpoint at {path}")
    raise CheckpointError(f"no good checkpoint in {path.parent}: {'; '.join(problems)}")


def _rotation_index(p: Path) -> int:
    try:
        return int(p.stem.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30
