"""The one place that spells Numba's compilation options.

Every kernel module imports :func:`jit` from here, so caching, GIL release and the
fastmath flag set are uniform. ``nnan`` and ``ninf`` are deliberately absent: the
kernels' NaN/Inf guards must survive optimization.
"""

from __future__ import annotations

import numba

#: LLVM fast-math flags allowed in kernels: reassociation (vectorized reductions),
#: contraction (FMA), reciprocal approximations. Never ``nnan``/``ninf``.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})


def jit(func=None, *, parallel: bool = False):
    """Compile ``func`` in nopython mode with the project's options.

    Parameters
    ----------
    func : callable, optional
        The kernel. When omitted, returns a decorator.
    parallel : bool
        Enable ``numba.prange`` parallel loops.
    """
    options = dict(cache=True, nogil=True, fastmath=set(FASTMATH), parallel=parallel)
    if func is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(func)


def num_threads() -> int:
    """Number of threads Numba's parallel kernels will use."""
    return numba.get_num_threads()
