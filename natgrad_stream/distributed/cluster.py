"""Connecting to a Dask cluster, or starting a local one for the length of a fit."""

from __future__ import annotations

import contextlib
import logging

from natgrad_stream.errors import DistributedError, OptionError

log = logging.getLogger("natgrad_stream")

#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 10.0


def require_distributed():
    """Import :mod:`distributed`, or raise an :class:`OptionError` saying how to get it."""
    try:
        import distributed
    except ImportError as exc:
        raise OptionError("--dask needs the 'distributed' package: pip install "
                          "'natgrad-stream[dask]'") from exc
    return distributed


@contextlib.contextmanager
def dask_client(address: str | None = None, workers: int | None = None):
    """A :class:`distributed.Client` of the scheduler at ``address``
    (``tcp://host:port``), or of a :class:`distributed.LocalCluster` of ``workers`` worker
    processes (one thread each) started here and closed on exit. The client talks to
    workers directly (``direct_to_workers=True``): the lanes' per-step calls and results
    do not pass through the scheduler.

    Raises
    ------
    OptionError
        When both or neither are given, or ``distributed`` is missing.
    DistributedError
        When the scheduler does not answer within :data:`CONNECT_TIMEOUT` seconds.
    """
    if (address is None) == (workers is None):
        raise OptionError("give one of --dask ADDRESS and --dask-workers N")
    distributed = require_distributed()
    if address is not None:
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT,
                                        set_as_default=False, direct_to_workers=True)
        except (OSError, TimeoutError) as exc:
            raise DistributedError(f"no Dask scheduler answers at {address} ({exc})") \
                from exc
        with client:
            log.info("connected to the Dask scheduler at %s (%d workers)", address,
                     len(client.nthreads()))
            yield client
        return
    if int(workers) < 1:
        raise OptionError(f"--dask-workers must be >= 1, got {workers}")
    try:
        cluster = distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
    except (RuntimeError, OSError, TimeoutError) as exc:
        raise DistributedError(f"could not start a local Dask cluster of {workers} workers "
                               f"({type(exc).__name__}: {exc})") from exc
    with cluster, distributed.Client(cluster, set_as_default=False,
                                     direct_to_workers=True) as client:
        log.info("started a local Dask cluster of %d worker processes at %s", int(workers),
                 cluster.scheduler_address)
        yield client
