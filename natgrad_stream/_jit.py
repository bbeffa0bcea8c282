"""The one place that spells Numba's compilation options.

Every kernel module imports :func:`jit` from here, so caching, GIL release and the
fastmath flag set are uniform. ``nnan`` and ``ninf`` are deliberately absent: the
kernels' NaN/Inf guards must survive optimization.

Compiled kernels are cached where Numba puts them (``NUMBA_CACHE_DIR`` if set, else the
package's ``__pycache__`` directories, else Numba's per-user directory
``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``). When none of these is writable (a
system-wide install run by a user whose home is read-only or absent), Numba would refuse
every cached kernel (``no locator available``): :func:`cache_directory` then chooses a
private per-user directory in the temporary directory, or no cache with one warning.
"""

from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path

import numba

#: LLVM fast-math flags allowed in kernels: reassociation (vectorized reductions),
#: contraction (FMA), reciprocal approximations. Never ``nnan``/``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

_PACKAGE = Path(__file__).resolve().parent


def _writable(directory: Path) -> bool:
    """True when a file can be created in ``directory`` (made if missing), as Numba checks."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
        return True
    except OSError:
        return False


def _private_directory(directory: Path) -> bool:
    """``directory`` made (or found) owned by this user, mode 0700, not a symbolic link:
    cached kernels are code, so a directory others can write is never used.
    """
    try:
        directory.mkdir(mode=0o700, parents=False, exist_ok=True)
        st = os.lstat(directory)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & 0o077 and _writable(directory))


def _numba_user_cache() -> Path:
    """Numba's own per-user cache directory (``UserWideCacheLocator``)."""
    from numba.misc.appdirs import AppDirs

    return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)


def cache_directory(package: Path = _PACKAGE) -> tuple[bool, str | None]:
    """Where the kernels of ``package`` can be cached: ``(cache, directory)``.

    ``(True, None)``: Numba's own choice works (``NUMBA_CACHE_DIR``, the package's
    ``__pycache__`` directories, or Numba's per-user directory). ``(True, path)``: none
    of them is writable; ``path`` is a private directory for ``numba.config.CACHE_DIR``.
    ``(False, None)``: nothing is writable, compile without a cache.
    """
    if numba.config.CACHE_DIR and _writable(Path(numba.config.CACHE_DIR)):
        return True, None
    sources = {p.parent for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    if all(_writable(d / "__pycache__") for d in sources):
        return True, None
    if _writable(_numba_user_cache()):
        return True, None
    private = Path(tempfile.gettempdir()) / f"natgrad_stream-numba-{os.getuid()}"
    if _private_directory(private):
        return True, str(private)
    return False, None


def _configure_cache() -> bool:
    cache, directory = cache_directory()
    if directory is not None:
        numba.config.CACHE_DIR = directory
    elif not cache:
        warnings.warn("no writable directory for Numba's cache (NUMBA_CACHE_DIR, the "
                      "package's __pycache__, $XDG_CACHE_HOME or ~/.cache, the temporary "
                      "directory): kernels compile at every start; set NUMBA_CACHE_DIR to a "
                      "writable directory", RuntimeWarning, stacklevel=2)
    return cache


#: Whether kernels are cached (decided once, before the first kernel is compiled).
CACHE = _configure_cache()


def jit(func=None, *, parallel: bool = False):
    """Compile ``func`` in nopython mode with the project's options.

    Parameters
    ----------
    func : callable, optional
        The kernel. When omitted, returns a decorator.
    parallel : bool
        Enable ``numba.prange`` parallel loops.
    """
    options = dict(cache=CACHE, nogil=True, fastmath=set(FASTMATH), parallel=parallel)
    if func is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(func)


def num_threads() -> int:
    """Number of threads Numba's parallel kernels will use."""
    return numba.get_num_threads()
