#!/usr/bin/env python
"""Scaling model of a Dask fit: predicted rows/s on N machines from constants measured here.

Usage::

    python scripts/scaling_model.py            # measures the constants, prints the tables

Measured on this machine (one process, and a LocalCluster of 2 workers):

- ``c(d)``: CPU seconds per row of one worker's pass — the fused kernel (serial, with the
  full metric) on a batch in memory, plus zstd decoding of the row's ``4·d`` bytes at the
  direct reader's measured rate (``scripts/results/readers-latest.json``); ``c_step(d)``
  the same for a streaming step, whose kernel adds the metric only every
  ``fisher_every``-th step;
- ``λ_task``: one round of 2 tasks through the scheduler; ``λ_actor(N)``: one round of
  calls to N actors (the streaming steps' path), for N = 1, 2, extrapolated linearly;
- ``t_step(P)``: the driver's own work per streaming step (``step_sums``, median: the
  O(P³) re-whitening is rare on a long run's schedule).

Assumed (not measurable on one machine):

- the store's read rate scales with the workers (object storage or a parallel file
  system); ``n = 10⁹`` rows in 65,536-row chunks, so there are far more blocks than workers;
- links of 1.25 GB/s (10 GbE) and a scheduler that dispatches 5,000 tasks/s;
- one worker per core, one core per worker.

Model. A pass has ``B = ⌈n / 4R⌉`` block tasks and ``B − 1`` merge tasks (a tree of depth
``⌈log₂ B⌉``); each worker sends ``8·P² + 8·P`` bytes per block it ran:

    T_pass = max(⌈B/N⌉ · 4R · c(d),  (2B − 1) / 5000)  +  ⌈log₂ B⌉ · (8P²/BW + λ_task)

A streaming step has N lanes of ``b`` rows; every ``fisher_every``-th step also returns
the metric; the driver receives every lane's sums:

    T_step = b · c_step(d) + λ_actor(N) + N·(8P + 8P²/fisher_every)·(1/BW + 1/MEM)
             + t_step(P)

(``MEM``: 10 GB/s for the driver's adds), so rows/s is ``N·b / T_step``, and the crossover
batch (overhead = compute) is ``b* = (T_step − b·c_step(d)) / c_step(d)``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from natgrad_stream._constants import FISHER_EVERY_PARAMS
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

HERE = Path(__file__).resolve().parent
N_ROWS, CHUNK, BLOCK = 10**9, 65536, 4
BANDWIDTH, SCHEDULER_TASKS_PER_S = 1.25e9, 5000.0
MEMORY_BANDWIDTH = 10e9  # the driver's adds of lane sums
WORKERS = (8, 64, 512)


def kernel_seconds_per_row(d: int, metric: str | None, rows: int = 8192,
                           repeats: int = 5) -> float:
    """The serial fused kernel's seconds per row, with the full metric or without."""
    model = make_model("logistic", d)
    ws = model.new_workspace("full", n_threads=1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, d)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float64)
    theta = np.zeros(d + 1)
    model.accumulate(X, y, None, theta, metric=metric, structure="full", ws=ws,
                     parallel=False)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.accumulate(X, y, None, theta, metric=metric, structure="full", ws=ws,
                         parallel=False)
    return (time.perf_counter() - t0) / repeats / rows


def decode_seconds_per_value() -> float:
    readers = json.loads((HERE / "results" / "readers-latest.json").read_text())
    return readers["direct_cpu_s_per_mrow"] / 1e6 / readers["features"]


def driver_step_seconds(d: int, steps: int = 200) -> float:
    """Median seconds of the driver's own work per step (``step_sums``), on a long run's
    refresh schedule (re-whitening is rare there; its O(P³) is amortized into the median
    only when it is frequent).
    """
    lr = NaturalGradientLearner(make_model("logistic", d), rewhiten="every:100000000")
    P = d + 1
    rng = np.random.default_rng(1)
    A = rng.standard_normal((P, P))
    G = A @ A.T + P * np.eye(P)
    fe = max(1, round(P / FISHER_EVERY_PARAMS))
    for _ in range(3):
        lr.step_sums(0.7 * 1000, 1000.0, rng.standard_normal(P), G * 1000, 1000)
    times = []
    for i in range(steps):
        metric = G * 1000 if i % fe == 0 else None
        t0 = time.perf_counter()
        lr.step_sums(0.7 * 1000, 1000.0, 1e-3 * rng.standard_normal(P), metric, 1000)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def latencies() -> dict:
    """Seconds per round of 2 tasks, and of calls to 1 and 2 lane actors."""
    import distributed

    from natgrad_stream.distributed.worker import LaneRunner

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False,
                               direct_to_workers=True) as client:
        workers = sorted(client.nthreads())
        theta = np.zeros(101)
        with client.as_current():
            actors = [client.submit(LaneRunner, workers=[w], actor=True).result()
                      for w in workers]

        def tasks():
            client.gather([client.submit(np.sum, theta, workers=[w], pure=False)
                           for w in workers])

        def calls(k):
            [f.result() for f in [a.ping() for a in actors[:k]]]

        out = {}
        for name, fn, n in (("task_round", tasks, 50), ("actor_round_1", lambda: calls(1), 200),
                            ("actor_round_2", lambda: calls(2), 200)):
            for _ in range(10):
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name] = (time.perf_counter() - t0) / n
    return out


