"""The L2 penalty (issue 18): ``l2=λ`` minimizes the mean loss + λ/2·‖coef‖², intercepts not
penalized, in the loss, the gradient and the metric, for every structure and optimizer; the
scikit-learn estimators' ``C`` and ``alpha``; the summary, ``evaluate`` and resume.

References are independent of the package: scikit-learn's penalized optima
(``LogisticRegression(C)``, ``Ridge``, ``PoissonRegressor``), whose objectives are mapped to
ours (λ = 1/(C·S), α/S and α, S the summed sample weights), and SciPy's L-BFGS-B on the
penalized objective written here in NumPy (softmax: on our reference-class parameterization,
since scikit-learn's multinomial one penalizes all K class vectors, a different objective).
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_expit, logsumexp
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

from natgrad_stream.errors import OptionError
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.models.penalty import L2Penalty
from natgrad_stream.sklearn import (
    NaturalGradientClassifier,
    NaturalGradientPoissonRegressor,
    NaturalGradientRegressor,
)
from natgrad_stream.training import options as opts

from .conftest import write_group
from .test_cli import run_cli

REL = 1e-6  # the criterion: the penalized optimum's objective to 1e-6 relative


# -- objectives written here, independent of the package -----------------------------------
def logistic_objective(coef, b, X, y, lam, w=None):
    """Weighted mean log-loss + λ/2‖coef‖²."""
    w = np.ones(len(y)) if w is None else w
    z = X @ coef + b
    nll = -(y * log_expit(z) + (1 - y) * log_expit(-z))
    return float(w @ nll / w.sum() + 0.5 * lam * coef @ coef)


def softmax_objective(theta, X, y, K, lam):
    """Mean multinomial log-loss with class 0 as the reference + λ/2‖coef‖², θ laid out as
    the model's: (K−1) rows of [coef, intercept].
    """
    d = X.shape[1]
    B = theta.reshape(K - 1, d + 1)
    Z = np.column_stack([np.zeros(len(y)), X @ B[:, :-1].T + B[:, -1]])
    nll = logsumexp(Z, axis=1) - Z[np.arange(len(y)), y.astype(int)]
    return float(nll.mean() + 0.5 * lam * np.sum(B[:, :-1] ** 2))


def _rel(a, b):
    return abs(a - b) / abs(b)


def _dense(n=600, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.linspace(1.0, 20.0, d) + 3.0
    beta = rng.standard_normal(d) / np.linspace(1.0, 20.0, d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X - 3.0) @ beta))).astype(float)
    return X, y


def _separable(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, (X @ [1.0, -2.0, 0.5] > 0).astype(float)


def _one_hot(levels=200, n=3000, seed=0):
    """A full one-hot encoding (no column dropped): its columns sum to the intercept's."""
    rng = np.random.default_rng(seed)
    code = rng.integers(0, levels, n)
    X = np.zeros((n, levels))
    X[np.arange(n), code] = 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-0.5 * rng.standard_normal(levels)[code]))).astype(
        float)
    return X, y


def _sklearn_logistic(X, y, C, w=None):
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000, solver="newton-cholesky")
    return ref.fit(X, y, sample_weight=w)


# -- the option ------------------------------------------------------------------------------
def test_l2_is_one_option_everywhere_and_not_resumable():
    opt = opts.BY_NAME["l2"]
    assert opt.cli_flag == "--l2" and opt.default == 0.0 and not opt.resumable
    assert "l2" in opts.LEARNER_OPTIONS
    lr = NaturalGradientLearner(make_model("logistic", 3), l2=0.25)
    assert lr.effective_options["l2"] == 0.25 and lr.options()["l2"] == 0.25
    with pytest.raises(OptionError, match="l2"):
        NaturalGradientLearner(make_model("logistic", 3), l2=-1.0)
    with pytest.raises(OptionError, match="no coefficients to penalize"):
        NaturalGradientLearner(make_model("gaussian", 3), l2=0.1)


