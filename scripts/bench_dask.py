#!/usr/bin/env python
"""Dask scale-out: rows/s on 1 and 2 local workers against one process, in one script.

Usage::

    python scripts/bench_dask.py                       # 4M x 100 (the benchmark store)
    python scripts/bench_dask.py --rows 1000000        # quicker

For each cluster size (a ``LocalCluster`` of N worker processes, one thread each) and, in
alternation, for one process, it measures:

- **pass**: one full-data evaluation pass (loss, gradient and full metric at a fixed θ),
  the unit of L-BFGS and of the Fisher-scoring passes; rows/s;
- **lbfgs**: a natural-space L-BFGS fit (2 rounds); rows evaluated per second, and the
  relative difference of its training loss from one process's;
- **stream**: one streaming pass (sgd, the default options, ``--batch-size`` rows per
  lane: an effective batch of N × that, and one process with batches of N × that rows,
  so both take the same steps); rows/s and the held-out gap against the full-batch
  optimum;

and the bytes of arrays moved per pass and per step (θ out, sums back, counted by the
backend). Ratios are to the one-process run measured next to it: this machine is shared
and noisy. Writes ``scripts/results/dask-latest.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from natgrad_stream.data import configure_zarr_threads, open_zarr
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.evaluate import evaluate
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.training.learner import full_pass

HERE = Path(__file__).resolve().parent


def dataset(root: Path, rows: int, features: int) -> Path:
    """The benchmark store (as ``scripts/bench.py`` writes it), generated once."""
    path = root / f"logistic-{rows}x{features}-s0.zarr"
    if not path.exists():
        make_dataset(path, task="logistic", rows=rows, features=features, chunk_rows=65536,
                     test_rows=200_000, seed=0)
    return path


def optimum_loss(path: Path, d: int) -> float:
    """Held-out loss at the full-data optimum (a converged L-BFGS fit, one process)."""
    cache = path.with_suffix(".lbfgs-optimum.json")
    if cache.exists():
        return json.loads(cache.read_text())["test_log_loss"]
    lr = NaturalGradientLearner(make_model("logistic", d), optimizer="lbfgs").fit(path)
    loss = held_out(path, lr.theta)
    cache.write_text(json.dumps({"test_log_loss": loss}))
    return loss


def held_out(path: Path, theta) -> float:
    return evaluate(make_model("logistic", theta.size - 1), theta, path, x="X_test",
                    y="y_test")["log_loss"]


def one_pass(path, d, client=None) -> tuple[float, dict | None]:
    """Rows/s of one evaluation pass at a fixed θ, and the traffic it counted."""
    lr = NaturalGradientLearner(make_model("logistic", d))
    source = open_zarr(path)
    theta = np.full(d + 1, 0.01)
    if client is not None:
        lr._backend = lr._dask_backend(client, str(path), source, "X", "y", None)
    try:
        t0 = time.perf_counter()
        full_pass(lr, source, theta, metric="model", batch_rows=65536)
        seconds = time.perf_counter() - t0
    finally:
        traffic = None if lr._backend is None else lr._backend.traffic()
        lr._backend = None
    return source.n_rows / seconds, traffic


def lbfgs(path, d, client=None) -> dict:
    lr = NaturalGradientLearner(make_model("logistic", d), optimizer="lbfgs", lbfgs_rounds=2)
    t0 = time.perf_counter()
    lr.fit(path, client=client, epochs=1)
    seconds = time.perf_counter() - t0
    return {"rows_per_s": lr.result.samples / seconds, "train_loss": lr.result.train_loss,
            "evaluations": lr.result.evaluations, "traffic": lr.dask_traffic}


def stream(path, d, batch_size, client=None) -> dict:
    lr = NaturalGradientLearner(make_model("logistic", d), batch_size=batch_size)
    t0 = time.perf_counter()
    lr.fit(path, client=client)
    seconds = time.perf_counter() - t0
    return {"rows_per_s": lr.result.samples / seconds, "steps": lr.result.steps,
            "theta": lr.theta, "traffic": lr.dask_traffic}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--batch-size", type=int, default=8192,
                    help="streaming rows per lane and step (one process: per step)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    configure_zarr_threads()  # as the command line does
    import distributed

    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    path = dataset(root, args.rows, args.features)
    d = args.features
    best = optimum_loss(path, d)
    gap = lambda theta: 100.0 * (held_out(path, theta) / best - 1.0)  # noqa: E731
    # warm-up: page cache and JIT in this process
    one_pass(path, d)
    report = {"rows": args.rows, "features": d, "batch_size": args.batch_size,
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "optimum_test_log_loss": best, "clusters": {}}
    for n in [int(w) for w in args.workers.split(",")]:
        with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            one_pass(path, d, client)  # warm-up: the workers' JIT and page cache
            rows = {"pass_one": [], "pass_dask": [], "lbfgs_one": [], "lbfgs_dask": [],
                    "stream_one": [], "stream_dask": []}
            for _ in range(args.repeats):
                rows["pass_one"].append(one_pass(path, d)[0])
                r, pass_traffic = one_pass(path, d, client)
                rows["pass_dask"].append(r)
                one, dask = lbfgs(path, d), lbfgs(path, d, client)
                rows["lbfgs_one"].append(one["rows_per_s"])
                rows["lbfgs_dask"].append(dask["rows_per_s"])
                # the same effective batch in one process: n lanes × batch_size rows
                s1, sd = stream(path, d, n * args.batch_size), \
                    stream(path, d, args.batch_size, client)
                rows["stream_one"].append(s1["rows_per_s"])
                rows["stream_dask"].append(sd["rows_per_s"])
            med = {k: float(np.median(v)) for k, v in rows.items()}
            t = sd["traffic"]
            report["clusters"][n] = {
                **med, "runs": rows,
                "pass_ratio": med["pass_dask"] / med["pass_one"],
                "lbfgs_ratio": med["lbfgs_dask"] / med["lbfgs_one"],
                "stream_ratio": med["stream_dask"] / med["stream_one"],
                "lbfgs_relative_loss_difference":
                    abs(dask["train_loss"] - one["train_loss"]) / abs(one["train_loss"]),
                "pass_traffic": pass_traffic,
                "lbfgs_traffic_per_evaluation": {
                    k: v / dask["evaluations"] for k, v in dask["traffic"].items()
                    if isinstance(v, int | float) and k not in ("lanes", "effective_batch")},
                "stream_steps": sd["steps"], "stream_steps_one": s1["steps"],
                "stream_effective_batch": t["effective_batch"],
                "stream_traffic_per_step": {k: v / sd["steps"] for k, v in t.items()
                                            if k not in ("lanes", "effective_batch")},
                "stream_gap_percent_one": gap(s1["theta"]),
                "stream_gap_percent_dask": gap(sd["theta"]),
            }
            print(json.dumps({k: v for k, v in report["clusters"][n].items() if k != "runs"},
                             indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dask-latest.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Dask scale-out, {args.rows:,} x {d} ({report['machine']})", "",
             "| workers | pass ×1 proc | L-BFGS ×1 proc | L-BFGS loss diff | stream ×1 proc "
             "| stream gap % (1 proc / dask) | bytes per pass | bytes per step |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in report["clusters"].items():
        pt, st = r["pass_traffic"], r["stream_traffic_per_step"]
        lines.append(
            f"| {n} | {r['pass_ratio']:.2f} ({r['pass_dask']:,.0f} rows/s) "
            f"| {r['lbfgs_ratio']:.2f} | {r['lbfgs_relative_loss_difference']:.1e} "
            f"| {r['stream_ratio']:.2f} ({r['stream_dask']:,.0f} rows/s) "
            f"| {r['stream_gap_percent_one']:.4f} / {r['stream_gap_percent_dask']:.4f} "
            f"| {pt['bytes_to_workers'] + pt['bytes_of_results']:,} "
            f"| {st['bytes_to_workers'] + st['bytes_of_results']:,.0f} |")
    (out / "dask-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
