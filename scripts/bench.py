#!/usr/bin/env python
"""Performance report: natgrad_stream against the read rate of its store and its peers.

Usage::

    python scripts/bench.py                 # 4M x 100 logistic, full report (~15 min)
    python scripts/bench.py --quick         # 1M x 100, smaller sweeps (~4 min)

Writes ``scripts/results/bench-latest.json`` and ``.md`` (``--out`` to change). Every rate
in one table is measured in the same process, in alternation with the raw read, because
this machine is shared and noisy: compare the ratios. Needs scikit-learn and psutil
(``pip install -e .[bench]``); Vowpal Wabbit is benchmarked when ``vowpalwabbit`` is
installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream.data import configure_zarr_threads, open_zarr
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.evaluate import evaluate
from natgrad_stream.geometry.whitening import whiten
from natgrad_stream.learner import Callback, NaturalGradientLearner
from natgrad_stream.models import make_model

HERE = Path(__file__).resolve().parent


# -- helpers ---------------------------------------------------------------------------------
def dataset(root: Path, rows: int, features: int, test_rows: int, seed: int = 0) -> Path:
    """The benchmark store (generated once): logistic, float32, zstd, 65,536-row chunks."""
    path = root / f"logistic-{rows}x{features}-s{seed}.zarr"
    if not path.exists():
        make_dataset(path, task="logistic", rows=rows, features=features, chunk_rows=65536,
                     test_rows=test_rows, seed=seed)
    return path


def raw_read(path: Path) -> float:
    """Rows/s reading and decompressing every chunk of X and y with zarr, nothing else."""
    g = zarr.open_group(str(path), mode="r")
    X, Y = g["X"], g["y"]
    R, n = X.chunks[0], X.shape[0]
    t0 = time.perf_counter()
    for a in range(0, n, R):
        X[a:a + R]
        Y[a:a + R]
    return n / (time.perf_counter() - t0)


def stream_only(path: Path) -> float:
    """Rows/s of natgrad_stream's reader (shuffle, checks, batches), no learning."""
    src = open_zarr(path)
    t0 = time.perf_counter()
    with src.batches(batch_size=256) as stream:
        for _ in stream:
            pass
    return src.n_rows / (time.perf_counter() - t0)


def optimum(path: Path) -> dict:
    """Full-batch MLE by scikit-learn (Newton-Cholesky, float64); cached beside the store."""
    cache = path.with_suffix(".optimum.json")
    if cache.exists():
        return json.loads(cache.read_text())
    from sklearn.linear_model import LogisticRegression

    g = zarr.open_group(str(path), mode="r")
    X = g["X"][...].astype(np.float64)
    y = g["y"][...].astype(np.float64)
    t0 = time.perf_counter()
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=500)
    sk.fit(X, y)
    seconds = time.perf_counter() - t0
    del X
    theta = np.r_[sk.coef_[0], sk.intercept_[0]]
    model = make_model("logistic", theta.size - 1)
    test = evaluate(model, theta, path, x="X_test", y="y_test")
    out = {"test_log_loss": test["log_loss"], "sklearn_seconds": seconds}
    cache.write_text(json.dumps(out))
    return out


class Snapshots(Callback):
    """Copies θ at fixed sample marks with the elapsed time (evaluated after the run)."""

    def __init__(self, marks):
        self.marks = sorted(marks)
        self.taken = []

    def on_fit_start(self, learner, total_rows):
        self.t0 = time.perf_counter()

    def on_batch_end(self, learner, info, cursor):
        if self.marks and learner.samples >= self.marks[0]:
            self.marks.pop(0)
            self.taken.append((learner.samples, time.perf_counter() - self.t0,
                               learner.theta.copy()))


def learner_pass(path: Path, n_features: int, *, snapshots=None, **options) -> dict:
    """One pass of the learner; rows/s and, with snapshots, the held-out loss over time."""
    learner = NaturalGradientLearner(make_model("logistic", n_features), **options)
    cbs = [snapshots] if snapshots is not None else []
    learner.fit(path, callbacks=cbs, epochs=1)
    return {"rows_per_s": learner.result.rows_per_s, "seconds": learner.result.seconds,
            "rewhitens": learner.rewhitens, "theta": learner.theta}