@pytest.mark.parametrize(("name", "kw", "unpenalized"), [
    ("logistic", {}, [3]),
    ("softmax", {"n_classes": 3}, [3, 7]),
    ("mlp", {"hidden": 2}, [6, 7, 10]),  # b1 (2) and b2
    ("ising", {}, [3, 4, 5]),  # the fields h
])
def test_penalized_coordinates_leave_out_the_intercepts(name, kw, unpenalized):
    model = make_model(name, 3, **kw)
    left = sorted(set(range(model.n_params)) - set(model.penalized_indices))
    assert left == unpenalized


@pytest.mark.parametrize("structure", ["full", "diagonal"])
def test_penalty_value_gradient_and_metric(structure):
    model = make_model("logistic", 4)
    pen = L2Penalty.for_model(model, 0.3)
    theta = np.array([1.0, -2.0, 0.5, 3.0, 7.0])
    assert pen.value(theta) == pytest.approx(0.15 * (1 + 4 + 0.25 + 9))
    eps = 1e-6
    fd = [(pen.value(theta + eps * e) - pen.value(theta - eps * e)) / (2 * eps)
          for e in np.eye(5)]
    np.testing.assert_allclose(pen.gradient(theta), fd, atol=1e-8)
    G = np.zeros(5) if structure == "diagonal" else np.zeros((5, 5))
    out = pen.add_metric(G, weight=2.0)
    diag = out if structure == "diagonal" else np.diag(out)
    np.testing.assert_array_equal(diag, [0.6, 0.6, 0.6, 0.6, 0.0])
    assert not G.any()  # a new array


# -- penalized optima against scikit-learn -------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_logistic_default_fit_reaches_sklearn_penalized_optimum(weighted):
    X, y = _dense()
    w = np.random.default_rng(5).uniform(0.2, 3.0, len(y)) if weighted else None
    C = 0.01
    lam = 1.0 / (C * (len(y) if w is None else w.sum()))
    ref = _sklearn_logistic(X, y, C, w)
    J_ref = logistic_objective(ref.coef_[0], ref.intercept_[0], X, y, lam, w)
    data = (X, y) if w is None else (X, y, w)
    lr = NaturalGradientLearner(make_model("logistic", 5), l2=lam).fit(data)
    res = lr.result
    assert res.converged
    J = logistic_objective(lr.theta[:-1], lr.theta[-1], X, y, lam, w)
    assert J <= J_ref * (1 + REL) and J_ref <= J * (1 + REL)
    # the summary: train_loss is the data loss, objective what was minimized
    assert res.objective == pytest.approx(J, rel=1e-12)
    assert res.train_loss == pytest.approx(
        make_model("logistic", 5).loss(X, y, lr.theta, w), rel=1e-12)
    assert res.objective - res.train_loss == pytest.approx(
        0.5 * lam * lr.theta[:-1] @ lr.theta[:-1], rel=1e-9)


@pytest.mark.parametrize(("structure", "optimizer", "refine", "epochs"), [
    ("full", "sgd", "scoring", None), ("full", "sgd", "lbfgs", None), ("full", "lbfgs", None, None),
    ("diagonal", "sgd", "lbfgs", None), ("diagonal", "adam", "lbfgs", None),
    ("diagonal", "lbfgs", None, None), ("block", "sgd", "lbfgs", None),
    ("block", "lbfgs", None, None),
    # scoring with a metric that is not the Hessian converges only linearly (issue 18's
    # later-pass item): 200 passes on these offset, scaled features
    ("diagonal", "sgd", "scoring", 200), ("block", "sgd", "scoring", 200),
])
def test_every_structure_and_later_pass_method_reaches_the_penalized_optimum(
        structure, optimizer, refine, epochs):
    X, y = _dense(n=800, d=4, seed=2)
    lam = 0.02
    ref = minimize(lambda t: logistic_objective(t[:-1], t[-1], X, y, lam), np.zeros(5),
                   method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-11,
                                               "maxiter": 10_000})
    kw = {"structure": structure, "optimizer": optimizer, "l2": lam}
    if refine is not None:
        kw["refine"] = refine
    lr = NaturalGradientLearner(make_model("logistic", 4), **kw).fit((X, y), epochs=epochs)
    J = logistic_objective(lr.theta[:-1], lr.theta[-1], X, y, lam)
    assert _rel(J, ref.fun) < REL
    assert lr.result.objective == pytest.approx(J, rel=1e-12)


