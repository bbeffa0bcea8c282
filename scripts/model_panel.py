#!/usr/bin/env python
"""Model panel: the default ``fit`` of every model family against an independent reference,
on synthetic data with known truth and on real data shipped by scikit-learn/statsmodels.

Usage::

    python scripts/model_panel.py                   # every row (a few minutes)
    python scripts/model_panel.py --quick           # smaller synthetic data, printed only
    python scripts/model_panel.py --only ica,mlp    # some model families

Writes ``scripts/results/model-panel-latest.md`` and ``.json`` (``--out PREFIX`` to change;
``--quick`` and ``--only`` write only when ``--out`` is given). Issue 17, "A panel script".

Our fit: ``NaturalGradientLearner(make_model(name, d)).fit(data)`` with nothing else than what
the model requires (softmax: ``n_classes``; gaussian-mean with d ≠ 2: the mixing matrix).
Synthetic data are written by :func:`natgrad_stream.data.datasets.make_dataset` and fitted
from the Zarr path; real data are fitted from in-memory arrays ``(X, y)`` or ``(X,)``. The
wall time is the ``fit`` call's, after an untimed warm-up fit on 500 rows of the same data
(Numba compiles or loads its kernels once per process). Nothing is tuned: a failing row is
a result.

References (on the same data, float64; each with its own wall time):

- logistic, linear, poisson, softmax: statsmodels' maximum likelihood (``Logit`` and
  ``MNLogit`` by Newton at ``tol=1e-12``, ``OLS``, ``GLM(Poisson)`` by IRLS at
  ``tol=1e-13``), evaluated with our loss. Measure: the relative gap ``(J − J*)/|J*|``.
  Poisson's J is the full negative log-likelihood of the counts (our loss omits
  ``log y!``; the constant is added to both, as in ``convergence_panel.py``).
- gaussian: the closed-form MLE (sample mean, biased sample covariance); gaussian-mean
  (``x ~ N(Aθ, I)``): ``θ̂ = argmin ‖x̄ − Aθ‖`` (least squares). Measure: the relative gap.
- ising: the optimum of our MPF objective by SciPy's L-BFGS-B from θ = 0 on the whole data
  (the model's loss and gradient, ``gtol=1e-11``, ``ftol=1e-16``). Measure: relative gap.
- ica: scikit-learn's FastICA (``whiten="unit-variance"``, ``max_iter=10000``,
  ``tol=1e-8``, ``random_state=0``), the best of ``fun`` = logcosh, exp, cube by Amari
  distance of ``W A`` to the known mixing ``A`` (its wall time is that ``fun``'s). Measure:
  Amari distance of our ``W A``; also our loss against SciPy's L-BFGS-B optimum of the same
  ICA likelihood (from ``W = I/√v``, the model's own start, and from FastICA's best ``W``;
  the lower).
- mlp: training MSE of scikit-learn's ``MLPRegressor(hidden_layer_sizes=(16,),
  activation="tanh", solver="lbfgs", alpha=0, max_iter=5000)``, the best of
  ``random_state`` 0–4, fitted on the data as given and, where they are not standardized,
  also on standardized ``X`` and ``y`` (the same function class: the MSE maps back by
  ``Var(y)``); the reference is the lower, its wall time the sum of the fits. Measure: our
  training MSE.

Criterion ("meets", issue 17): convex and unnormalized objectives, gap ≤ 1e-6; mlp,
MSE ≤ the reference; ica, Amari ≤ FastICA's best.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from datetime import date
from pathlib import Path

import numpy as np

from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import MODEL_NAMES, make_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convergence_panel as cp  # noqa: E402  (its dataset loaders, loss offset and JSON helpers)

#: Relative gap counted as "at the optimum" (convex and unnormalized objectives).
TARGET = 1e-6
#: Rows of the untimed warm-up fit.
WARMUP_ROWS = 500
#: Synthetic data: task → (rows, features, quick rows). ``gaussian-mean:2`` is the paper's
#: 2-d example (the model's default mixing), ``gaussian-mean`` a random ill-conditioned A.
SYNTHETIC = {
    "logistic": (1_000_000, 10, 5_000),
    "linear": (1_000_000, 10, 5_000),
    "poisson": (1_000_000, 10, 5_000),
    "softmax": (500_000, 10, 5_000),
    "gaussian": (1_000_000, 8, 5_000),
    "gaussian-mean:2": (1_000_000, 2, 5_000),
    "gaussian-mean": (1_000_000, 6, 5_000),
    "ising": (200_000, 10, 5_000),
    "ica": (200_000, 4, 5_000),
    "mlp": (5_000, 10, 1_000),  # the reference is 10 fits of scikit-learn's MLP (~20 s)
}
SYNTHETIC_SEED = 1
#: Chunk rows of the synthetic Zarr stores.
CHUNK_ROWS = 8192
#: Seeds and restarts of the references.
MLP_RESTARTS = 5
ICA_FUNS = ("logcosh", "exp", "cube")
ICA_MIX_SEED = 17


# -- data ------------------------------------------------------------------------------------
def _case(name, source, model, X, y=None, *, n_classes=None, mixing=None, truth=None,
          true_mixing=None, note="", path=None, counts=None):
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = None if y is None else np.ascontiguousarray(y, dtype=np.float64)
    case = {"name": name, "source": source, "model": model, "X": X, "y": y, "w": None,
            "n_classes": n_classes, "mixing": mixing, "truth": truth,
            "true_mixing": true_mixing, "note": note, "path": path,
            "counts": counts if counts is not None else (y if model == "poisson" else None)}
    case["offset"] = cp.loss_offset(case)  # Poisson's log y!; 0 otherwise
    return case


def _from_cp(case, note=None):
    """A dataset of ``convergence_panel.py`` (unweighted) as a case of this panel."""
    return _case(case["name"], case["source"], case["model"], case["X"], case["y"],
                 n_classes=case["n_classes"], note=case["note"] if note is None else note)


def synthetic_case(key, workdir, quick):
    """``make_dataset`` data of ``key`` (see :data:`SYNTHETIC`), read back as float64."""
    import zarr

    from natgrad_stream.data.datasets import make_dataset

    task = key.split(":")[0]
    rows, d, qrows = SYNTHETIC[key]
    rows = qrows if quick else rows
    path = Path(workdir) / f"{key.replace(':', '-')}-{rows}.zarr"
    if not path.exists():
        make_dataset(path, task=task, rows=rows, features=d, chunk_rows=CHUNK_ROWS,
                     seed=SYNTHETIC_SEED)
    g = zarr.open_group(str(path), mode="r")
    X = np.asarray(g["X"][:], dtype=np.float64)
    y = np.asarray(g["y"][:], dtype=np.float64) if "y" in g.array_keys() else None
    truth = dict(g.attrs["natgrad_stream"]["true_params"])
    kw = {}
    if task == "softmax":
        kw["n_classes"] = int(truth["n_classes"])
    if task == "gaussian-mean" and d != 2:
        kw["mixing"] = np.asarray(g["A"][...], dtype=np.float64)
    if task == "ica":
        kw["true_mixing"] = np.asarray(truth["mixing"], dtype=np.float64)
    name = {"gaussian-mean:2": "synthetic, paper's A", "gaussian-mean": "synthetic, random A"}
    note = {"gaussian-mean:2": "x ~ N(Aθ, I) with the paper's A and θ = 0 (the model's "
            "default mixing)",
            "gaussian-mean": "random ill-conditioned A (singular values 3 … 0.03), given to "
            "the model (which needs it for d ≠ 2)"}
    return _case(name.get(key, "synthetic"), f"make_dataset(seed={SYNTHETIC_SEED})", task,
                 X, y, truth=truth, path=str(path), note=note.get(key, ""), **kw)


def _sources_mix():
    """Three independent real signals, unit variance, mixed by a seeded random 3 × 3 A:
    ``(X centred, A, the sources' excess kurtosis)``.

    Sources (scikit-learn's bundled images, 115,008 values each, the digits' count): the
    grayscale pixels of china.jpg (row by row), those of flower.jpg in a seeded random order
    (at the same positions the two images are correlated, −0.26) and the pixels of the
    8 × 8 digits.
    """
    from sklearn.datasets import load_digits, load_sample_images

    imgs = load_sample_images().images
    gray = [im.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for im in imgs]
    digits = load_digits().data.ravel().astype(np.float64)
    n = digits.size
    rng = np.random.default_rng(ICA_MIX_SEED)
    S = np.column_stack([gray[0].ravel()[:n], rng.permutation(gray[1].ravel())[:n], digits])
    S = (S - S.mean(axis=0)) / S.std(axis=0)
    A = rng.standard_normal((3, 3))
    X = S @ A.T
    return X - X.mean(axis=0), A, np.mean(S**4, axis=0) - 3.0


def real_cases(model):
    """Real datasets for ``model`` (nothing downloaded)."""
    from sklearn import datasets as sd

    if model in ("logistic", "linear", "poisson", "softmax"):
        want = {"logistic": ("breast_cancer[:10]", "spector"),
                "linear": ("diabetes (raw)", "longley"),
                "poisson": ("cpunish", "randhie"),
                "softmax": ("digits pooled 3x4", "anes96")}[model]
        pool = {c["name"]: c for c in cp.sklearn_cases([]) + cp.statsmodels_cases([])}
        return [_from_cp(pool[name]) for name in want]
    if model == "gaussian":
        return [_case("iris", "sklearn", model, sd.load_iris().data, note="4 features"),
                _case("wine", "sklearn", model, sd.load_wine().data,
                      note="13 raw features (scales 0.1 … 1000)")]
    if model == "gaussian-mean":
        return [_case("iris sepal", "sklearn", model, sd.load_iris().data[:, :2],
                      note="sepal length and width, the paper's A (the model's default)")]
    if model == "ising":
        dg = sd.load_digits().data
        on = dg > 8
        freq = on.mean(axis=0)
        cols = [int(j) for j in np.argsort(np.abs(freq - 0.5))[:10]]
        cols.sort()
        return [_case("digits pixels > 8", "sklearn", model, on[:, cols].astype(np.float64),
                      note=f"10 pixels closest to half on ({', '.join(map(str, cols))}), "
                      "binarized at 8")]
    if model == "ica":
        X, A, kurt = _sources_mix()
        k = [f"{v:.2f}" for v in kurt]
        return [_case("image signals mixed", "sklearn", model, X, true_mixing=A,
                      note="sources: the grayscale pixels of scikit-learn's china.jpg (excess "
                      f"kurtosis {k[0]}), those of flower.jpg in a seeded random order "
                      f"({k[1]}) and the 8 × 8 digits' pixels ({k[2]}), {X.shape[0]:,} values "
                      f"each, standardized; mixed by A ~ N(0, 1) (seed {ICA_MIX_SEED}), "
                      "centred")]
    if model == "mlp":
        di = sd.load_diabetes(scaled=False)
        X, y = di.data, di.target
        Xs = (X - X.mean(axis=0)) / X.std(axis=0)
        ys = (y - y.mean()) / y.std()
        return [_case("diabetes (standardized)", "sklearn", model, Xs, ys,
                      note="X and y standardized"),
                _case("diabetes (raw)", "sklearn", model, X, y, note="raw X and y")]
    raise ValueError(model)


def all_cases(models, workdir, quick):
    out = []
    for m in models:
        keys = [k for k in SYNTHETIC if k.split(":")[0] == m]
        out += [synthetic_case(k, workdir, quick) for k in keys]
        out += real_cases(m)
    return out


# -- our default fit -------------------------------------------------------------------------
def build_model(case):
    """``make_model(name, d)`` plus only what the model requires."""
    d = case["X"].shape[1]
    if case["model"] == "softmax":
        return make_model("softmax", d, n_classes=case["n_classes"])
    if case["model"] == "gaussian-mean" and case["mixing"] is not None:
        return make_model("gaussian-mean", d, mixing=case["mixing"])
    return make_model(case["model"], d)


def _arrays(case, rows=None):
    X = case["X"] if rows is None else case["X"][:rows]
    if case["y"] is None:
        return (X,)
    return (X, case["y"] if rows is None else case["y"][:rows])


class _Warnings(logging.Handler):
    """Collects the package's log warnings (e.g. the one-line note of a capped run)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _captured():
    handler, log = _Warnings(), logging.getLogger("natgrad_stream")
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.lines, caught
    finally:
        log.removeHandler(handler)


def fit_default(case):
    """Our default fit: (model, learner or None when it raised, wall seconds, info)."""
    info = {"warnings": [], "error": None}
    t0 = time.perf_counter()
    try:  # untimed warm-up: Numba compiles (or loads) the model's kernels
        with _captured():
            NaturalGradientLearner(build_model(case)).fit(_arrays(case, WARMUP_ROWS))
    except Exception:
        pass
    info["warmup_seconds"] = time.perf_counter() - t0
    model = build_model(case)
    data = case["path"] or _arrays(case)
    learner = None
    with _captured() as (logs, caught):
        t0 = time.perf_counter()
        try:
            learner = NaturalGradientLearner(model).fit(data)
        except Exception as exc:  # a failing fit is a result
            info["error"] = f"{type(exc).__name__}: {exc}"
            info["traceback"] = traceback.format_exc(limit=4)
        seconds = time.perf_counter() - t0
    info["warnings"] = logs + sorted({f"{type(c.message).__name__}: {c.message}"
                                      for c in caught})
    if learner is not None:
        info["summary"] = learner.result.to_dict()
    return model, learner, seconds, info


# -- references ------------------------------------------------------------------------------
def _loss(case, model, theta) -> float:
    """Our mean loss (plus Poisson's ``log y!`` constant), inf outside the domain."""
    try:
        return cp.objective(case, model, theta)
    except ValueError:
        return math.inf


def reference_glm(case, model):
    """The maximum-likelihood θ* of statsmodels, its wall seconds and a certificate."""
    import statsmodels.api as sm

    X, y, kind = case["X"], case["y"], case["model"]
    Xc = sm.add_constant(X, has_constant="add")
    n = X.shape[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        if kind == "logistic":
            r = sm.Logit(y, Xc).fit(method="newton", disp=0, maxiter=200, tol=1e-12)
            name, ok = "statsmodels Logit", r.mle_retvals["converged"]
        elif kind == "linear":
            r = sm.OLS(y, Xc).fit()
            name, ok = "statsmodels OLS", True
        elif kind == "poisson":
            r = sm.GLM(case["counts"], Xc, family=sm.families.Poisson()).fit(tol=1e-13,
                                                                              maxiter=200)
            name, ok = "statsmodels GLM(Poisson)", r.converged
        else:
            r = sm.MNLogit(y, Xc).fit(method="newton", disp=0, maxiter=200, tol=1e-12)
            name, ok = "statsmodels MNLogit", r.mle_retvals["converged"]
        seconds = time.perf_counter() - t0
    if kind == "softmax":
        params = np.asarray(r.params, dtype=np.float64)
        theta = np.vstack([params[1:], params[:1]]).T.ravel()
    else:
        theta = cp._glm_theta(r.params)
    J = _loss(case, model, theta)
    sm_J = r.ssr / (2 * n) if kind == "linear" else -r.llf / n
    info = {"reference": name, "converged": bool(ok),
            "llf_check": abs(J - sm_J) / abs(J),  # our loss at θ* vs statsmodels' own
            "newton_decrement": cp.newton_decrement(case, model, theta) / abs(J),
            "warnings": sorted({f"{type(c.message).__name__}: {str(c.message)[:100]}"
                                for c in caught})}
    return theta, seconds, info


def reference_gaussian(case, model):
    """Closed-form MLE: sample mean, biased covariance (gaussian); least squares (mean)."""
    from natgrad_stream.models.gaussian import vech

    X = case["X"]
    t0 = time.perf_counter()
    if case["model"] == "gaussian":
        mu = X.mean(axis=0)
        Xc = X - mu
        theta = np.r_[mu, vech(Xc.T @ Xc / X.shape[0])]
        name = "closed form (mean, biased covariance)"
    else:
        theta = np.linalg.lstsq(model.mixing, X.mean(axis=0), rcond=None)[0]
        name = "closed form (least squares of x̄ on A)"
    return theta, time.perf_counter() - t0, {"reference": name}


def _scipy_min(model, X, theta0, *, guard=False):
    """SciPy L-BFGS-B on our whole-data objective with the model's gradient."""
    import scipy.optimize

    ws = model.new_workspace("diagonal", n_threads=1)

    def fun(theta):
        try:
            loss, wsum = model.accumulate(X, None, None, theta, metric=None,
                                          structure="diagonal", ws=ws)
        except ValueError:
            if not guard:
                raise
            return math.inf, np.zeros_like(theta)
        return loss / wsum, ws.grad / wsum

    res = scipy.optimize.minimize(fun, np.asarray(theta0, dtype=np.float64), jac=True,
                                  method="L-BFGS-B",
                                  options={"maxiter": 20_000, "gtol": 1e-11, "ftol": 1e-16})
    return res


def reference_ising(case, model):
    """The MPF optimum by SciPy's L-BFGS-B from θ = 0."""
    t0 = time.perf_counter()
    res = _scipy_min(model, case["X"], np.zeros(model.n_params))
    return res.x, time.perf_counter() - t0, {
        "reference": "SciPy L-BFGS-B optimum of the MPF objective",
        "scipy": {"success": bool(res.success), "message": str(res.message),
                  "nit": int(res.nit), "nfev": int(res.nfev)}}


def reference_ica(case, model):
    """FastICA's best ``fun`` by Amari distance, and the L-BFGS-B optimum of our loss."""
    from sklearn.decomposition import FastICA

    from natgrad_stream.models.ica import amari_distance

    X, A = case["X"], case["true_mixing"]
    fast = {}
    for fun in ICA_FUNS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            error = None
            try:
                ica = FastICA(n_components=X.shape[1], fun=fun, whiten="unit-variance",
                              max_iter=10_000, tol=1e-8, random_state=0).fit(X)
                W = ica.components_
                amari = amari_distance(W @ A)
            except Exception as exc:
                W, amari, error = None, math.inf, f"{type(exc).__name__}: {exc}"
            secs = time.perf_counter() - t0
        fast[fun] = {"amari": amari, "seconds": secs, "W": W, "error": error,
                     "n_iter": None if W is None else int(ica.n_iter_),
                     "warnings": sorted({f"{type(c.message).__name__}: "
                                         f"{str(c.message)[:100]}" for c in caught})}
    best = min(fast, key=lambda f: fast[f]["amari"])
    # the model's own start (with the adaptive density: the whitened data, Gaussian shapes)
    # and FastICA's best W (with the model's starting shapes)
    theta0 = model.initial_params(X, None, None)
    starts = {"the model's start": theta0}
    if fast[best]["W"] is not None:
        starts[f"FastICA {best}"] = np.r_[fast[best]["W"].ravel(),
                                          theta0[X.shape[1] ** 2:]]
    opt = {}
    t0 = time.perf_counter()
    for name, theta0 in starts.items():
        res = _scipy_min(model, X, theta0, guard=True)
        opt[name] = {"loss": _loss(case, model, res.x), "success": bool(res.success),
                     "message": str(res.message), "nit": int(res.nit),
                     "amari": amari_distance(model.unmixing(res.x) @ A)}
    scipy_seconds = time.perf_counter() - t0
    J_star = min(o["loss"] for o in opt.values())
    for f in fast.values():
        f.pop("W")
    info = {"reference": f"FastICA {best}", "fastica": fast, "best_fun": best,
            "scipy_optimum": opt, "scipy_seconds": scipy_seconds, "J_star": J_star}
    return fast[best]["amari"], fast[best]["seconds"], info


def _mlp_best(X, y):
    from sklearn.neural_network import MLPRegressor

    fits = []
    for seed in range(MLP_RESTARTS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            m = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", solver="lbfgs",
                             alpha=0.0, max_iter=5000, random_state=seed).fit(X, y)
            secs = time.perf_counter() - t0
        fits.append({"random_state": seed, "mse": float(np.mean((y - m.predict(X)) ** 2)),
                     "seconds": secs, "n_iter": int(m.n_iter_),
                     "warnings": sorted({type(c.message).__name__ for c in caught})})
    return fits


def reference_mlp(case, model):
    """Best of 5 restarts of scikit-learn's MLPRegressor(lbfgs, alpha=0), on the data as
    given and on standardized data (MSE mapped back), whichever is lower.
    """
    X, y = case["X"], case["y"]
    runs = {"as given": _mlp_best(X, y)}
    mu, sd = X.mean(axis=0), X.std(axis=0)
    standardized = (np.allclose(mu, 0, atol=1e-8) and np.allclose(sd, 1, rtol=1e-8)
                    and abs(y.mean()) < 1e-8 and abs(y.std() - 1) < 1e-8)
    if not standardized:
        sd = np.where(sd > 0, sd, 1.0)
        ys = (y - y.mean()) / y.std()
        fits = _mlp_best((X - mu) / sd, ys)
        for f in fits:
            f["mse"] *= float(y.var())
        runs["standardized"] = fits
    best = {k: min(f["mse"] for f in v) for k, v in runs.items()}
    which = min(best, key=best.get)
    seconds = sum(f["seconds"] for v in runs.values() for f in v)
    return best[which], seconds, {
        "reference": f"sklearn MLPRegressor best of {MLP_RESTARTS} ({which})",
        "best": best, "fits": runs, "var_y": float(y.var())}


# -- truth (synthetic rows) ------------------------------------------------------------------
def truth_theta(case, model):
    """θ of the true model in our layout (None where there is no such θ)."""
    t, kind = case["truth"], case["model"]
    if t is None:
        return None
    if kind in ("logistic", "linear", "poisson"):
        return np.r_[t["coef"], t["intercept"]]
    if kind == "softmax":
        coef, icpt = np.asarray(t["coef"]), np.asarray(t["intercept"])
        return np.hstack([coef[1:], icpt[1:, None]]).ravel()
    if kind == "gaussian":
        from natgrad_stream.models.gaussian import vech

        return np.r_[t["mean"], vech(np.asarray(t["cov"]))]
    if kind == "gaussian-mean":
        return np.asarray(t["theta"], dtype=np.float64)
    if kind == "ising":
        from natgrad_stream.models.ising import pack_params

        return pack_params(t["J"], t["h"])
    return None  # ica: the truth is A (the Amari distance); mlp: a network of 8 units


# -- one row ---------------------------------------------------------------------------------
def run_case(case):
    """Fit, reference, measure: one row of the panel (a dict, JSON-ready)."""
    kind = case["model"]
    n, d = case["X"].shape
    model, learner, seconds, info = fit_default(case)
    row = {"model": kind, "dataset": case["name"], "source": case["source"], "n": n, "d": d,
           "params": model.n_params, "note": case["note"], "seconds": seconds,
           "error": info["error"], "warnings": info["warnings"],
           "warmup_seconds": info["warmup_seconds"], "summary": info.get("summary"),
           "converged": None, "epochs": None}
    theta = None
    if learner is not None:
        s = learner.result
        theta = np.array(learner.theta, dtype=np.float64)
        row.update(converged=bool(s.converged), epochs=s.epochs)
    if "traceback" in info:
        row["traceback"] = info["traceback"]
    J = math.inf if theta is None else _loss(case, model, theta)
    row["loss"] = J
    t_true = truth_theta(case, model)
    if t_true is not None:
        row["loss_at_truth"] = _loss(case, model, t_true)
    if kind in ("logistic", "linear", "poisson", "softmax", "gaussian", "gaussian-mean",
                "ising"):
        ref = {"logistic": reference_glm, "linear": reference_glm, "poisson": reference_glm,
               "softmax": reference_glm, "gaussian": reference_gaussian,
               "gaussian-mean": reference_gaussian, "ising": reference_ising}[kind]
        theta_ref, ref_seconds, ref_info = ref(case, model)
        J_ref = _loss(case, model, theta_ref)
        gap = (J - J_ref) / abs(J_ref) if math.isfinite(J) else math.inf
        row.update(measure="gap", value=gap, reference_value=J_ref,
                   reference_seconds=ref_seconds, reference_info=ref_info,
                   reference=ref_info["reference"], meets=bool(gap <= TARGET),
                   criterion=f"gap ≤ {TARGET:g}")
        if kind == "poisson":
            row["gap_without_log_y_factorial"] = (
                (J - J_ref) / abs(J_ref - case["offset"]) if math.isfinite(J) else math.inf)
    elif kind == "ica":
        from natgrad_stream.models.ica import amari_distance

        fast_amari, ref_seconds, ref_info = reference_ica(case, model)
        amari = math.inf if theta is None else amari_distance(model.unmixing(theta)
                                                              @ case["true_mixing"])
        J_star = ref_info["J_star"]
        row.update(measure="amari", value=amari, reference_value=fast_amari,
                   reference_seconds=ref_seconds, reference_info=ref_info,
                   reference=ref_info["reference"], meets=bool(amari <= fast_amari),
                   criterion="Amari ≤ FastICA best",
                   loss_gap=(J - J_star) / abs(J_star) if math.isfinite(J) else math.inf)
    else:  # mlp
        mse = math.inf if theta is None else float(
            np.mean((case["y"] - model.predict(case["X"], theta)) ** 2))
        ref_mse, ref_seconds, ref_info = reference_mlp(case, model)
        row.update(measure="mse", value=mse, reference_value=ref_mse,
                   reference_seconds=ref_seconds, reference_info=ref_info,
                   reference=ref_info["reference"], meets=bool(mse <= ref_mse),
                   criterion="MSE ≤ reference", mse_over_var=mse / float(case["y"].var()))
        if case["truth"] is not None:
            from natgrad_stream.data.synthetic.mlp import network

            row["mse_at_truth"] = float(np.mean((case["y"] - network(case["truth"],
                                                                     case["X"])) ** 2))
    return row


# -- report ----------------------------------------------------------------------------------
def _num(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.{digits}g}" if 1e-3 <= a < 1e5 else f"{v:.1e}"


def _result_cell(r):
    if r["error"]:
        return f"error: {r['error'][:60]}"
    if r["measure"] == "gap":
        return f"gap {_num(r['value'], 2)}"
    if r["measure"] == "amari":
        return f"Amari {_num(r['value'], 3)} (loss gap {_num(r['loss_gap'], 2)})"
    return f"MSE {_num(r['value'])}"


def _ref_cell(r):
    if r["measure"] == "gap":
        v = f"J* = {_num(r['reference_value'], 8)}"
    elif r["measure"] == "amari":
        v = f"Amari {_num(r['reference_value'], 3)}"
    else:
        v = f"MSE {_num(r['reference_value'])}"
    return f"{v} ({r['reference']})"


def markdown(rows, meta):
    commit = (meta.get("commit") or "")[:10]
    modified = " + uncommitted changes" if meta.get("package_modified") else ""
    lines = [f"### Model panel ({meta['date']}, {meta['machine']}"
             + (f", commit {commit}{modified}" if commit else "") + ")", "",
             "The default fit (`NaturalGradientLearner(make_model(name, d)).fit(data)`, "
             "nothing tuned) against an independent reference on the same data; wall times "
             "side by side (ours after a warm-up that compiles the kernels). **gap**: "
             "(J − J*)/|J*| of the returned θ's whole-data loss (poisson: the full negative "
             "log-likelihood). **meets**: gap ≤ 1e-6 (convex and unnormalized objectives), "
             "Amari ≤ FastICA's best (ica), MSE ≤ the reference (mlp). Passes: the summary's "
             "`epochs`. Synthetic rows: `make_dataset(task=model, seed="
             f"{SYNTHETIC_SEED})` fitted from the Zarr path (the true parameters and the loss "
             "at them are in the JSON); real rows: in-memory arrays. ica's reference time is "
             "its best `fun`'s FastICA fit; mlp's is the sum of its 5 (unstandardized data: 10) "
             "MLPRegressor fits, on the data as given and on standardized data (the MSE "
             "mapped back), whichever is lower; the loss gap of ica is against SciPy's "
             "L-BFGS-B optimum of our ICA likelihood. Details in the script's docstring.", "",
             "| model | dataset | n × d | ours | converged | passes | ours s | reference "
             "| ref s | meets |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ep = r["epochs"]
        ep = "–" if ep is None else (str(ep) if isinstance(ep, int) else f"{ep:.3g}")
        lines.append("| " + " | ".join([
            r["model"], r["dataset"], f"{r['n']:,} × {r['d']}", _result_cell(r),
            "–" if r["converged"] is None else ("yes" if r["converged"] else "**no**"), ep,
            f"{r['seconds']:.2f}", _ref_cell(r), f"{r['reference_seconds']:.2f}",
            "yes" if r["meets"] else "**no**"]) + " |")
    met = [r for r in rows if r["meets"]]
    lines += ["", f"**Meets the criterion: {len(met)}/{len(rows)}.**"]
    miss = [r for r in rows if not r["meets"]]
    if miss:
        lines += ["", "Rows that do not:", ""]
        for r in miss:
            lines.append(f"- {r['model']}, {r['dataset']}: {_result_cell(r)} against "
                         f"{_ref_cell(r)}; converged {r['converged']}, passes {r['epochs']}"
                         + (f"; warning: {r['warnings'][0][:160]}" if r["warnings"] else ""))
    notes = [f"- {r['dataset']} ({r['model']}): {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "Datasets:", "", *dict.fromkeys(notes)]
    lines += ["", f"Total {meta['seconds']:.0f} s (`python scripts/model_panel.py"
              f"{' --quick' if meta['quick'] else ''}`).", ""]
    if meta.get("merged"):
        m = meta["merged"]
        lines[-1:] = [f"The {', '.join(m['models'])} rows were re-measured on {m['date']} at "
                      f"commit {(m['commit'] or '')[:10]} in {m['seconds']:.0f} s "
                      f"(`python scripts/model_panel.py --only {','.join(m['models'])} "
                      "--merge`); the others are from the run above.", ""]
    return "\n".join(lines)


def _print_row(r):
    print(f"{r['model']:>13} | {r['dataset']:<32} | {_result_cell(r):<40} | conv "
          f"{r['converged']} | passes {r['epochs']} | {r['seconds']:.2f} s | "
          f"{_ref_cell(r)} {r['reference_seconds']:.2f} s | meets {r['meets']}", flush=True)


def _code_version() -> dict:
    """The commit measured, and whether ``natgrad_stream/`` differed from it."""
    import subprocess

    root = HERE.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "natgrad_stream")
    return {"commit": git("rev-parse", "HEAD"),
            "package_modified": None if dirty is None else bool(dirty)}


def _merged(rows, meta, models, prefix: Path):
    """``rows`` of ``models`` in place of theirs in the report at ``prefix`` (``.json``):
    the other rows as they were, each row tagged with the commit that measured it.
    """
    old = json.loads(prefix.with_suffix(".json").read_text())
    before = old["meta"].get("commit")
    for r in rows:
        r["commit"] = meta.get("commit")
    merged, fresh = [], list(rows)
    for r in old["rows"]:
        if r["model"] in models:
            if fresh and fresh[0]["model"] == r["model"]:
                merged.append(fresh.pop(0))
            continue
        merged.append({**r, "commit": r.get("commit", before)})
    merged += fresh
    meta = {**old["meta"], "merged": {"models": models, "commit": meta.get("commit"),
                                       "date": meta["date"], "seconds": meta["seconds"]},
            "meets": sum(r["meets"] for r in merged), "rows": len(merged)}
    return merged, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller synthetic data")
    p.add_argument("--only", default=None,
                   help=f"comma-separated model families ({', '.join(MODEL_NAMES)})")
    p.add_argument("--out", default=None,
                   help="output prefix (default scripts/results/model-panel-latest; --quick "
                   "and --only write only when given)")
    p.add_argument("--merge", action="store_true",
                   help="with --only: replace those families' rows of the latest report "
                   "(the others kept, with the commit that measured them)")
    args = p.parse_args(argv)
    if args.merge and not args.only:
        p.error("--merge needs --only")
    models = list(MODEL_NAMES)
    if args.only:
        models = [m.strip() for m in args.only.split(",") if m.strip()]
        bad = sorted(set(models) - set(MODEL_NAMES))
        if bad:
            p.error(f"unknown model(s) {bad}; choose from {', '.join(MODEL_NAMES)}")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="model-panel-") as workdir:
        for m in models:
            for case in all_cases([m], workdir, args.quick):
                rows.append(run_case(case))
                _print_row(rows[-1])
    meta = {"date": date.today().isoformat(), **_code_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": sys.version.split()[0], "quick": args.quick, "target": TARGET,
            "seconds": time.perf_counter() - t0,
            "meets": sum(r["meets"] for r in rows), "rows": len(rows)}
    out = args.out
    if args.merge:
        rows, meta = _merged(rows, meta, models, Path(out or HERE / "results" /
                                                      "model-panel-latest"))
        out = out or str(HERE / "results" / "model-panel-latest")
    md = markdown(rows, meta)
    print()
    print(md)
    if out is None and not (args.quick or args.only):
        out = str(HERE / "results" / "model-panel-latest")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".md").write_text(md)
        Path(out + ".json").write_text(json.dumps(cp._finite({"meta": meta, "rows": rows}),
                                                  indent=1, default=cp._json_default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