def held_out(path, theta):
    return evaluate(make_model("logistic", theta.size - 1), theta, path, x="X_test",
                    y="y_test")["log_loss"]


# -- sections --------------------------------------------------------------------------------
def throughput(path: Path, opt: float, repeats: int) -> dict:
    """Raw read vs reader vs learner (full, diagonal), alternating, in one process."""
    g = zarr.open_group(str(path), mode="r")
    n, d = g["X"].shape
    NaturalGradientLearner(make_model("logistic", d)).fit(path, max_samples=300_000)  # warm-up
    stream_only(path)
    rows = {k: [] for k in ("raw", "reader", "full", "diagonal")}
    curve, full_theta, diag_theta = None, None, None
    for r in range(repeats):
        rows["raw"].append(raw_read(path))
        rows["reader"].append(stream_only(path))
        snaps = Snapshots([int(n * f) for f in np.linspace(0.1, 1.0, 10)]) if r == 0 else None
        res = learner_pass(path, d, snapshots=snaps)
        rows["full"].append(res["rows_per_s"])
        full_theta = res["theta"]
        if snaps is not None:
            curve = [(s, t, held_out(path, th)) for s, t, th in snaps.taken]
        res = learner_pass(path, d, structure="diagonal")
        rows["diagonal"].append(res["rows_per_s"])
        diag_theta = res["theta"]
        rows["raw"].append(raw_read(path))
    raw = float(np.median(rows["raw"]))
    gap = lambda loss: 100.0 * (loss / opt - 1.0)  # noqa: E731
    to_target = next((t for s, t, loss in curve if gap(loss) <= 0.1), None)
    return {
        "rows": int(n), "features": int(d), "repeats": repeats,
        "raw_read_rows_per_s": raw, "raw_read_all": rows["raw"],
        "reader_rows_per_s": float(np.median(rows["reader"])),
        "full_rows_per_s": float(np.median(rows["full"])),
        "diagonal_rows_per_s": float(np.median(rows["diagonal"])),
        "full_ratio": float(np.median(rows["full"])) / raw,
        "diagonal_ratio": float(np.median(rows["diagonal"])) / raw,
        "reader_ratio": float(np.median(rows["reader"])) / raw,
        "full_gap_percent": gap(held_out(path, full_theta)),
        "diagonal_gap_percent": gap(held_out(path, diag_theta)),
        "full_curve": [{"samples": s, "seconds": t, "gap_percent": gap(loss)}
                       for s, t, loss in curve],
        "full_seconds_to_0.1pct": to_target,
    }