def test_ridge_and_poisson_objectives_map_to_l2():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 4)) * [1, 5, 10, 0.5] + 2.0
    w = rng.uniform(0.5, 2.0, 500)
    y = X @ [0.5, -0.1, 0.05, 1.0] + rng.standard_normal(500)
    alpha = 50.0
    ref = Ridge(alpha=alpha, tol=1e-12, solver="cholesky").fit(X, y, sample_weight=w)
    lr = NaturalGradientLearner(make_model("linear", 4), l2=alpha / w.sum()).fit((X, y, w))
    np.testing.assert_allclose(lr.theta[:-1], ref.coef_, rtol=1e-7, atol=1e-9)
    assert lr.theta[-1] == pytest.approx(ref.intercept_, rel=1e-7)
    rate = rng.poisson(np.exp(X[:, :2] @ [0.1, -0.05] + 0.3)) / w
    pref = PoissonRegressor(alpha=0.3, tol=1e-12, max_iter=10_000,
                            solver="newton-cholesky").fit(X, rate, sample_weight=w)
    lp = NaturalGradientLearner(make_model("poisson", 4), l2=0.3).fit((X, rate, w))
    # converged to round-off in the objective (decrement <= 1e-14·|J|): the parameters
    # to about its square root
    np.testing.assert_allclose(lp.theta[:-1], pref.coef_, rtol=1e-6, atol=1e-7)
    assert lp.theta[-1] == pytest.approx(pref.intercept_, abs=1e-6)


def test_softmax_penalized_optimum_matches_scipy_on_our_parameterization():
    rng = np.random.default_rng(4)
    n, d, K = 900, 3, 4
    X = rng.standard_normal((n, d)) * [1.0, 4.0, 0.3] + 1.0
    Z = np.column_stack([np.zeros(n), X @ rng.standard_normal((d, K - 1))])
    y = np.array([rng.choice(K, p=np.exp(z - logsumexp(z))) for z in Z], dtype=float)
    lam = 0.05
    ref = minimize(softmax_objective, np.zeros((K - 1) * (d + 1)), args=(X, y, K, lam),
                   method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-11,
                                               "maxiter": 10_000})
    lr = NaturalGradientLearner(make_model("softmax", d, n_classes=K), l2=lam).fit((X, y))
    J = softmax_objective(lr.theta, X, y, K, lam)
    assert lr.result.converged and _rel(J, ref.fun) < REL and J <= ref.fun * (1 + 1e-12)


