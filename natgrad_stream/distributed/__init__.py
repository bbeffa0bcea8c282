"""Scale-out on Dask: the same learner, its passes and steps run as tasks on a cluster.

``NaturalGradientLearner.fit(path, client=client)`` (or ``natgrad-stream fit --dask
ADDRESS`` / ``--dask-workers N``) reads a Zarr store on the workers, chunk by chunk, and
merges the per-chunk sums on the driver in a fixed tree (:mod:`.stats`), so results do not
depend on placement. See :mod:`.backend` for the two modes and the README's "Scaling out".
"""

from natgrad_stream.distributed.backend import BLOCK_CHUNKS, DaskBackend
from natgrad_stream.distributed.cluster import dask_client
from natgrad_stream.distributed.stats import Stats, tree_sum
from natgrad_stream.distributed.worker import DataSpec

__all__ = ["BLOCK_CHUNKS", "DaskBackend", "DataSpec", "Stats", "dask_client", "tree_sum"]