_RSS_CHILD = r"""
import sys, time
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
L = NaturalGradientLearner(make_model("logistic", int(sys.argv[2])))
L.fit(sys.argv[1], epochs=1)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def peak_rss(root: Path, rows: int, features: int) -> dict:
    """Peak RSS of a one-pass fit on a store and on one 8x larger (fresh processes)."""
    out = {}
    for n in (rows, 8 * rows):
        path = dataset(root, n, features, 0, seed=1)
        proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(features)],
                              capture_output=True, text=True, check=True)
        out[n] = int(proc.stdout.split()[-1])
    small, large = out[rows], out[8 * rows]
    return {"rows": [rows, 8 * rows], "peak_rss_bytes": [small, large],
            "change_percent": 100.0 * (large / small - 1.0)}


_COMPILE_CHILD = r"""
import time; t0 = time.perf_counter()
import numpy as np
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
t1 = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.standard_normal((256, 100)).astype(np.float32)
y = (rng.random(256) < 0.5).astype(float)
NaturalGradientLearner(make_model("logistic", 100)).step(X, y)
print(t1 - t0, time.perf_counter() - t1)
"""


def compile_times() -> dict:
    """Import + first batch with a cold and a warm Numba cache (fresh processes)."""
    cache = tempfile.mkdtemp(prefix="numba-cache-")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    res = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        res.append((float(out[0]), float(out[1])))
    return {"cold_import_s": res[0][0], "cold_first_batch_s": res[0][1],
            "warm_import_s": min(r[0] for r in res[1:]),
            "warm_first_batch_s": min(r[1] for r in res[1:])}


def scaling(dims, rows: int = 65536) -> list:
    """Kernel cost per row (metric on/off, serial/parallel) and refresh cost vs d."""
    out = []
    rng = np.random.default_rng(0)
    with limited_blas_threads(1):
        for d in dims:
            X = rng.standard_normal((rows, d)).astype(np.float32)
            y = (rng.random(rows) < 0.5).astype(np.float64)
            model = make_model("logistic", d)
            theta = np.zeros(d + 1)
            row = {"d": d}
            for label, metric, structure in (("grad_only", None, "diagonal"),
                                             ("full", "model", "full"),
                                             ("diagonal", "model", "diagonal")):
                ws = model.new_workspace(structure)
                for parallel in (False, True):
                    model.accumulate(X[:4096], y[:4096], None, theta, metric=metric,
                                     structure=structure, ws=ws, parallel=parallel)
                    reps = max(1, int(2e7 / (rows * d * (d if structure == "full" else 4))))
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        model.accumulate(X, y, None, theta, metric=metric, structure=structure,
                                         ws=ws, parallel=parallel)
                    ns = 1e9 * (time.perf_counter() - t0) / (reps * rows)
                    row[f"{label}_{'parallel' if parallel else 'serial'}_ns_per_row"] = ns
                if metric is not None:
                    G = ws.fisher / rows
                    t0 = time.perf_counter()
                    for _ in range(3):
                        whiten(G, center=d if structure == "full" else None)
                    row[f"refresh_{label}_ms"] = 1e3 * (time.perf_counter() - t0) / 3
            row["full_parallel_speedup"] = (row["full_serial_ns_per_row"]
                                            / row["full_parallel_ns_per_row"])
            out.append(row)
    return out


def block_scaling(dims, classes: int = 4, rows: int = 16384) -> list:
    """Full vs block vs diagonal metric for softmax regression (one block per class).

    With ``K − 1`` free classes, ``P = (K − 1)(d + 1)``: the full metric costs ``P²`` per
    row and ``P³`` per refresh, the block-diagonal one ``(K − 1)(d + 1)²`` and
    ``(K − 1)(d + 1)³``.
    """
    out = []
    rng = np.random.default_rng(0)
    with limited_blas_threads(1):
        for d in dims:
            X = rng.standard_normal((rows, d)).astype(np.float32)
            y = rng.integers(0, classes, rows).astype(np.float64)
            model = make_model("softmax", d, n_classes=classes)
            theta = np.zeros(model.n_params)
            row = {"d": d, "classes": classes, "P": model.n_params}
            for structure in ("full", "block", "diagonal"):
                ws = model.new_workspace(structure)
                model.accumulate(X[:2048], y[:2048], None, theta, metric="model",
                                 structure=structure, ws=ws)
                P = model.n_params
                reps = max(1, int(4e7 / (rows * P * (P if structure == "full" else d + 1))))
                t0 = time.perf_counter()
                for _ in range(reps):
                    model.accumulate(X, y, None, theta, metric="model", structure=structure,
                                     ws=ws)
                row[f"{structure}_ns_per_row"] = 1e9 * (time.perf_counter() - t0) / (reps * rows)
                G = ws.fisher / rows
                blocks = model.param_bounds() if structure == "block" else None
                center = model.center_indices if structure != "diagonal" else None
                t0 = time.perf_counter()
                for _ in range(3):
                    whiten(G, center=center, blocks=blocks)
                row[f"refresh_{structure}_ms"] = 1e3 * (time.perf_counter() - t0) / 3
            out.append(row)
    return out


SGD_GRID = (
    {"learning_rate": "optimal", "alpha": 1e-6},
    {"learning_rate": "optimal", "alpha": 1e-5},
    {"learning_rate": "invscaling", "eta0": 0.01, "power_t": 0.5},
    {"learning_rate": "invscaling", "eta0": 0.1, "power_t": 0.5},
    {"learning_rate": "constant", "eta0": 0.001, "average": True},
    {"learning_rate": "constant", "eta0": 0.01, "average": True},
)


def _sgd_passes(path: Path, opt: float, settings: dict, *, passes: int, scale: bool,
                chunks=None) -> dict:
    """scikit-learn SGDClassifier.partial_fit over the store's chunks (shuffled per pass).

    The time counts reading, the scaler's own streaming pass and training; held-out
    evaluation after each pass is not timed.
    """
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    g = zarr.open_group(str(path), mode="r")
    X, Y = g["X"], g["y"]
    R, n = X.chunks[0], X.shape[0]
    starts = list(range(0, n, R)) if chunks is None else chunks
    Xt = g["X_test"][...].astype(np.float64)
    yt = g["y_test"][...]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    scaler = StandardScaler()
    if scale:
        for a in starts:
            scaler.partial_fit(X[a:a + R])
    clf = SGDClassifier(loss="log_loss", penalty=None, random_state=0, **settings)
    elapsed, out, rows = time.perf_counter() - t0, [], 0
    for k in range(passes):
        t = time.perf_counter()
        for a in rng.permutation(starts):
            Xc = X[a:a + R].astype(np.float64)
            clf.partial_fit(scaler.transform(Xc) if scale else Xc, Y[a:a + R],
                            classes=np.array([0, 1]))
            rows += Xc.shape[0]
        elapsed += time.perf_counter() - t
        p = clf.predict_proba(scaler.transform(Xt) if scale else Xt)[:, 1]
        out.append({"pass": k + 1, "seconds": elapsed,
                    "gap_percent": 100.0 * (log_loss(yt, p) / opt - 1.0)})
    return {"passes": out, "rows_per_s": rows / elapsed}


def sklearn_peers(path: Path, opt_subset: float, opt: float, passes: int) -> list:
    """scikit-learn SGD: defaults (no scaling), and scaled with a step tuned on 10%."""
    g = zarr.open_group(str(path), mode="r")
    R, n = g["X"].chunks[0], g["X"].shape[0]
    sub = list(range(0, n, R))[: max(1, (n // R) // 10)]
    tuned = min(SGD_GRID, key=lambda st: _sgd_passes(path, opt_subset, st, passes=1,
                                                     scale=True, chunks=sub)
                ["passes"][-1]["gap_percent"])
    results = []
    for name, settings, scale, k in (("sklearn SGD, defaults", {}, False, 1),
                                     ("sklearn SGD, scaled + tuned step", tuned, True, passes)):
        res = _sgd_passes(path, opt, settings, passes=k, scale=scale)
        hit = next((p["seconds"] for p in res["passes"] if p["gap_percent"] <= 0.1), None)
        results.append({"name": name, "settings": settings or "defaults",
                        "seconds_to_0.1pct": hit, **res})
    return results


def _write_vw_text(X, Y, out: Path, order) -> None:
    """Write rows (in ``order`` of chunk starts) as VW text: ``±1 |f 0:x0 1:x1 ...``."""
    R, d = X.chunks[0], X.shape[1]
    line = "%d |f " + " ".join(f"{j}:%.7g" for j in range(d)) + "\n"
    with open(out, "w") as fh:
        for a in order:
            Xc, yc = X[a:a + R], 2 * Y[a:a + R].astype(np.int64) - 1
            fh.write("".join(line % (lab, *row) for lab, row in zip(yc.tolist(), Xc.tolist(),
                                                                    strict=True)))


def _vw(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vowpalwabbit", *args, "--quiet"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def vw_peer(path: Path, opt: float, passes: int) -> dict:
    """Vowpal Wabbit (logistic loss, its default adaptive normalized updates) from its cache.

    Reported separately: converting the store to VW's text format, and the parsing pass
    that builds VW's cache; training seconds are from the cache, as VW is normally run.
    """
    try:
        import vowpalwabbit
    except ImportError:
        return {"name": "vowpalwabbit", "note": "not installed (pip install vowpalwabbit)"}
    from sklearn.metrics import log_loss

    g = zarr.open_group(str(path), mode="r")
    work = Path(tempfile.mkdtemp(prefix="vw-", dir=path.parent))
    R, n = g["X"].chunks[0], g["X"].shape[0]
    t0 = time.perf_counter()
    _write_vw_text(g["X"], g["y"], work / "train.vw",
                   np.random.default_rng(0).permutation(range(0, n, R)))
    _write_vw_text(g["X_test"], g["y_test"], work / "test.vw", range(0, g["X_test"].shape[0],
                                                                     g["X_test"].chunks[0]))
    convert = time.perf_counter() - t0
    cache = str(work / "train.cache")
    build = _vw("-d", str(work / "train.vw"), "--cache_file", cache, "--loss_function",
                "logistic", "--holdout_off", "-f", str(work / "m0"))
    yt = g["y_test"][...]
    out = []
    for k in sorted({1, passes}):
        seconds = _vw("--cache_file", cache, "--passes", str(k), "--holdout_off",
                      "--loss_function", "logistic", "-f", str(work / f"m{k}"))
        _vw("-d", str(work / "test.vw"), "-t", "-i", str(work / f"m{k}"), "--link",
            "logistic", "-p", str(work / f"p{k}"))
        p = np.clip(np.loadtxt(work / f"p{k}"), 1e-15, 1 - 1e-15)
        out.append({"pass": k, "seconds": seconds,
                    "gap_percent": 100.0 * (log_loss(yt, p) / opt - 1.0)})
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    hit = next((p["seconds"] for p in out if p["gap_percent"] <= 0.1), None)
    return {"name": f"Vowpal Wabbit {vowpalwabbit.__version__}", "settings": "logistic, defaults",
            "rows_per_s": n * out[0]["pass"] / out[0]["seconds"], "passes": out,
            "seconds_to_0.1pct": hit, "convert_seconds": convert, "cache_build_seconds": build,
            "note": f"plus {convert:.0f} s to write text, {build:.0f} s to build its cache"}


def peers(path: Path, opt: float, passes: int) -> list:
    """Installed peers: scikit-learn SGD and Vowpal Wabbit."""
    return sklearn_peers(path, opt, opt, passes) + [vw_peer(path, opt, passes)]


# -- report ----------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    lines = [f"### natgrad_stream benchmark ({report['date']}, {report['machine']})", ""]
    t = report.get("throughput")
    if t:
        lines += [
            f"Store: {t['rows']:,} × {t['features']} float32 logistic, zstd, 65,536-row "
            f"chunks. Full-batch optimum (scikit-learn): held-out log-loss "
            f"{report['optimum']['test_log_loss']:.6f}. Medians of {t['repeats']} alternating "
            "runs in one process.",
            "",
            "| what | rows/s | × raw read | held-out gap after 1 pass |",
            "|---|---|---|---|",
            f"| raw read (zarr, X and y, sequential) | {t['raw_read_rows_per_s']:,.0f} | 1.00 "
            "| |",
            f"| natgrad_stream reader only | {t['reader_rows_per_s']:,.0f} | "
            f"{t['reader_ratio']:.2f} | |",
            f"| natgrad_stream, full Fisher (defaults) | {t['full_rows_per_s']:,.0f} | "
            f"{t['full_ratio']:.2f} | {t['full_gap_percent']:+.4f}% |",
            f"| natgrad_stream, diagonal Fisher | {t['diagonal_rows_per_s']:,.0f} | "
            f"{t['diagonal_ratio']:.2f} | {t['diagonal_gap_percent']:+.3f}% |",
            "",
            f"Time to held-out log-loss within 0.1% of the optimum (full, defaults): "
            f"{t['full_seconds_to_0.1pct']} s.",
            "",
        ]
    if report.get("peers"):
        lines += ["| peer | settings | rows/s | seconds to 0.1% | gap after last pass |",
                  "|---|---|---|---|---|"]
        for p in report["peers"]:
            if "passes" not in p:
                lines.append(f"| {p.get('name')} | {p.get('note', '')} | | | |")
                continue
            last = p["passes"][-1] if p["passes"] else {}
            settings = str(p.get("settings", "")) + (f" ({p['note']})" if p.get("note") else "")
            lines.append(f"| {p['name']} | {settings} | "
                         f"{p.get('rows_per_s', 0):,.0f} | {p.get('seconds_to_0.1pct')} | "
                         f"{last.get('gap_percent', float('nan')):+.3f}% "
                         f"({last.get('pass', '?')} passes) |")
        lines.append("")
    if "rss" in report:
        r = report["rss"]
        lines += [f"Peak RSS, one pass: {r['peak_rss_bytes'][0] / 2**20:.0f} MiB at "
                  f"{r['rows'][0]:,} rows, {r['peak_rss_bytes'][1] / 2**20:.0f} MiB at "
                  f"{r['rows'][1]:,} rows ({r['change_percent']:+.1f}%).", ""]
    c = report.get("compile")
    if c:
        lines += [f"Import + first batch: warm Numba cache {c['warm_import_s']:.2f} + "
                  f"{c['warm_first_batch_s']:.2f} s; cold {c['cold_import_s']:.2f} + "
                  f"{c['cold_first_batch_s']:.2f} s (compilation).", ""]
    if report.get("scaling"):
        lines += ["| d | grad only ns/row | full ns/row (serial / parallel) | diagonal ns/row | "
                  "refresh full ms | refresh diagonal ms |", "|---|---|---|---|---|---|"]
        for s in report["scaling"]:
            lines.append(
                f"| {s['d']} | {s['grad_only_serial_ns_per_row']:.0f} | "
                f"{s['full_serial_ns_per_row']:.0f} / {s['full_parallel_ns_per_row']:.0f} | "
                f"{s['diagonal_serial_ns_per_row']:.0f} | {s['refresh_full_ms']:.2f} | "
                f"{s['refresh_diagonal_ms']:.3f} |")
    if report.get("block_scaling"):
        lines += ["", "Softmax regression (K = 4 classes, one parameter block per class), "
                  "metric cost per row and per refresh:", "",
                  "| d | P | full ns/row | block ns/row | diagonal ns/row | refresh full ms | "
                  "refresh block ms |", "|---|---|---|---|---|---|---|"]
        for s in report["block_scaling"]:
            lines.append(
                f"| {s['d']} | {s['P']} | {s['full_ns_per_row']:.0f} | "
                f"{s['block_ns_per_row']:.0f} | {s['diagonal_ns_per_row']:.0f} | "
                f"{s['refresh_full_ms']:.2f} | {s['refresh_block_ms']:.2f} |")
    return "\n".join(lines) + "\n"


SECTIONS = ("throughput", "compile", "scaling", "memory", "peers")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--peer-passes", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--data", default="bench-data")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset of: " + ",".join(SECTIONS))
    args = ap.parse_args(argv)
    configure_zarr_threads()  # as the command line does
    rows = args.rows or (1_000_000 if args.quick else 4_000_000)
    repeats = args.repeats or (2 if args.quick else 3)
    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    path = dataset(root, rows, args.features, test_rows=200_000)
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python scripts/bench.py" + (" --quick" if args.quick else "")}
    want = set(args.sections.split(","))
    unknown = want - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if want & {"throughput", "peers"}:
        print("optimum...", file=sys.stderr)
        report["optimum"] = optimum(path)
    if "throughput" in want:
        print("throughput...", file=sys.stderr)
        report["throughput"] = throughput(path, report["optimum"]["test_log_loss"], repeats)
    if "compile" in want:
        print("compile...", file=sys.stderr)
        report["compile"] = compile_times()
    if "scaling" in want:
        print("scaling...", file=sys.stderr)
        report["scaling"] = scaling([10, 30, 100, 300] if args.quick
                                    else [10, 30, 100, 300, 1000])
        report["block_scaling"] = block_scaling([10, 30, 100] if args.quick
                                                else [10, 30, 100, 300])
    if "memory" in want:
        print("memory...", file=sys.stderr)
        # both stores must exceed the reader's buffer pool, or the smaller one under-reports
        report["rss"] = peak_rss(root, 500_000 if args.quick else 1_000_000, args.features)
    if "peers" in want and not args.no_peers:
        print("peers...", file=sys.stderr)
        report["peers"] = peers(path, report["optimum"]["test_log_loss"], args.peer_passes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-latest.json").write_text(json.dumps(report, indent=2, default=float))
    md = markdown(report)
    (out / "bench-latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
