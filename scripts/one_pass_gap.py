"""Where a sparse one pass's held-out gap comes from (issue 20): one ``fit --epochs 1`` of a
logistic model on a ``scripts/sparse_bench_data.py`` store, with any fit options, scored
against the penalized optimum and split into scale and noise.

Usage::

    python scripts/one_pass_gap.py STORE                      # the default one pass
    python scripts/one_pass_gap.py STORE -- --batch-size 4096 --lr 1.3
    python scripts/one_pass_gap.py STORE --seeds 0,1,2,3      # the shuffle's spread

The optimum (LIBLINEAR ``-s 0 -c 1/(λn) -B 1 -R -e 1e-8``, as ``sparse_bench.py``'s
reference) is computed once and kept in ``--work`` (keyed by the store's path). Printed a
line per run, and a JSON list of them last:

* ``held_out_gap``: held-out log-loss over the optimum's, minus 1 (the bench's column);
* ``objective_gap``: training objective (mean log-loss + λ/2‖coef‖²) minus the optimum's;
* ``cos``, ``proj``: the cosine of the one pass's coefficients with the optimum's, and
  their projection on them (``coef·opt / opt·opt``): 1 − cos is the noise, proj the scale;
* ``best_scale``, ``best_gap``: the held-out gap after the best ``(s, b)`` for
  ``s·coef + b`` (fitted on the held-out rows: how much of the gap a scale and an intercept
  alone would remove; the optimum's own line shows what it gains the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_bench_data as sbd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def optimum(store: Path, l2: float, work: Path) -> dict:
    """The penalized optimum's coefficients, intercept and measures (cached in ``work``)."""
    import zarr

    key = work / (str(store.resolve()).strip("/").replace("/", "_") + f"-l2={l2!r}")
    if key.with_suffix(".json").exists():
        ref = json.loads(key.with_suffix(".json").read_text())
        z = np.load(key.with_suffix(".npz"))
        return {**ref, "coef": z["coef"], "intercept": float(z["intercept"])}
    from liblinear.liblinearutil import parameter, problem, train

    g = zarr.open_group(str(store), mode="r")
    X = sbd.load_csr(g["X"])
    n = X.shape[0]
    m = train(problem(np.asarray(g["y"][:]), X),
              parameter(f"-s 0 -c {1.0 / (l2 * n)!r} -B 1 -R -e 1e-8 -q"))
    w, b = m.get_decfun()
    sign = 1.0 if m.get_labels()[0] == 1 else -1.0
    coef, intercept = sign * np.asarray(w, dtype=np.float64), sign * float(b)
    ref = {"train": sbd.logistic_measures(g["X"], g["y"], coef, intercept, l2),
           "test": sbd.logistic_measures(g["X_test"], g["y_test"], coef, intercept, l2)}
    work.mkdir(parents=True, exist_ok=True)
    np.savez(key.with_suffix(".npz"), coef=coef, intercept=intercept)
    key.with_suffix(".json").write_text(json.dumps(ref))
    return {**ref, "coef": coef, "intercept": intercept}


def one_pass(store: Path, l2: float, opts: list[str], natgrad: Path, work: Path) -> dict:
    """``fit --epochs 1`` in its own process: fit seconds and the coefficients."""
    env = dict(os.environ, PYTHONPATH=str(natgrad))
    ng = [sys.executable, "-m", "natgrad_stream"]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        run = Path(tmp) / "run"
        cmd = [*ng, "fit", str(store), "--model", "logistic", "--x", "X", "--y", "y",
               "--l2", repr(l2), "--out", str(run), "--progress", "never", "--epochs", "1",
               *opts]
        # from the work directory: ``python -m`` puts the working directory first on sys.path
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if r.returncode != 0:
            raise SystemExit(f"fit failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        summary = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
        p = subprocess.run([*ng, "params", str(run)], capture_output=True, text=True, env=env,
                           cwd=tmp, check=True)
        params = json.loads(p.stdout[p.stdout.index("{"):])
    return {"fit_seconds": summary.get("seconds"),
            "coef": np.asarray(params["coef"], dtype=np.float64).ravel(),
            "intercept": float(np.ravel(params["intercept"])[0])}


def best_scale(Xt, yt, coef, intercept) -> tuple[float, float, float]:
    """``(s, b, held-out log-loss)`` of the best ``s·coef`` and intercept ``b``."""
    from scipy.optimize import minimize

    z = Xt @ coef

    def loss(v):
        u = v[0] * z + v[1]
        return float(np.mean(np.logaddexp(0.0, u) - yt * u))

    res = minimize(loss, [1.0, intercept], method="Nelder-Mead")
    return float(res.x[0]), float(res.x[1]), float(res.fun)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--l2", type=float, default=1e-5)
    ap.add_argument("--seeds", default="", help="comma-separated --seed values (one run each)")
    ap.add_argument("--natgrad", type=Path, default=REPO, help="natgrad_stream checkout")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "one-pass-gap")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.fit_options = argv[cut + 1:]  # after ``--``: options for fit
    import zarr

    args.work.mkdir(parents=True, exist_ok=True)
    ref = optimum(args.store, args.l2, args.work)
    g = zarr.open_group(str(args.store), mode="r")
    Xt, yt = sbd.load_csr(g["X_test"]), np.asarray(g["y_test"][:], dtype=np.float64)
    s0, _, l0 = best_scale(Xt, yt, ref["coef"], ref["intercept"])
    opt_line = {"run": "optimum", "best_scale": s0,
                "best_gap": l0 / ref["test"]["log_loss"] - 1.0}
    print(f"optimum: held-out log-loss {ref['test']['log_loss']:.6f}; best scale {s0:.3f} "
          f"gives {100 * opt_line['best_gap']:+.3f}%", flush=True)
    seeds = [s for s in args.seeds.split(",") if s] or [None]
    rows = [opt_line]
    for seed in seeds:
        opts = [*args.fit_options, *([] if seed is None else ["--seed", seed])]
        t = time.perf_counter()
        r = one_pass(args.store, args.l2, opts, args.natgrad, args.work)
        wall = time.perf_counter() - t
        coef, b = r["coef"], r["intercept"]
        tr = sbd.logistic_measures(g["X"], g["y"], coef, b, args.l2)
        te = sbd.logistic_measures(g["X_test"], g["y_test"], coef, b, args.l2)
        w = ref["coef"]
        s, _, lb = best_scale(Xt, yt, coef, b)
        row = {"run": " ".join(opts) or "(defaults)",
               "held_out_gap": te["log_loss"] / ref["test"]["log_loss"] - 1.0,
               "objective_gap": tr["objective"] - ref["train"]["objective"],
               "cos": float(coef @ w / (np.linalg.norm(coef) * np.linalg.norm(w))),
               "proj": float(coef @ w / (w @ w)), "intercept": b,
               "optimum_intercept": ref["intercept"], "best_scale": s,
               "best_gap": lb / ref["test"]["log_loss"] - 1.0,
               "fit_seconds": r["fit_seconds"], "wall_seconds": wall,
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(f"{row['run']}: held-out gap {100 * row['held_out_gap']:+.3f}%, objective gap "
              f"{row['objective_gap']:.3e}, 1 - cos {1 - row['cos']:.2e}, proj "
              f"{row['proj']:.4f}, intercept {b:.4f} ({ref['intercept']:.4f}); best scale "
              f"{s:.3f}: {100 * row['best_gap']:+.3f}%; fit {r['fit_seconds']:.1f} s "
              f"(load {row['load']:.1f})", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