# -- degenerate data: separable, unidentified ----------------------------------------------
class _Lines(logging.Handler):
    """The package logger's records, read through a handler of its own (other tests
    change the logger's propagation, which caplog relies on).
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("structure", ["auto", "diagonal"])  # diagonal: Newton-CG passes
def test_separable_data_stop_with_a_message_and_converge_with_l2(structure):
    X, y = _separable()
    model = make_model("logistic", 3)
    logger, seen = logging.getLogger("natgrad_stream"), _Lines()
    logger.addHandler(seen)
    try:
        lr = NaturalGradientLearner(model, structure=structure).fit((X, y))
    finally:
        logger.removeHandler(seen)
    assert not lr.result.converged and lr.result.epochs < 20
    assert lr.state.unbounded is not None and set(lr.state.unbounded) <= {0, 1, 2}
    text = "\n".join(seen.lines)
    assert "grow without bound" in text and "separable" in text and "--l2" in text
    C = 1.0
    ref = _sklearn_logistic(X, y, C)
    lam = 1.0 / (C * len(y))
    J_ref = logistic_objective(ref.coef_[0], ref.intercept_[0], X, y, lam)
    pen = NaturalGradientLearner(model, l2=lam, structure=structure).fit((X, y))
    J = logistic_objective(pen.theta[:-1], pen.theta[-1], X, y, lam)
    assert pen.result.converged and _rel(J, J_ref) < REL
    assert structure == "auto" or pen.refine == "newton-cg"


@pytest.mark.filterwarnings("ignore:The inner solver of NewtonCholeskySolver")
def test_full_one_hot_without_drop_converges_and_names_the_unidentified_direction():
    X, y = _one_hot()
    model = make_model("logistic", X.shape[1])
    logger, seen = logging.getLogger("natgrad_stream"), _Lines()
    logger.addHandler(seen)
    try:  # (it once ran away: the metric's null direction took the floor's step)
        lr = NaturalGradientLearner(model).fit((X, y))
    finally:
        logger.removeHandler(seen)
    ref = _sklearn_logistic(X, y, np.inf)
    J = logistic_objective(lr.theta[:-1], lr.theta[-1], X, y, 0.0)
    J_ref = logistic_objective(ref.coef_[0], ref.intercept_[0], X, y, 0.0)
    assert lr.result.converged and _rel(J, J_ref) < REL
    # one line names the levels' sum (against the intercept) as not identified
    text = "\n".join(seen.lines)
    assert "1 direction(s) of the parameters are not identified" in text and "--l2" in text
    moving = re.search(r"moving θ indices \[([\d, ]+)\]", text)
    assert moving and all(int(j) < X.shape[1] for j in moving.group(1).split(","))
    C = 1.0
    lam = 1.0 / (C * len(y))
    ref = _sklearn_logistic(X, y, C)
    J_ref = logistic_objective(ref.coef_[0], ref.intercept_[0], X, y, lam)
    lr = NaturalGradientLearner(model, l2=lam).fit((X, y))
    J = logistic_objective(lr.theta[:-1], lr.theta[-1], X, y, lam)
    assert lr.result.converged and _rel(J, J_ref) < REL


# -- the estimators ----------------------------------------------------------------------------
def test_classifier_C_is_logistic_regressions_with_sample_weight():
    X, y = _dense(seed=7)
    w = np.random.default_rng(8).uniform(0.1, 4.0, len(y))
    for C in (1.0, 0.003):
        est = NaturalGradientClassifier(C=C).fit(X, y, sample_weight=w)
        ref = _sklearn_logistic(X, y, C, w)
        lam = 1.0 / (C * w.sum())
        J = logistic_objective(est.coef_[0], est.intercept_[0], X, y, lam, w)
        J_ref = logistic_objective(ref.coef_[0], ref.intercept_[0], X, y, lam, w)
        assert est.converged_ and _rel(J, J_ref) < REL
        assert est.learner_.l2 == lam
        # tol=1e-10 bounds the objective's gap, so the parameters agree to about 1e-5
        np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_regressor_alphas_are_ridges_and_poisson_regressors():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 3)) * [1.0, 3.0, 0.2]
    w = rng.uniform(0.5, 2.0, 300)
    y = X @ [1.0, -0.3, 2.0] + rng.standard_normal(300)
    for alpha in (1.0, 100.0):
        est = NaturalGradientRegressor(alpha=alpha).fit(X, y, sample_weight=w)
        ref = Ridge(alpha=alpha, solver="cholesky").fit(X, y, sample_weight=w)
        assert est.learner_.l2 == alpha / w.sum()
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
    rate = rng.poisson(np.exp(X @ [0.2, -0.1, 0.5])) / w
    est = NaturalGradientPoissonRegressor().fit(X, rate, sample_weight=w)  # alpha=1.0
    ref = PoissonRegressor(tol=1e-12, max_iter=10_000, solver="newton-cholesky").fit(
        X, rate, sample_weight=w)

    def objective(coef, b):  # PoissonRegressor's, less a constant
        mu = np.exp(X @ coef + b)
        return w @ (mu - rate * np.log(mu)) / w.sum() + 0.5 * coef @ coef

    assert est.learner_.l2 == 1.0
    J, J_ref = objective(est.coef_, est.intercept_), objective(ref.coef_, ref.intercept_)
    assert _rel(J, J_ref) < REL
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="C must be > 0"):
        NaturalGradientClassifier(C=0).fit(X, (y > 0).astype(int))
    with pytest.raises(ValueError, match="alpha"):
        NaturalGradientRegressor(alpha=-1).fit(X, y)


def test_estimator_on_a_zarr_path_uses_the_summed_weights(tmp_path):
    X, y = _dense(n=700, seed=11)
    w = np.random.default_rng(12).uniform(0.5, 2.0, len(y))
    path = write_group(tmp_path / "d.zarr", X=X, y=y, w=w)
    est = NaturalGradientClassifier(C=0.01).fit(str(path), "y", "w")
    mem = NaturalGradientClassifier(C=0.01).fit(X, y, sample_weight=w)
    assert est.learner_.l2 == pytest.approx(mem.learner_.l2, rel=1e-14)
    assert mem.learner_.l2 == 1.0 / (0.01 * w.sum())
    np.testing.assert_allclose(est.coef_, mem.coef_, rtol=1e-4, atol=1e-6)


# -- the command line: summary, evaluate, resume ----------------------------------------------
@pytest.fixture
def dense_zarr(tmp_path):
    X, y = _dense(n=3000, d=5, seed=13)
    return write_group(tmp_path / "dense.zarr", X=X, y=y)


def test_cli_round_trip_and_resume(dense_zarr, tmp_path, capsys):
    lam = 0.01
    run = tmp_path / "r"
    code, summary, err = run_cli(capsys, "fit", dense_zarr, "--model", "logistic", "--l2",
                                 lam, "--out", run, "--progress", "never")
    assert code == 0, err
    assert summary["converged"] and summary["objective"] > summary["train_loss"]
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["options"]["l2"] == lam and recorded["fit_options"]["l2"] == lam
    code, scores, err = run_cli(capsys, "evaluate", run, dense_zarr)
    assert code == 0, err
    assert abs(scores["log_loss"] - summary["train_loss"]) <= 1e-12 * summary["train_loss"]
    assert abs(scores["objective"] - summary["objective"]) <= 1e-12 * summary["objective"]
    # a resumed run keeps its λ and equals an uninterrupted one exactly
    part = tmp_path / "p"
    code, _, err = run_cli(capsys, "fit", dense_zarr, "--model", "logistic", "--l2", lam,
                           "--out", part, "--epochs", 2, "--progress", "never")
    assert code == 0, err
    code, resumed, err = run_cli(capsys, "fit", dense_zarr, "--out", part, "--resume",
                                 "--epochs", 50, "--progress", "never")
    assert code == 0, err
    assert resumed["objective"] == summary["objective"]
    assert resumed["train_loss"] == summary["train_loss"]
    code, _, err = run_cli(capsys, "fit", dense_zarr, "--out", part, "--resume", "--l2",
                           0.5, "--progress", "never")
    assert code == 2
    assert "--l2 cannot be changed on --resume" in err and "0.01" in err and "0.5" in err


def test_dask_curvature_probe_includes_the_penalty():
    """The diagonal structure's curvature probe on a Dask worker equals the learner's."""
    from natgrad_stream.distributed.worker import _on_batch

    X, y = _dense(n=400, d=4, seed=14)
    lr = NaturalGradientLearner(make_model("logistic", 4), structure="diagonal", l2=5.0)
    lr.fit((X, y), epochs=1)
    v = np.random.default_rng(0).standard_normal((5, 1))
    s = lr.state
    here = lr._power_iteration(X, y, None, v.copy())
    there = _on_batch(lr.model, X, y, None, "curvature",
                      (s.theta, s.whitener, v.copy(), lr.metric, 12, lr.penalty))
    without = _on_batch(lr.model, X, y, None, "curvature",
                        (s.theta, s.whitener, v.copy(), lr.metric, 12))
    assert there == pytest.approx(here, rel=1e-12) and abs(without - here) > 1e-3 * here
