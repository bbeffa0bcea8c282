"""Pin the BLAS libraries' own thread pools while the learner runs.

The learner's dense algebra is small (P×P matrix-vector products, one eigendecomposition
per refresh) and runs beside Numba's worker threads and the reader thread. OpenBLAS's
spinning worker threads then contend for the same cores: measured here on 2 cores, a
101×101 product took ~11 ms instead of ~50 µs and a whole pass ran at half speed. So
:func:`limited_blas_threads` sets the BLAS pools to one thread for the duration of a fit.

It uses ``threadpoolctl`` when installed; otherwise it calls the OpenBLAS builds that NumPy
and SciPy wheels bundle (``openblas_set_num_threads`` under its various symbol names)
through ctypes, finding them in the process's loaded libraries (Linux ``/proc/self/maps``).
Elsewhere without threadpoolctl it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_")
_cache: list | None = None


def _openblas_handles() -> list:
    """(setter, getter) ctypes functions of every loaded OpenBLAS."""
    global _cache
    if _cache is not None:
        return _cache
    handles = []
    maps = Path("/proc/self/maps")
    paths = set()
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            if "openblas" in Path(path).name.lower():
                paths.add(path)
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            getter = getattr(lib, name.replace("_set_", "_get_"), None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                handles.append((setter, getter))
                break
    _cache = handles
    return handles


@contextlib.contextmanager
def limited_blas_threads(n: int | None = 1):
    """Context manager: BLAS pools use at most ``n`` threads inside (None: no change)."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        handles = _openblas_handles()
        before = [getter() for _, getter in handles]
        for setter, _ in handles:
            setter(int(n))
        try:
            yield
        finally:
            for (setter, _), k in zip(handles, before, strict=True):
                setter(k)
    else:
        with threadpool_limits(limits=int(n), user_api="blas"):
            yield