def main() -> int:
    lat = latencies()
    decode = decode_seconds_per_value()
    report = {"measured": {"latency_s": lat, "decode_s_per_value": decode}, "assumed": {
        "rows": N_ROWS, "chunk_rows": CHUNK, "block_chunks": BLOCK,
        "bandwidth_bytes_per_s": BANDWIDTH, "scheduler_tasks_per_s": SCHEDULER_TASKS_PER_S},
        "predictions": {}}
    lam0 = 2 * lat["actor_round_1"] - lat["actor_round_2"]
    per_actor = lat["actor_round_2"] - lat["actor_round_1"]
    lines = []
    for d in (100, 1000):
        P = d + 1
        fe = max(1, round(P / FISHER_EVERY_PARAMS))
        with_metric = kernel_seconds_per_row(d, "model")
        without = kernel_seconds_per_row(d, None)
        c = with_metric + decode * d  # a pass computes the metric on every row
        c_step = without + (with_metric - without) / fe + decode * d  # a streaming step
        t_step = driver_step_seconds(d)
        report["measured"][f"d{d}"] = {"c_pass_s_per_row": c, "c_step_s_per_row": c_step,
                                       "driver_step_s": t_step, "fisher_every": fe}
        B = math.ceil(N_ROWS / (BLOCK * CHUNK))
        depth = math.ceil(math.log2(B))
        lines += [f"\nd = {d} (P = {P}): c = {c * 1e6:.2f} µs/row/worker in a pass, "
                  f"{c_step * 1e6:.2f} in a step; driver step {t_step * 1e3:.2f} ms; "
                  f"metric every {fe} steps",
                  "| workers | pass rows/s | pass: bytes out per worker | stream b=8192: "
                  "rows/s | stream: crossover b* (rows per lane) |",
                  "|---|---|---|---|---|"]
        for N in WORKERS:
            t_compute = math.ceil(B / N) * BLOCK * CHUNK * c
            t_sched = (2 * B - 1) / SCHEDULER_TASKS_PER_S
            t_pass = max(t_compute, t_sched) + depth * (8 * P * P / BANDWIDTH +
                                                        lat["task_round"])
            lam = max(lam0, 0.0) + N * max(per_actor, 0.0)
            # the driver receives N lanes' sums and adds them (memory-bound adds)
            merge = N * 8 * P * P / fe / MEMORY_BANDWIDTH
            overhead = lam + N * (8 * P + 8 * P * P / fe) / BANDWIDTH + merge + t_step
            b = 8192
            t_st = b * c_step + overhead
            row = {"pass_rows_per_s": N_ROWS / t_pass,
                   "pass_seconds": t_pass, "pass_scheduler_bound": t_sched > t_compute,
                   "pass_bytes_out_per_worker": math.ceil(B / N) * (8 * P * P + 8 * P),
                   "stream_rows_per_s": N * b / t_st,
                   "stream_crossover_rows_per_lane": overhead / c_step}
            report["predictions"][f"d{d}_N{N}"] = row
            lines.append(f"| {N} | {row['pass_rows_per_s'] / 1e6:,.1f}M"
                         f"{' (scheduler-bound)' if row['pass_scheduler_bound'] else ''} "
                         f"| {row['pass_bytes_out_per_worker'] / 1e6:,.1f} MB "
                         f"| {row['stream_rows_per_s'] / 1e6:,.2f}M "
                         f"| {row['stream_crossover_rows_per_lane']:,.0f} |")
    out = HERE / "results"
    (out / "scaling-model.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (f"latency: 2 tasks {lat['task_round'] * 1e3:.1f} ms; actors: 1 "
            f"{lat['actor_round_1'] * 1e3:.2f} ms, 2 {lat['actor_round_2'] * 1e3:.2f} ms"
            + "\n".join(lines))
    (out / "scaling-model.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
