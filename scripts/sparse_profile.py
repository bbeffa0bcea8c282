"""Where a one-pass sparse fit's time goes (issue 20): the store's raw read, the reader
alone, and the learner's thread split by the work it does.

Usage::

    python scripts/sparse_profile.py /tmp/natgrad-sparse-data/synthetic-1e5x50.zarr
    python scripts/sparse_profile.py STORE --batch-size 8192 --l2 1e-5 --json out.json

Three measurements, in this order, in one process (the machine may be shared: report the
load average with the figures, which the output does):

* *raw read*: every stored chunk of ``X/indptr``, ``X/indices``, ``X/data`` once, in
  order, through zarr (``sparse_bench_data.raw_read``);
* *reader alone*: a :class:`~natgrad_stream.data.sparse_source.SparseSource` stream over
  ``X`` and ``y`` as the fit opens it (shuffled, the fit's batch size), batches consumed
  and dropped: wall and CPU seconds of the process (reader, permuting and decoding threads);
* *fit*: ``natgrad-stream fit STORE --epochs 1`` run in this process under cProfile.
  cProfile sees the learner's (main) thread only: its time is split into the batch kernel
  (a compiled function shows as one line), waiting for the reader, the step's whole-vector
  work, the curvature cap's power iterations, the metric refresh and drift checks, and the
  rest. Profiling slows Python code (not compiled kernels), so the split is indicative.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_bench_data as sbd  # noqa: E402

#: Parts of the learner's thread: label → (function name as pstats reports it, which
#: time: "tot" its own, "cum" with its callees). Listed in report order.
PARTS = {
    "batch kernel (glm_sparse_accumulate)": ("glm_sparse_accumulate", "tot"),
    "waiting for the reader (queue)": ("<method 'acquire' of '_thread.lock' objects>", "tot"),
    "accumulate around the kernel (checks, clearing outputs)": ("accumulate", "own"),
    "penalized mean gradient (O(P))": ("mean_gradient", "cum"),
    "optimizer step through the diagonal (O(P))": ("update_diagonal", "cum"),
    "metric fold (RunningFisher.add)": ("add", "cum"),
    "state snapshot per step": ("snapshot", "cum"),
    "refresh and drift checks (_maybe_refresh)": ("_maybe_refresh", "cum"),
    "curvature cap (power iterations)": ("_curvature_cap", "cum"),
}


def _stat(stats: pstats.Stats, name: str, kind: str) -> float:
    """Seconds of the function ``name`` (summed over the files that define one):
    ``tot``/``own`` its own time, ``cum`` with its callees'.
    """
    total = 0.0
    for (path, _, func), (_, _, tt, ct, _) in stats.stats.items():
        if func != name or (name == "add" and "fisher" not in path) or \
                (name in ("accumulate", "mean_gradient") and "models" not in path):
            continue
        total += ct if kind == "cum" else tt
    return total


def reader_alone(store: Path, batch_size: int, shuffle: bool = True) -> dict:
    """One pass of the fit's reader over ``X`` and ``y`` (batches dropped): rows, wall and
    process CPU seconds.
    """
    import zarr

    from natgrad_stream.data.csr_store import open_csr_group
    from natgrad_stream.data.sparse_source import SparseSource

    g = zarr.open_group(str(store), mode="r")
    src = SparseSource(open_csr_group(g["X"], "X"), g["y"])
    t, c, n = time.perf_counter(), time.process_time(), 0
    with src.batches(batch_size=batch_size, shuffle=shuffle) as stream:
        for batch in stream:
            n += batch.X.shape[0]
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"rows": n, "seconds": wall, "cpu_seconds": cpu, "rows_per_s": n / wall,
            "chunk_rows": src.chunk_rows}


def profiled_fit(store: Path, batch_size: int, l2: float, extra: list[str]) -> dict:
    from natgrad_stream._malloc import keep_freed_buffers
    from natgrad_stream.app.cli import main

    keep_freed_buffers()  # as the command does
    with tempfile.TemporaryDirectory(prefix="sparse-profile-") as tmp:
        argv = ["fit", str(store), "--model", "logistic", "--x", "X", "--y", "y", "--l2",
                repr(l2), "--epochs", "1", "--batch-size", str(batch_size), "--progress",
                "never", "--out", str(Path(tmp) / "run"), *extra]
        prof, out = cProfile.Profile(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            prof.enable()
            rc = main(argv)
            prof.disable()
    if rc != 0:
        raise SystemExit(f"sparse_profile: fit exited {rc}")
    summary = json.loads([x for x in out.getvalue().splitlines() if x.startswith("{")][-1])
    stats = pstats.Stats(prof)
    learner = _stat(stats, "_stream", "cum")
    parts = {label: _stat(stats, name, kind) for label, (name, kind) in PARTS.items()}
    kernel = parts["batch kernel (glm_sparse_accumulate)"]
    parts["rest (Python per step, other)"] = max(0.0, learner - sum(parts.values()))
    rows = summary["samples"]
    return {"rows": rows, "steps": summary["steps"], "rewhitens": summary["rewhitens"],
            "fit_seconds": summary["seconds"], "learner_seconds": learner,
            "kernel_ns_per_row": kernel / rows * 1e9, "parts": parts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--l2", type=float, default=1e-5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("extra", nargs="*", help="more fit options (after --)")
    args = ap.parse_args(argv)
    import zarr

    out = {"load_average_at_start": os.getloadavg(), "batch_size": args.batch_size}
    out["raw_read"] = sbd.raw_read(zarr.open_group(str(args.store), mode="r")["X"], repeats=1)
    out["reader"] = reader_alone(args.store, args.batch_size)
    out["fit"] = profiled_fit(args.store, args.batch_size, args.l2, args.extra)
    out["load_average_at_end"] = os.getloadavg()
    raw, rd, fit = out["raw_read"], out["reader"], out["fit"]
    n = fit["rows"]
    print(f"load average {out['load_average_at_start'][0]:.1f} → "
          f"{out['load_average_at_end'][0]:.1f}; batch {args.batch_size} rows")
    print(f"raw read: {raw['seconds']:.2f} s, {raw['rows_per_s']:,.0f} rows/s")
    print(f"reader alone (shuffled, chunk_rows {rd['chunk_rows']:,}): {rd['seconds']:.2f} s "
          f"wall, {rd['cpu_seconds']:.2f} s CPU, {rd['rows_per_s']:,.0f} rows/s")
    print(f"fit (profiled): {fit['fit_seconds']:.2f} s, {n / fit['fit_seconds']:,.0f} rows/s; "
          f"{fit['steps']} steps, {fit['rewhitens']} refreshes; learner's thread "
          f"{fit['learner_seconds']:.2f} s:")
    for label, secs in fit["parts"].items():
        print(f"  {label:58s} {secs:6.2f} s {secs / n * 1e9:7.0f} ns/row")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
