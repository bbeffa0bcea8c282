"""The one pass's rate beside the store's raw read, alternating in one process (issue 20's
"≥ 1M rows/s on 2 cores, and ≥ 0.8× the raw read rate").

Usage::

    python scripts/sparse_rate.py /tmp/natgrad-sparse-data/synthetic-1e5x50.zarr
    python scripts/sparse_rate.py STORE --rounds 5 --json out.json -- --batch-size 4096

Each round reads the store raw (every stored chunk of ``X/indptr``, ``X/indices``,
``X/data`` once, in order, through zarr: ``sparse_bench_data.raw_read``, one repeat), then
runs ``natgrad-stream fit STORE --model logistic --x X --y y --l2 λ --epochs 1`` in this
process (as the command runs it, freed buffers kept), so both see the same load; one
warm-up fit first (its JIT cache loads; not counted). Per round: the fit's seconds and
rows/s (as ``sparse_bench.py`` counts them: the fit's own ``seconds``, after opening the
store), its ratio to the raw read's rows/s, the load average, and the CPU seconds of the
fit's threads by role (the learner's main thread, the zstd decoders, the reader, the
shuffled reads' permutation, zarr's own threads; Linux: read from ``/proc``). The medians
end the output. The machine may be shared: the ratio of the two, measured back to back,
is the figure to compare; the CPU split says which side bounds the pass.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_bench_data as sbd  # noqa: E402

#: Thread-name prefixes → the role reported.
ROLES = (("MainThread", "learner"), ("natgrad-zstd", "decode"), ("natgrad-reader", "reader"),
         ("natgrad-permute", "permute"), ("zarr", "zarr"))


class ThreadCPU:
    """CPU seconds of this process's threads by role while open (Linux ``/proc``; an empty
    split elsewhere): sampled every 50 ms, so threads that end early are counted.
    """

    def __init__(self):
        self._seen, self._names, self._stop = {}, {}, threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _sample(self) -> dict:
        for t in threading.enumerate():
            if t.native_id is not None:
                self._names[t.native_id] = t.name
        out = {}
        for task in Path("/proc/self/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / self._tick
        return out

    def __enter__(self):
        self._base = self._sample()
        self._thread = threading.Thread(target=self._run, name="sparse-rate-monitor",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self._seen.update(self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._seen.update(self._sample())

    def split(self) -> dict:
        out = {}
        for tid, cpu in self._seen.items():
            name = self._names.get(tid, "")
            if name == "sparse-rate-monitor":
                continue
            role = next((r for p, r in ROLES if name.startswith(p)), "other")
            out[role] = out.get(role, 0.0) + cpu - self._base.get(tid, 0.0)
        return {k: round(v, 2) for k, v in out.items()}


def fit_once(store: Path, l2: float, extra: list[str]) -> dict:
    from natgrad_stream.app.cli import main

    with tempfile.TemporaryDirectory(prefix="sparse-rate-") as tmp:
        argv = ["fit", str(store), "--model", "logistic", "--x", "X", "--y", "y", "--l2",
                repr(l2), "--epochs", "1", "--progress", "never", "--out",
                str(Path(tmp) / "run"), *extra]
        out = io.StringIO()
        with ThreadCPU() as cpu, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(io.StringIO()):
            rc = main(argv)
    if rc != 0:
        raise SystemExit(f"sparse_rate: fit exited {rc}")
    summary = json.loads([x for x in out.getvalue().splitlines() if x.startswith("{")][-1])
    return {"rows": summary["samples"], "seconds": summary["seconds"],
            "running_loss": summary["running_loss"], "cpu": cpu.split()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--l2", type=float, default=1e-5)
    ap.add_argument("--json", type=Path, help="also write the rounds here")
    ap.epilog = "Options after -- are passed to the fit (e.g. -- --batch-size 4096)."
    argv = list(sys.argv[1:] if argv is None else argv)
    # split at "--" here: argparse gives a trailing nargs="*" positional nothing once the
    # store (the first positional) has been matched, and then refuses the fit's options
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    import zarr

    from natgrad_stream._malloc import keep_freed_buffers

    keep_freed_buffers()  # as the command does
    xg = zarr.open_group(str(args.store), mode="r")["X"]
    fit_once(args.store, args.l2, args.extra)  # warm-up: the kernels' cache loads
    rounds = []
    for k in range(args.rounds):
        load = os.getloadavg()[0]
        raw = sbd.raw_read(xg, repeats=1)
        fit = fit_once(args.store, args.l2, args.extra)
        rate = fit["rows"] / fit["seconds"]
        r = {"round": k, "load": load, "raw_seconds": raw["seconds"],
             "raw_rows_per_s": raw["rows_per_s"], "fit_seconds": fit["seconds"],
             "rows_per_s": rate, "x_raw_read": rate / raw["rows_per_s"],
             "running_loss": fit["running_loss"], "cpu": fit["cpu"]}
        rounds.append(r)
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu"].items(),
                                                           key=lambda kv: -kv[1]))
        print(f"load {load:4.1f}: raw read {raw['seconds']:.2f} s "
              f"({raw['rows_per_s']:,.0f} rows/s); one pass {fit['seconds']:.2f} s "
              f"({rate:,.0f} rows/s, {r['x_raw_read']:.2f}× raw); CPU s: {cpu}", flush=True)
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("rows_per_s", "x_raw_read", "raw_rows_per_s", "load")}
    print(f"median of {len(rounds)}: one pass {med['rows_per_s']:,.0f} rows/s, "
          f"{med['x_raw_read']:.2f}× the raw read ({med['raw_rows_per_s']:,.0f} rows/s), "
          f"load {med['load']:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"store": str(args.store), "extra": args.extra,
                                         "rounds": rounds, "median": med}, indent=1),
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
