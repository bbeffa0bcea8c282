"""Measure whether the direct zstd reader still wins over zarr's public read path, what
verifying a self-verifying store costs, and what the run's content digests cost.

Verification: the same rows stored as ``make-data`` writes them (checksummed frames and a
manifest, :mod:`natgrad_stream.data.manifest`) and without checksums or manifest (as
``make-data`` wrote them before), alternating, through both readers.

Streams one local zstd store (the layout ``make-data`` writes) through ``BatchStream`` with
the direct reader on and off, and the direct reader with content digests
(:mod:`natgrad_stream.data.digests`, as every fit compares and records them), alternating,
in one process, and reports rows/s and CPU seconds per million rows for each, with their
ratios. A read-only pass is the strictest measure of the digests' cost: a training pass
adds the learning. zarr's codec threads are configured as the command line configures them
(one per core).

    python scripts/bench_readers.py [--rows 1000000] [--features 100] [--repeats 5]
                                    [--fit-repeats 5]

``--fit-repeats`` also times streaming training passes (``logistic``, default options)
with and without the digests, alternating, and the digests' own CPU time within each pass
(0: skip); on a busy machine the share measured inside a pass is the steadier figure.

Writes ``scripts/results/readers-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from natgrad_stream.data import configure_zarr_threads, open_zarr
from natgrad_stream.data import stream as stream_mod
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.data.stream import ArraySource, read_rows
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

RESULTS = Path(__file__).resolve().parent / "results"
_RECORDED: dict = {}  # path -> the digests of its first pass


def one_pass(path, direct: bool, digests: bool = False) -> tuple[float, float]:
    """(rows/s, CPU seconds per million rows) of one unshuffled pass (with ``digests``:
    comparing each chunk with the digests a first pass recorded).
    """
    stream_mod._DIRECT_ENABLED = direct
    source = open_zarr(path)
    rows = 0
    recorded = _RECORDED.get(str(path)) if digests else None
    if digests and recorded is None:
        recorded = _RECORDED[str(path)] = ChunkDigests()
        with source.batches(batch_size=65536, shuffle=False, digests=recorded) as stream:
            for _ in stream:
                pass
    t0, c0 = time.perf_counter(), time.process_time()
    with source.batches(batch_size=65536, shuffle=False, digests=recorded) as stream:
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


def fit_pass(path, digests: bool) -> tuple[float, float, float]:
    """(wall, CPU, digests' CPU) seconds of one streaming training pass, with or without
    the content digests every fit compares and records; the last is the thread CPU time
    spent in them (summed over the decode threads), 0 without.
    """
    saved_check, saved_compare = ArraySource._check_chunk, ChunkDigests.check
    spent, lock = [0.0], threading.Lock()

    def timed(self, chunk, row0, blocks):
        t = time.thread_time()
        saved_compare(self, chunk, row0, blocks)
        with lock:
            spent[0] += time.thread_time() - t

    ChunkDigests.check = timed
    if not digests:
        ArraySource._check_chunk = lambda self, parts, span, d=None: saved_check(self, parts,
                                                                               span)
    try:
        source = open_zarr(path)
        learner = NaturalGradientLearner(make_model("logistic", source.n_features))
        logging.getLogger("natgrad_stream").setLevel(logging.ERROR)  # the one-pass note
        t0, c0 = time.perf_counter(), time.process_time()
        learner.fit(source, epochs=1)
        return time.perf_counter() - t0, time.process_time() - c0, spent[0]
    finally:
        ArraySource._check_chunk, ChunkDigests.check = saved_check, saved_compare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fit-repeats", type=int, default=5)
    args = ap.parse_args(argv)
    configure_zarr_threads()
    with tempfile.TemporaryDirectory(prefix="natgrad-readers-") as tmp:
        path, plain = Path(tmp) / "data.zarr", Path(tmp) / "unverified.zarr"
        make_dataset(path, task="logistic", rows=args.rows, features=args.features, seed=0)
        unverified_copy(path, plain)
        for p in (path, plain):  # warm-up: page cache, JIT
            one_pass(p, True), one_pass(p, False)
        one_pass(path, True, digests=True)
        runs = {"direct": [], "zarr": [], "digests": [], "direct_unverified": [],
                "zarr_unverified": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(one_pass(plain if name.endswith("_unverified") else path,
                                           name != "zarr" and name != "zarr_unverified",
                                           digests=name == "digests"))
        fits = {"without": [], "with": []}
        if args.fit_repeats:
            fit_pass(path, True)  # warm-up: JIT
        for _ in range(args.fit_repeats):
            for name in ("without", "with"):
                fits[name].append(fit_pass(path, name == "with"))
    med = {k: np.median(np.array(v), axis=0) for k, v in runs.items()}
    best = {k: np.array([max(r[0] for r in v), min(r[1] for r in v)]) for k, v in runs.items()}
    # the cost of verification, per reader (> 1: slower): the ratio of the medians, and of
    # the best runs (the least disturbed by other load on a shared machine)
    cost = {f"verify_{r}_{m}_ratio{tag}": float(x[f"{r}_unverified"][0] / x[r][0]
                                                if m == "time" else
                                                x[r][1] / x[f"{r}_unverified"][1])
            for r in ("direct", "zarr") for m in ("time", "cpu")
            for tag, x in (("", med), ("_best", best))}
    result = {
        "rows": args.rows, "features": args.features, "repeats": args.repeats,
        "direct_rows_per_s": float(med["direct"][0]), "zarr_rows_per_s": float(med["zarr"][0]),
        "direct_cpu_s_per_mrow": float(med["direct"][1]),
        "zarr_cpu_s_per_mrow": float(med["zarr"][1]),
        "speed_ratio_direct_over_zarr": float(med["direct"][0] / med["zarr"][0]),
        "cpu_ratio_direct_over_zarr": float(med["direct"][1] / med["zarr"][1]),
        "digests_rows_per_s": float(med["digests"][0]),
        "digests_cpu_s_per_mrow": float(med["digests"][1]),
        # the digests' cost per pass: wall time and CPU time, relative to the direct pass
        # from the best of the repeats: a busy machine only ever adds time
        "digests_wall_cost": float(best["direct"][0] / best["digests"][0] - 1),
        "digests_cpu_cost": float(best["digests"][1] / best["direct"][1] - 1),
        **{f"{k}_rows_per_s": float(med[k][0]) for k in ("direct_unverified",
                                                           "zarr_unverified")},
        **{f"{k}_cpu_s_per_mrow": float(med[k][1]) for k in ("direct_unverified",
                                                             "zarr_unverified")},
        **cost,
        "runs": {k: [list(map(float, r)) for r in v] for k, v in runs.items()},
        "fit_runs": fits,
    }
    if args.fit_repeats:
        fit_med = {k: np.median(np.array(v), axis=0) for k, v in fits.items()}
        result["fit_pass_seconds"] = float(fit_med["without"][0])
        fit_best = {k: np.min(np.array(v), axis=0) for k, v in fits.items()}
        result["digests_fit_wall_cost"] = float(fit_best["with"][0] / fit_best["without"][0]
                                                - 1)
        result["digests_fit_cpu_cost"] = float(fit_best["with"][1] / fit_best["without"][1]
                                               - 1)
        # the digests' own CPU time within each pass, over that pass's CPU time
        result["digests_fit_cpu_share"] = float(np.median([c / p for _, p, c in fits["with"]]))
        result["digests_fit_cpu_seconds"] = float(np.median([c for _, _, c in fits["with"]]))
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
    print(f"content digests (direct reader): {result['digests_rows_per_s']:,.0f} rows/s; "
          f"cost per read-only pass (best of {args.repeats}) "
          f"{100 * result['digests_wall_cost']:+.1f}% wall, "
          f"{100 * result['digests_cpu_cost']:+.1f}% CPU")
    if args.fit_repeats:
        print(f"content digests per training pass ({result['fit_pass_seconds']:.2f} s; best "
              f"of {args.fit_repeats}): "
              f"{100 * result['digests_fit_wall_cost']:+.1f}% wall, "
              f"{100 * result['digests_fit_cpu_cost']:+.1f}% CPU; in-pass: "
              f"{result['digests_fit_cpu_seconds']:.3f} CPU s, "
              f"{100 * result['digests_fit_cpu_share']:.1f}% of the pass's CPU time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
