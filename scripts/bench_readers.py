"""Measure whether the direct zstd reader still wins over zarr's public read path, and what
verifying a self-verifying store costs.

Streams one local zstd store (the layout ``make-data`` writes: checksummed frames and a
manifest, :mod:`natgrad_stream.data.manifest`) through ``BatchStream`` with the direct
reader on and off, and the same rows stored without checksums or manifest (as ``make-data``
wrote them before), alternating, in one process, and reports rows/s and CPU seconds per
million rows for each, with their ratios. zarr's codec threads are configured as the
command line configures them (one per core).

    python scripts/bench_readers.py [--rows 1000000] [--features 100] [--repeats 5]

Writes ``scripts/results/readers-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from natgrad_stream.data import configure_zarr_threads, open_zarr
from natgrad_stream.data import stream as stream_mod
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.data.stream import read_rows

RESULTS = Path(__file__).resolve().parent / "results"


def one_pass(path, direct: bool) -> tuple[float, float]:
    """(rows/s, CPU seconds per million rows) of one unshuffled pass."""
    stream_mod._DIRECT_ENABLED = direct
    source = open_zarr(path)
    rows = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with source.batches(batch_size=65536, shuffle=False) as stream:
        for batch in stream:
            rows += batch.X.shape[0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return rows / wall, cpu / rows * 1e6


def unverified_copy(src, dst) -> None:
    """The arrays of the group ``src`` written to ``dst`` as ``make-data`` wrote them before
    stores verified themselves: zstd level 1 without checksums, no manifest.
    """
    import zarr

    group = zarr.open_group(str(src), mode="r")
    out = zarr.open_group(str(dst), mode="w", zarr_format=3)
    out.attrs.update(group.attrs.asdict())
    for name in group.array_keys():
        a = group[name]
        b = out.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype,
                             compressors=zarr.codecs.ZstdCodec(level=1),
                             config={"write_empty_chunks": True},
                             dimension_names=a.metadata.dimension_names)
        for r in range(0, a.shape[0], a.chunks[0]):
            b[r:r + a.chunks[0]] = read_rows(a, r, r + a.chunks[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    configure_zarr_threads()
    with tempfile.TemporaryDirectory(prefix="natgrad-readers-") as tmp:
        path, plain = Path(tmp) / "data.zarr", Path(tmp) / "unverified.zarr"
        make_dataset(path, task="logistic", rows=args.rows, features=args.features, seed=0)
        unverified_copy(path, plain)
        for p in (path, plain):  # warm-up: page cache, JIT
            one_pass(p, True), one_pass(p, False)
        runs = {"direct": [], "zarr": [], "direct_unverified": [], "zarr_unverified": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(one_pass(plain if name.endswith("_unverified") else path,
                                           name.startswith("direct")))
    med = {k: np.median(np.array(v), axis=0) for k, v in runs.items()}
    # the cost of verification, per reader (> 1: slower): the ratio of the medians, and of
    # the best runs (the least disturbed by other load on a shared machine)
    best = {k: np.array([np.max(np.array(v)[:, 0]), np.min(np.array(v)[:, 1])])
            for k, v in runs.items()}
    cost = {f"verify_{r}_{m}_ratio{tag}": float(s[f"{r}_unverified"][0] / s[r][0]
                                                if m == "time" else
                                                s[r][1] / s[f"{r}_unverified"][1])
            for r in ("direct", "zarr") for m in ("time", "cpu")
            for tag, s in (("", med), ("_best", best))}
    result = {
        "rows": args.rows, "features": args.features, "repeats": args.repeats,
        "direct_rows_per_s": float(med["direct"][0]), "zarr_rows_per_s": float(med["zarr"][0]),
        "direct_cpu_s_per_mrow": float(med["direct"][1]),
        "zarr_cpu_s_per_mrow": float(med["zarr"][1]),
        "speed_ratio_direct_over_zarr": float(med["direct"][0] / med["zarr"][0]),
        "cpu_ratio_direct_over_zarr": float(med["direct"][1] / med["zarr"][1]),
        **{f"{k}_rows_per_s": float(med[k][0]) for k in ("direct_unverified",
                                                           "zarr_unverified")},
        **{f"{k}_cpu_s_per_mrow": float(med[k][1]) for k in ("direct_unverified",
                                                             "zarr_unverified")},
        **cost,
        "runs": {k: [list(map(float, r)) for r in v] for k, v in runs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "readers-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"direct zstd: {result['direct_rows_per_s']:,.0f} rows/s, "
          f"{result['direct_cpu_s_per_mrow']:.3f} CPU s per M rows")
    print(f"zarr public: {result['zarr_rows_per_s']:,.0f} rows/s, "
          f"{result['zarr_cpu_s_per_mrow']:.3f} CPU s per M rows")
    print(f"direct / zarr: speed ×{result['speed_ratio_direct_over_zarr']:.2f}, "
          f"CPU ×{result['cpu_ratio_direct_over_zarr']:.2f}")
    for r in ("direct", "zarr"):
        print(f"verified / unverified store, {r} reader: time "
              f"×{cost[f'verify_{r}_time_ratio']:.3f} (best runs "
              f"×{cost[f'verify_{r}_time_ratio_best']:.3f}), CPU "
              f"×{cost[f'verify_{r}_cpu_ratio']:.3f} (best runs "
              f"×{cost[f'verify_{r}_cpu_ratio_best']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
