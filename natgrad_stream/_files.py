"""Special files (FIFOs, devices, sockets) refused before they are read, and directories
published whole (:func:`staged_directory`).

Opening a FIFO blocks until a writer appears, and a device never ends (``/dev/zero``):
a chunk, config, checkpoint or run file that is one would hang a command that no signal
can stop. Every file the package reads is checked here first, by :func:`check_regular`
(a ``stat``, for files another library opens) or :func:`open_regular` (opens without
blocking, then checks what was opened).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


class SpecialFileError(OSError):
    """``filename`` is not a regular file (``strerror`` says what it is)."""

    def __init__(self, path, kind: str):
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", os.fspath(path))
        self.kind = kind


def kind_of(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is, when it is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path) -> None:
    """Raise :class:`SpecialFileError` when ``path`` exists and is not a regular file
    (symbolic links followed); a missing path passes, for the caller to report.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    kind = kind_of(mode)
    if kind is not None:
        raise SpecialFileError(path, kind)


def open_fd(path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags, mode)`` of a regular file (created with ``O_CREAT``), in
    blocking mode; a FIFO, device or socket raises :class:`SpecialFileError` at once.
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing that has no reader
            check_regular(path)
        raise
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise SpecialFileError(path, kind)
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular(path, mode: str = "rb"):
    """``open(path, mode)`` for reading a regular file; a FIFO, device or socket raises
    :class:`SpecialFileError` without blocking.
    """
    if any(c in mode for c in "wax+"):
        raise ValueError(f"open_regular reads only, got mode {mode!r}")
    fd = open_fd(path, os.O_RDONLY)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


#: Metadata objects of a Zarr directory store (v3 and v2).
_ZARR_METADATA = frozenset({"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"})


def check_zarr_metadata(root) -> None:
    """Raise :class:`SpecialFileError` for the first metadata file of the Zarr directory
    store at ``root`` (``zarr.json``, ``.zarray``, ...; any depth) that is not a regular
    file, before zarr reads it. Chunk directories (``c/``, v3's default key encoding) are
    not listed: their files are checked as they are read.
    """
    if not os.path.isdir(root):
        return
    for top, dirs, files in os.walk(root):
        for name in _ZARR_METADATA.intersection(files):
            check_regular(os.path.join(top, name))
        if "c" in dirs and not os.path.lexists(os.path.join(top, "c", "zarr.json")):
            dirs.remove("c")


@contextlib.contextmanager
def staged_directory(path):
    """Write a directory whole or not at all: yields a temporary sibling of ``path``
    (``NAME.tmp-PID``, emptied first) to write into; when the block ends without an
    exception, an existing ``path`` is removed and the temporary one renamed into place,
    otherwise the temporary one is removed and the exception goes on (a store half written
    by a failure or a signal never stands at ``path``).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
