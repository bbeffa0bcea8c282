"""The floors under a one pass over a sparse store (issue 20): what the pass cannot go below
on this machine, measured part by part in one process, beside the raw read.

Usage::

    python scripts/sparse_floor.py /tmp/natgrad-sparse-data/synthetic-1e5x50.zarr
    python scripts/sparse_floor.py STORE --rounds 3 --batch-sizes 1024,16384 --json out.json

Per round, in this order (the machine may be shared: the ratios within a round are the
figures to compare; the load average is printed with them):

* *raw read*: every stored chunk of ``X/indptr``, ``X/indices``, ``X/data`` once, in order,
  through zarr (``sparse_bench_data.raw_read``), wall and CPU seconds of the process;
* *reader, in order* and *reader, shuffled*: a :class:`~natgrad_stream.data.sparse_source.
  SparseSource` over ``X`` and ``y`` as the fit opens it (checked, digested, the shuffled one
  permuted), batches consumed and dropped;
* *batch kernel*: the logistic loss, gradient and diagonal-metric kernel the fit runs on
  every batch (``glm_sparse_accumulate``), alone, over the store's rows already in memory
  and already shuffled, at each batch size (its outputs cleared per batch, as the fit does):
  no reader, no step, no refresh.

The bound printed: a pass needs at least the decoding of every stored chunk once (the raw
read's CPU) plus the batch kernel's CPU, spread perfectly over the cores; its best ratio to
the raw read is ``raw wall / ((raw CPU + kernel) / cores)``. Everything else a pass does
(the shuffled read's extra work, the step's vector work over all P parameters, refreshes)
comes on top.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_bench_data as sbd  # noqa: E402
import sparse_profile  # noqa: E402


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def reader(store: Path, batch_size: int, shuffle: bool) -> int:
    """Rows of one pass of the fit's reader over ``X`` and ``y`` (batches dropped)."""
    return sparse_profile.reader_alone(store, batch_size, shuffle)["rows"]


class KernelPass:
    """The logistic batch kernel over the store's rows, loaded once and shuffled once."""

    def __init__(self, store: Path, seed: int = 0):
        import zarr

        g = zarr.open_group(str(store), mode="r")
        X = sbd.load_csr(g["X"], dtype=np.float32)
        y = np.asarray(g["y"][:], dtype=np.float64)
        perm = np.random.default_rng(seed).permutation(X.shape[0])
        X = X[perm]
        self.data, self.y = X.data, y[perm]
        self.indices = X.indices.astype(np.int32)
        self.indptr = X.indptr.astype(np.int64)
        self.n, P = X.shape[0], X.shape[1] + 1
        self.theta = np.random.default_rng(seed + 1).normal(0.0, 0.05, P)
        self.grad, self.fdiag, self.xrow = np.zeros(P), np.zeros(P), np.zeros(P)

    def run(self, batch_size: int) -> float:
        """Loss sum of one pass in batches of ``batch_size`` rows."""
        from natgrad_stream.models import _glm_sparse_kernels as SK
        from natgrad_stream.models._glm_kernels import (
            FAMILY_LOGISTIC,
            METRIC_MODEL,
            STRUCTURE_DIAGONAL,
        )

        empty, dummy, total = np.zeros(0), np.zeros((1, 1)), 0.0
        for a in range(0, self.n, batch_size):
            b = min(a + batch_size, self.n)
            self.grad[:] = 0.0
            self.fdiag[:] = 0.0
            loss, _ = SK.glm_sparse_accumulate(
                self.data, self.indices, self.indptr[a:b + 1], self.y[a:b], empty, empty,
                self.theta, FAMILY_LOGISTIC, METRIC_MODEL, STRUCTURE_DIAGONAL, self.grad,
                dummy, self.fdiag, self.xrow)
            total += loss
        return total


def one_round(store: Path, xg, kernel: KernelPass, batch_sizes, reader_batch: int) -> dict:
    raw_wall, raw_cpu, _ = _timed(lambda: sbd.raw_read(xg, repeats=1))
    out = {"load": os.getloadavg()[0], "raw_wall": raw_wall, "raw_cpu": raw_cpu}
    for name, shuffle in (("reader_in_order", False), ("reader_shuffled", True)):
        r = sparse_profile.reader_alone(store, reader_batch, shuffle)
        out[name] = {"wall": r["seconds"], "cpu": r["cpu_seconds"]}
    out["kernel"] = {}
    for b in batch_sizes:
        wall, cpu, _ = _timed(lambda b=b: kernel.run(b))
        out["kernel"][str(b)] = {"wall": wall, "cpu": cpu}
    return out


def bound(r: dict, batch_size: int, cores: int) -> float:
    """Best ratio of a pass to the raw read: decoding once plus the kernel, on ``cores``."""
    floor = (r["raw_cpu"] + r["kernel"][str(batch_size)]["cpu"]) / cores
    return r["raw_wall"] / floor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1024,16384",
                    help="comma-separated batch sizes of the kernel-alone pass")
    ap.add_argument("--cores", type=int, default=None,
                    help="cores for the bound (default: this machine's)")
    ap.add_argument("--json", type=Path, help="also write the rounds here")
    args = ap.parse_args(argv)
    import zarr

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cores = args.cores or os.cpu_count() or 1
    xg = zarr.open_group(str(args.store), mode="r")["X"]
    n = sbd.csr_shape(xg)[0]
    kernel = KernelPass(args.store)
    kernel.run(sizes[0])  # warm-up: the kernel's cache loads
    rounds = []
    for _ in range(args.rounds):
        r = one_round(args.store, xg, kernel, sizes, sizes[0])
        rounds.append(r)
        ks = ", ".join(f"batch {b}: {r['kernel'][str(b)]['cpu']:.2f} s CPU "
                       f"(bound {bound(r, b, cores):.2f}× raw)" for b in sizes)
        print(f"load {r['load']:4.1f}: raw read {r['raw_wall']:.2f} s wall "
              f"{r['raw_cpu']:.2f} s CPU ({n / r['raw_wall']:,.0f} rows/s); reader in order "
              f"{r['reader_in_order']['wall']:.2f} s / {r['reader_in_order']['cpu']:.2f} s "
              f"CPU, shuffled {r['reader_shuffled']['wall']:.2f} s / "
              f"{r['reader_shuffled']['cpu']:.2f} s CPU; kernel alone {ks}")
    med = {b: statistics.median(bound(r, b, cores) for r in rounds) for b in sizes}
    print(f"median of {len(rounds)} on {cores} cores: best one pass (decode once + kernel, "
          "nothing else) " + ", ".join(f"batch {b}: {med[b]:.2f}× the raw read"
                                        for b in sizes))
    if args.json:
        args.json.write_text(json.dumps({"store": str(args.store), "rows": n, "cores": cores,
                                         "rounds": rounds,
                                         "bound": {str(b): med[b] for b in sizes}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
