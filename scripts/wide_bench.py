"""Wide dense models (issue 18): one default pass and the default fit at d = 1,000 … 10,000
raw, ill-conditioned features, against scikit-learn's ``LogisticRegression`` (L-BFGS) and
LIBLINEAR on the same data, with wall time and peak RSS of every run.

Usage::

    python scripts/wide_bench.py                       # d = 1000, 3000 (minutes)
    python scripts/wide_bench.py --dims 1000 --rows 200000
    python scripts/wide_bench.py --quick               # d = 200, 20,000 rows (seconds)
    python scripts/wide_bench.py --dims 300 --runs ours --out /tmp/a   # then, for one report:
    python scripts/wide_bench.py --dims '' --merge /tmp/a.json --merge /tmp/b.json

Each run is its own process (``natgrad-stream fit`` / ``evaluate`` and the references), so
its peak RSS (``ru_maxrss`` from ``wait4``) is its own. Data: ``make-data --task logistic``
(features ``x = offset + scale ⊙ (L z)``, scales over three decades, a decaying spectrum),
float32, written once per (d, rows) under ``--data``. The loss of every θ is the mean
negative log-likelihood on the training data in float64 (``natgrad-stream evaluate``'s
``log_loss`` for ours; the same formula for the references'); **gap** is its relative
excess over the lowest of all runs (the references reach the unpenalized optimum: L-BFGS at
``tol`` 1e-10 on standardized features; LIBLINEAR with ``C = 1e6``, whose penalty is below
the optimum's round-off at these sizes). Results go to ``--out`` as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

# this checkout's package (with PYTHONPATH set), not whichever ``natgrad-stream`` is on PATH
NGS = [sys.executable, "-m", "natgrad_stream"]

REF_CODE = r"""
import json, sys, time
import numpy as np, zarr
from sklearn.linear_model import LogisticRegression
path, solver = sys.argv[1], sys.argv[2]
g = zarr.open_group(path, mode="r")
X = np.asarray(g["X"][:], dtype=np.float64); y = np.asarray(g["y"][:])
t0 = time.perf_counter()
mu, sd = X.mean(axis=0), X.std(axis=0)
sd[sd == 0] = 1.0
Z = (X - mu) / sd
if solver == "lbfgs":
    m = LogisticRegression(C=np.inf, tol=1e-10, max_iter=20000).fit(Z, y)
else:
    m = LogisticRegression(solver="liblinear", C=1e6, tol=1e-10, max_iter=20000,
                           intercept_scaling=100.0).fit(Z, y)
secs = time.perf_counter() - t0
z = Z @ m.coef_[0] + m.intercept_[0]
print(json.dumps({"loss": float(np.mean(np.logaddexp(0, z) - y * z)), "seconds": secs,
                  "n_iter": int(np.max(m.n_iter_))}))
"""


def measured(cmd: list[str], timeout: float | None = None) -> tuple[str, float, float, int]:
    """Run ``cmd`` under a fresh interpreter that reports the child's peak RSS
    (``RUSAGE_CHILDREN`` of a process with that one child is that child's own):
    ``(stdout, wall seconds, peak RSS in MB, exit code)``. After ``timeout`` seconds the
    child gets SIGINT (a fit then checkpoints and exits 130).
    """
    wrapper = [sys.executable, "-c",
               "import resource, signal, subprocess, sys, json, time\n"
               "t = time.perf_counter()\n"
               "limit = float(sys.argv[1]) if sys.argv[1] != 'none' else None\n"
               "p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE,"
               " stderr=subprocess.PIPE, text=True)\n"
               "try:\n"
               "    out, err = p.communicate(timeout=limit)\n"
               "except subprocess.TimeoutExpired:\n"
               "    p.send_signal(signal.SIGINT)\n"
               "    out, err = p.communicate()\n"
               "sys.stdout.write(out); sys.stderr.write(err)\n"
               "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0\n"
               "sys.stdout.write('\\n@@' + json.dumps({'rss_mb': r, 'rc': p.returncode,"
               " 'seconds': time.perf_counter() - t}))\n",
               "none" if timeout is None else str(timeout), *cmd]
    proc = subprocess.run(wrapper, capture_output=True, text=True)
    body, _, tail = proc.stdout.rpartition("\n@@")
    info = json.loads(tail)
    if info["rc"] != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return body, info["seconds"], info["rss_mb"], info["rc"]


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def make_data(data_dir: Path, d: int, rows: int) -> Path:
    from natgrad_stream.data.datasets import dataset_chunk_rows

    # make-data's default chunks set the values drawn (beyond 240 float32 features they
    # hold fewer rows than the 65,536 of data cached by earlier releases): part of the name
    path = data_dir / f"logistic-{d}-{rows}-c{dataset_chunk_rows(d)}.zarr"
    if not path.exists():
        subprocess.run([*NGS, "make-data", str(path), "--task", "logistic",
                        "--rows", str(rows), "--features", str(d), "--seed", "1"],
                       check=True, capture_output=True)
    return path


def ours(path: Path, out_dir: Path, name: str, extra: list[str],
         timeout: float | None = None) -> dict:
    """Our fit with ``extra`` flags; one interrupted by ``timeout`` (exit 130) is evaluated
    at the point it saved, and marked ``interrupted``.
    """
    run = out_dir / name
    body, secs, rss, rc = measured([*NGS, "fit", str(path), "--model", "logistic",
                                    "--out", str(run), "--overwrite", "--progress", "never",
                                    *extra], timeout)
    summary = _last_json(body)
    row = {"run": name, "flags": " ".join(extra) or "(none)", "seconds": secs, "rss_mb": rss,
           "exit": rc, "epochs": summary.get("epochs"), "converged": summary.get("converged")}
    if rc == 130 and summary.get("interrupted"):
        row["interrupted"] = True
    if rc == 0 or row.get("interrupted"):
        evaluated(row, run, path)
    return row


def evaluated(row: dict, run: Path, path: Path) -> dict:
    """``row`` with the training loss of the point ``run`` saved and its rollbacks."""
    ev = _last_json(subprocess.run([*NGS, "evaluate", str(run), str(path)],
                                   capture_output=True, text=True).stdout)
    row["loss"] = ev.get("log_loss")
    log = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    row["rollbacks"] = sum('"rollback"' in line for line in log)
    return row


def reference(path: Path, solver: str) -> dict:
    body, secs, rss, rc = measured([sys.executable, "-c", REF_CODE, str(path), solver])
    res = _last_json(body)
    name = {"lbfgs": "sklearn LogisticRegression (lbfgs)", "liblinear": "LIBLINEAR"}[solver]
    return {"run": name, "flags": "", "seconds": secs, "rss_mb": rss, "exit": rc,
            "loss": res.get("loss"), "fit_seconds": res.get("seconds"),
            "n_iter": res.get("n_iter")}


def bench(d: int, rows: int, data_dir: Path, out_dir: Path, runs: set[str],
          timeout: float | None = None, one_pass: tuple[str, ...] = ()) -> list[dict]:
    path = make_data(data_dir, d, rows)
    rows_out = []
    if "ours" in runs:
        rows_out += [ours(path, out_dir, f"d{d}-one-pass", ["--epochs", "1"]),
                     ours(path, out_dir, f"d{d}-default", [], timeout)]
    for flags in one_pass:  # one pass with other flags, e.g. another structure
        extra = shlex.split(flags)
        slug = "-".join(v.lstrip("-") for v in extra) or "default"
        rows_out.append(ours(path, out_dir, f"d{d}-one-pass-{slug}", ["--epochs", "1", *extra]))
    rows_out += [reference(path, solver) for solver in ("lbfgs", "liblinear") if solver in runs]
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    for r in rows_out:
        r.update(d=d, rows=rows, commit=commit)
    return rows_out


def with_gaps(results: list[dict]) -> list[dict]:
    """Each row's relative excess loss over the lowest of the runs on the same data;
    ``gap_to`` says ``"ours"`` where no run there reached an optimum (no reference, no
    converged fit), so the gap is a lower bound only.
    """
    for r in results:
        same = [o for o in results if (o["d"], o["rows"]) == (r["d"], r["rows"])]
        best = min((o["loss"] for o in same if o.get("loss") is not None), default=math.nan)
        r["gap"] = (r["loss"] - best) / best if r.get("loss") is not None else None
        optimum = any(o.get("converged") or not o["run"].startswith(f"d{o['d']}-")
                      for o in same if o.get("loss") is not None)
        r["gap_to"] = "optimum" if optimum else "ours"
    return results


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"### Wide dense logistic regression ({meta['date']}, {meta['machine']}, "
             f"commit {meta['commit']})", "",
             "| d | rows | run | flags | gap | passes | converged | rollbacks | seconds | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gap = "–" if r.get("gap") is None else f"{r['gap']:.2e}"
        if r.get("gap") is not None and r.get("gap_to") == "ours":
            gap = f"≥ {gap} *"
        rss = "–" if not math.isfinite(r.get("rss_mb", math.nan)) else f"{r['rss_mb']:,.0f}"
        lines.append(f"| {r['d']:,} | {r['rows']:,} | {r['run']} | {r['flags']} | {gap} | "
                     f"{r.get('epochs') or '–'} | "
                     f"{'interrupted' if r.get('interrupted') else r.get('converged', '–')} | "
                     f"{r.get('rollbacks', '–')} | {r['seconds']:.1f} | {rss} |")
    lines.append("")
    if any(r.get("gap_to") == "ours" for r in results):
        lines += ["\\* No optimum measured on these data (no reference run, no converged "
                  "fit): the gap is to our lowest loss there, a lower bound.", ""]
    lines += rss_ratios(results)
    commands = meta.get("commands") or [meta["command"]]
    lines.append("Commands: " + "; ".join(f"`{c}`" for c in commands) + ".")
    return "\n".join(lines) + "\n"


def rss_ratios(results: list[dict]) -> list[str]:
    """Issue 18's memory target: each of our runs' peak RSS at d = 3,000 against the same
    run's at d = 300 (at most 1.5x).
    """
    ours_rss = {(r["d"], r["flags"]): r["rss_mb"] for r in results
                if r["run"].startswith(f"d{r['d']}-")
                and (r.get("exit") == 0 or r.get("interrupted"))}
    out = []
    for (d, flags), rss in sorted(ours_rss.items()):
        base = ours_rss.get((300, flags))
        if d == 3000 and base:
            out.append(f"Peak RSS at d = 3,000 against d = 300, `fit {flags}`: {rss:,.0f} / "
                       f"{base:,.0f} MB = {rss / base:.2f}x (target at most 1.5x).")
    return [*out, ""] if out else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="1000,3000", help="comma-separated feature counts")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows per dataset (default: 200 per feature, at least 20,000)")
    ap.add_argument("--data", default="/tmp/natgrad-wide-data", help="data directory")
    ap.add_argument("--out", default="scripts/results/wide-latest", help="report prefix")
    ap.add_argument("--runs", default="ours,lbfgs,liblinear",
                    help="comma-separated: ours (one pass and the default fit), lbfgs "
                         "(scikit-learn), liblinear")
    ap.add_argument("--refs-max-d", type=int, default=3000,
                    help="skip the references above this many features (LIBLINEAR took "
                         "211 s at 200,000 x 1,000 here)")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON",
                    help="keep the rows of an earlier report that this run does not redo "
                         "(repeatable); the gaps are recomputed over all rows")
    ap.add_argument("--timeout", type=float, default=None,
                    help="interrupt the default fit (SIGINT) after this many seconds and "
                         "report the point it saved (marked interrupted)")
    ap.add_argument("--one-pass", action="append", default=[], metavar="FLAGS",
                    help="also one pass with these fit flags, e.g. '--structure lowrank' "
                         "(repeatable; --runs '' for these alone)")
    ap.add_argument("--quick", action="store_true", help="d = 200, 20,000 rows")
    args = ap.parse_args(argv)
    dims = [200] if args.quick else [int(v) for v in args.dims.split(",") if v]
    data_dir, out = Path(args.data), Path(args.out)
    data_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for d in dims:
        rows = args.rows or max(20_000, 200 * d)
        if args.quick:
            rows = 20_000
        runs = {v for v in args.runs.split(",") if v == "ours" or d <= args.refs_max_d}
        for r in bench(d, rows, data_dir, out.parent / f"{out.name}-runs", runs,
                       args.timeout, tuple(args.one_pass)):
            results.append(r)
            print(json.dumps(r), flush=True)
    this_command = "python scripts/wide_bench.py " + shlex.join(argv or sys.argv[1:])
    commands, done = [], {(r["d"], r["run"]) for r in results}
    for path in args.merge:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
        for r in old["results"]:
            if (r["d"], r["run"]) in done:
                continue
            run = Path(path[:-len(".json")] + "-runs") / r["run"]
            if r.get("exit") == 130 and r.get("loss") is None and run.exists():
                # interrupted by hand (SIGINT, it checkpoints): the point it saved
                r["interrupted"] = True
                evaluated(r, run, make_data(data_dir, r["d"], r["rows"]))
            results.append(r)
        commands += old["meta"].get("commands") or [old["meta"]["command"]]
    results = with_gaps(sorted(results, key=lambda r: r["d"]))
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    meta = {"date": time.strftime("%Y-%m-%d"), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": this_command, "commands": [*commands, this_command] if dims else commands}
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2),
                                   encoding="utf-8")
    Path(f"{out}.md").write_text(markdown(results, meta), encoding="utf-8")
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
