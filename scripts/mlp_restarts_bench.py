#!/usr/bin/env python
"""The mlp's default fit on scikit-learn's diabetes, robust to the data's layout and seed.

Issue 17 asks the default mlp fit to reach scikit-learn's best of 5 restarts of
``MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", solver="lbfgs", alpha=0,
max_iter=5000)`` (training MSE, standardized ``X`` and ``y``). A non-convex fit's result is
a draw over local minima, so one panel row can pass by luck: this script runs the default
fit (``NaturalGradientLearner(make_model("mlp", 10, seed=S)).fit(data)``, nothing tuned)
for several base seeds ``S`` and three layouts of the same rows (in-memory arrays, a Zarr
copy in 100-row chunks, and the rows shuffled in memory), and scikit-learn's own fits for
``random_state`` 0 to ``--sklearn-fits - 1`` (their best of 5 is the reference; the spread
of all of them says how lucky that best is).

Usage::

    python scripts/mlp_restarts_bench.py                       # 3 seeds × 3 layouts
    python scripts/mlp_restarts_bench.py --seeds 0,100 --layouts arrays,zarr100

Writes ``scripts/results/mlp-restarts-latest.md`` and ``.json`` (``--out PREFIX``).
Each fit runs in this process after an untimed warm-up (Numba compiles once).
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
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from natgrad_stream.learner import NaturalGradientLearner  # noqa: E402
from natgrad_stream.models import make_model  # noqa: E402
from natgrad_stream.training.learner import pass_cap_notes_dropped  # noqa: E402

LAYOUTS = ("arrays", "zarr100", "shuffled")


def diabetes():
    """Standardized diabetes ``(X, y)`` (442 × 10), as ``scripts/model_panel.py`` makes
    it (from the raw data: scikit-learn's pre-scaled copy differs in round-off, enough to
    send its fits to other minima: their best of 5 is 0.0767 there against 0.0699 here).
    """
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    X, y = d.data, d.target
    return (X - X.mean(axis=0)) / X.std(axis=0), (y - y.mean()) / y.std()


def sklearn_fits(X, y, n):
    from sklearn.neural_network import MLPRegressor

    out = []
    for seed in range(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            m = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", solver="lbfgs",
                             alpha=0.0, max_iter=5000, random_state=seed).fit(X, y)
        out.append({"random_state": seed, "mse": float(np.mean((y - m.predict(X)) ** 2)),
                    "n_iter": int(m.n_iter_), "seconds": time.perf_counter() - t0})
    return out


def layout_data(layout, X, y, tmp):
    if layout == "arrays":
        return (X, y)
    if layout == "shuffled":
        p = np.random.default_rng(12345).permutation(len(y))
        return (X[p], y[p])
    import zarr

    path = Path(tmp) / "diabetes.zarr"
    if not path.exists():
        g = zarr.open_group(str(path), mode="w", zarr_format=3)
        g.create_array("X", shape=X.shape, chunks=(100, X.shape[1]), dtype="f8")[...] = X
        g.create_array("y", shape=y.shape, chunks=(100,), dtype="f8")[...] = y
    return str(path)


def ours(data, seed):
    t0 = time.perf_counter()
    lr = NaturalGradientLearner(make_model("mlp", 10, seed=seed)).fit(data)
    r = lr.result
    kept = [q for q in r.restarts if q["kept"]][0] if r.restarts else None
    return {"mse": 2 * r.train_loss, "converged": bool(r.converged), "epochs": r.epochs,
            "starts": len(r.restarts or [1]),
            "continued": sum(not q.get("screened_out", False) for q in r.restarts or []),
            "kept_seed": None if kept is None else kept["model"]["seed"],
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,100,200")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--sklearn-fits", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/mlp-restarts-latest"))
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    layouts = a.layouts.split(",")
    X, y = diabetes()
    load0 = os.getloadavg()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # what the fits run
    sk = sklearn_fits(X, y, max(5, a.sklearn_fits))
    ref = min(f["mse"] for f in sk[:5])
    with pass_cap_notes_dropped():  # the warm-up's one line
        NaturalGradientLearner(make_model("mlp", 10), n_init=1).fit((X[:100], y[:100]),
                                                                    epochs=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for layout in layouts:
                r = {"seed": seed, "layout": layout, **ours(layout_data(layout, X, y, tmp),
                                                            seed)}
                r["meets"] = r["mse"] <= ref
                rows.append(r)
                print(json.dumps(r), flush=True)
    mses = sorted(f["mse"] for f in sk)
    head = (f"### mlp default fit on standardized diabetes ({time.strftime('%Y-%m-%d')}, "
            f"{platform.machine()}, {os.cpu_count()} cores, commit {commit}; load average "
            f"at the start {load0[0]:.1f}, at the end {os.getloadavg()[0]:.1f})")
    lines = [head, "",
             f"Reference: scikit-learn's best of 5 (random_state 0–4): MSE {ref:.5f}. "
             f"Its {len(sk)} fits (random_state 0–{len(sk) - 1}): median {np.median(mses):.5f}, "
             f"{sum(m <= ref for m in mses)} of {len(sk)} at or below the reference, "
             f"{sum(f['seconds'] for f in sk[:5]):.1f} s for the first 5.", "",
             "| base seed | layout | MSE | meets | converged | passes (kept fit) | starts | "
             "continued | kept seed | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['layout']} | {r['mse']:.5f} | "
                     f"{'yes' if r['meets'] else 'no'} | {r['converged']} | {r['epochs']} | "
                     f"{r['starts']} | {r['continued']} | {r['kept_seed']} | "
                     f"{r['seconds']:.1f} |")
    met = sum(r["meets"] for r in rows)
    lines += ["", f"{met} of {len(rows)} default fits at or below the reference.", "",
              "Layouts: arrays, the standardized rows in memory; zarr100, a Zarr copy in "
              "100-row chunks (another batch order); shuffled, the rows permuted in memory. "
              f"Command: `python scripts/mlp_restarts_bench.py --seeds {a.seeds} "
              f"--layouts {a.layouts}`."]
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    Path(a.out + ".json").write_text(json.dumps({"reference_mse": ref, "sklearn": sk,
                                                 "rows": rows, "commit": commit}, indent=1))
    print("\n".join(lines))
    return 0 if met == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
