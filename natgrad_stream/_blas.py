"""Pin the BLAS libraries' own thread pools while the learner runs.

The learner's dense algebra is small (P×P matrix-vector products, one eigendecomposition
per refresh) and runs beside Numba's worker threads and the reader thread. OpenBLAS's
spinning worker threads then contend for the same cores: measured here on 2 cores, a
101×101 product took ~11 ms instead of ~50 µs and a whole pass ran at half speed. So
:func:`limited_blas_threads` sets the BLAS pools to one thread for the duration of a fit,
through ``threadpoolctl`` (a dependency), which finds every loaded BLAS and restores its
setting afterwards.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def limited_blas_threads(n: int | None = 1):
    """Context manager: BLAS pools use at most ``n`` threads inside (None: no change)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield
