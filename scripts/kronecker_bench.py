"""Wide softmax (issue 18): the Kronecker structure against the diagonal and low-rank ones,
one pass and the default fit, with the gap to the optimum, wall time and peak RSS.

Usage::

    python scripts/kronecker_bench.py                          # d = 1,000, K = 20, 40,000 rows
    python scripts/kronecker_bench.py --dims 200 --classes 10 --rows 20000   # (a minute)

Data: raw, correlated, offset features of ``make-data``'s feature model
(:class:`~natgrad_stream.data.datasets.FeatureModel`) and labels from a softmax model with
``K`` classes (reference class 0, each class's logit of standard deviation 2, as
``make-data --task softmax``, which has 3 classes), generated in each run's process from
the seed. Objective: the mean log-loss plus ``λ/2·‖coef‖²`` (``--l2``) of the K − 1
non-reference coefficient rows. Each run is its own process, so its peak RSS
(``ru_maxrss``) is its own (the data's float64 copy included, the same for all). The
references: SciPy's L-BFGS-B on the objective in NumPy (float64, ``gtol`` 1e-10), and
scikit-learn's ``LogisticRegression`` at ``C = 1/(λ·n)``, whose penalty takes the K rows of
its symmetric parameterization (another optimum for K > 2: its time and RSS, not a gap).
**gap**: the relative excess of a run's objective over the lowest of all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RUN_CODE = r"""
import json, resource, sys, time, warnings
import numpy as np
d, K, n = (int(v) for v in sys.argv[1:4])
lam, what = float(sys.argv[4]), sys.argv[5]
from natgrad_stream.data.datasets import FeatureModel
rng = np.random.default_rng([7, d, K])
fm = FeatureModel(d, 7)
C = fm.covariance()
B = np.zeros((K, d)); b = np.zeros(K)
for c in range(1, K):
    beta = rng.standard_normal(d) / fm.scales
    beta *= 2.0 / np.sqrt(beta @ C @ beta)
    B[c] = beta; b[c] = -fm.offsets @ beta + rng.uniform(-0.5, 0.5)
X = fm.sample(rng, n)
Z = X @ B.T + b; Z -= Z.max(axis=1, keepdims=True); P = np.exp(Z)
cdf = np.cumsum(P, axis=1) / P.sum(axis=1, keepdims=True)
y = np.minimum((rng.random(n)[:, None] >= cdf).sum(axis=1), K - 1).astype(np.float64)
del Z, P, cdf
Xt = None

def objective(theta):
    T = theta.reshape(K - 1, d + 1)
    Z = np.hstack([np.zeros((n, 1)), X @ T[:, :-1].T + T[:, -1]])
    top = Z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(Z - top).sum(axis=1))
    Y = np.zeros((n, K)); Y[np.arange(n), y.astype(int)] = 1.0
    J = np.mean(lse - (Z * Y).sum(axis=1)) + 0.5 * lam * np.sum(T[:, :-1] ** 2)
    R = (np.exp(Z - lse[:, None]) - Y)[:, 1:] / n
    g = np.hstack([R.T @ X + lam * T[:, :-1], R.sum(axis=0)[:, None]])
    return J, g.reshape(-1)

out = {}
t0 = time.perf_counter()
if what == "scipy":
    import scipy.optimize
    res = scipy.optimize.minimize(objective, np.zeros((K - 1) * (d + 1)), jac=True,
                                  method="L-BFGS-B",
                                  options={"maxiter": 100000, "maxfun": 200000,
                                           "ftol": 1e-16, "gtol": 1e-10})
    out.update(objective=float(res.fun), iterations=int(res.nit))
elif what == "sklearn":
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=1.0 / (lam * n), tol=1e-10, max_iter=100000).fit(X, y)
    out.update(iterations=int(np.max(m.n_iter_)))
else:
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model
    structure, passes = what.split(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr = NaturalGradientLearner(make_model("softmax", d, n_classes=K), structure=structure,
                                    l2=lam).fit((X.astype(np.float32), y),
                                                epochs=1 if passes == "one" else None)
    out.update(objective=float(objective(lr.theta)[0]), passes=int(lr.result.epochs),
               converged=bool(lr.converged), rewhitens=int(lr.rewhitens),
               data_passes=round(lr.samples / n, 2))
out["seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

STRUCTURES = ("kronecker", "lowrank", "diagonal")


def run(d, K, n, lam, what) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN_CODE, str(d), str(K), str(n), str(lam),
                           what], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"run": what, "error": proc.stderr.strip().splitlines()[-1:],
                "wall": time.perf_counter() - t0}
    return {"run": what, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--runs", default="ours,scipy,sklearn",
                    help="comma-separated: ours (every structure, one pass and default), "
                    "scipy, sklearn, or single runs such as kronecker:one")
    ap.add_argument("--out", type=Path, default=Path("scripts/results/kronecker"))
    a = ap.parse_args()
    todo = []
    for r in a.runs.split(","):
        if r == "ours":
            todo += [f"{s}:{p}" for p in ("one", "default") for s in STRUCTURES]
        elif r:
            todo.append(r)
    rows = []
    for what in todo:
        res = run(a.dims, a.classes, a.rows, a.l2, what)
        print(json.dumps(res), flush=True)
        rows.append(res)
        report(a, rows)  # (after every run: a long bench keeps what it measured)
    print(a.out.with_suffix(".md").read_text())


def report(a, rows) -> None:
    """Write ``--out`` .json and .md for the runs so far (gaps to the lowest objective)."""
    best = min((r["objective"] for r in rows if "objective" in r), default=None)
    for r in rows:
        if best is not None and "objective" in r:
            r["gap"] = (r["objective"] - best) / abs(best)
    load = os.getloadavg()
    meta = {"d": a.dims, "K": a.classes, "rows": a.rows, "l2": a.l2,
            "params": (a.classes - 1) * (a.dims + 1), "best_objective": best,
            "cpus": os.cpu_count(), "load_at_end": [round(x, 1) for x in load],
            "python": platform.python_version()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    lines = [f"# Wide softmax: d = {a.dims:,}, K = {a.classes}, {a.rows:,} rows, "
             f"l2 = {a.l2:g} (P = {meta['params']:,})", "",
             f"`python scripts/kronecker_bench.py --dims {a.dims} --classes {a.classes} "
             f"--rows {a.rows} --l2 {a.l2:g}`; {meta['cpus']} cores shared, load at the end "
             f"{meta['load_at_end']}; best objective {best!r}.", "",
             "| run | gap to the optimum | passes (reads of the data) or iterations | wall s "
             "| peak RSS MB |", "|---|---|---|---|---|"]
    for r in rows:
        gap = f"{r['gap']:.2e}" if "gap" in r else ("(own objective)" if "error" not in r
                                                   else f"error: {r['error']}")
        count = f"{r['passes']} ({r['data_passes']:g})" if "passes" in r else \
            r.get("iterations", "")
        lines.append(f"| {r['run']} | {gap} | {count} | "
                     f"{r.get('seconds', r.get('wall', 0.0)):.1f} | "
                     f"{r.get('peak_rss_mb', 0.0):.0f} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
