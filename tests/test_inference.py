"""Statistical inference (``summary``) against statsmodels and a NumPy reference.

Our θ comes from our own default fit (converged); statsmodels' from its Newton fits. The
standard errors, robust (HC0) standard errors, log-likelihood, deviance, AIC and BIC agree
to 1e-6 relative; interval endpoints to 1e-6 of their standard error (an endpoint near 0
has no relative precision: the two fits' θ differ by their tolerances, ~1e-7 relative).
"""

import json
import shutil

import numpy as np
import pytest

from natgrad_stream.cli import main
from natgrad_stream.errors import DataError
from natgrad_stream.inference import InferenceSums, coefficient_names, summarize, summary
from natgrad_stream.inference.sums import PassWorkspace
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from tests.conftest import write_group

sm = pytest.importorskip("statsmodels.api")
RTOL = 1e-6


def _load(name):
    d = getattr(sm.datasets, name).load_pandas()
    return np.asarray(d.exog, dtype=np.float64), np.asarray(d.endog, dtype=np.float64)


def _diabetes():
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    return d.data.astype(np.float64), d.target.astype(np.float64)


def _to_sm(v, d, blocks=1):
    """Our θ-ordered vector ([coef, intercept] per block) in statsmodels' layout
    (constant first; MNLogit: a (d + 1, K − 1) array).
    """
    B = np.asarray(v).reshape(blocks, d + 1)
    out = np.c_[B[:, d], B[:, :d]].T
    return out[:, 0] if blocks == 1 else out


def _statsmodels(kind, X, y, cov_type="nonrobust"):
    Xc = sm.add_constant(X, has_constant="add")
    kw = {} if cov_type == "nonrobust" else {"cov_type": cov_type}
    if kind == "logistic":
        return sm.Logit(y, Xc).fit(disp=0, method="newton", tol=1e-12, **kw)
    if kind == "linear":
        return sm.OLS(y, Xc).fit(**kw)
    if kind == "poisson":
        return sm.GLM(y, Xc, family=sm.families.Poisson()).fit(tol=1e-13, **kw)
    return sm.MNLogit(y, Xc).fit(disp=0, method="newton", tol=1e-12, **kw)


CASES = {"spector": ("logistic", lambda: _load("spector")),
         "cpunish": ("poisson", lambda: _load("cpunish")),
         "randhie": ("poisson", lambda: _load("randhie")),
         "longley": ("linear", lambda: _load("longley")),
         "diabetes": ("linear", _diabetes),
         "anes96": ("softmax", lambda: _load("anes96"))}


@pytest.mark.parametrize("case", list(CASES))
def test_summary_equals_statsmodels(case):
    kind, load = CASES[case]
    X, y = load()
    d = X.shape[1]
    options = {"n_classes": int(y.max()) + 1} if kind == "softmax" else {}
    model = make_model(kind, d, **options)
    learner = NaturalGradientLearner(model).fit((X, y))
    assert learner.result.converged
    s = learner.summary((X, y))
    ref = _statsmodels(kind, X, y)
    hc0 = _statsmodels(kind, X, y, "HC0")
    blocks = model.n_classes - 1 if kind == "softmax" else 1
    bse = np.asarray(ref.bse)
    np.testing.assert_allclose(_to_sm(s.bse, d, blocks), bse, rtol=RTOL)
    np.testing.assert_allclose(_to_sm(s.bse_robust, d, blocks), np.asarray(hc0.bse),
                               rtol=RTOL)
    ci = np.asarray(ref.conf_int())
    ours = s.conf_int()
    if kind == "softmax":  # statsmodels stacks the classes' (d + 1, 2) blocks
        lo, hi = (_to_sm(ours[:, k], d, blocks).T.reshape(-1) for k in (0, 1))
        ci = ci.reshape(-1, 2)
        scale = bse.T.reshape(-1)
    else:
        lo, hi = (_to_sm(ours[:, k], d) for k in (0, 1))
        scale = bse
    np.testing.assert_allclose((np.c_[lo, hi] - ci) / scale[:, None], 0.0, atol=RTOL)
    np.testing.assert_allclose(s.log_likelihood, ref.llf, rtol=RTOL)
    np.testing.assert_allclose(s.aic, ref.aic, rtol=RTOL)
    bic = ref.bic_llf if kind == "poisson" else ref.bic
    np.testing.assert_allclose(s.bic, bic, rtol=RTOL)
    deviance = {"logistic": -2 * ref.llf, "softmax": -2 * ref.llf,
                "linear": getattr(ref, "ssr", None),
                "poisson": getattr(ref, "deviance", None)}[kind]
    np.testing.assert_allclose(s.deviance, deviance, rtol=RTOL)
    assert (s.n_obs, s.df_model, s.df_resid) == (ref.nobs, ref.df_model, ref.df_resid)
    p = np.asarray(ref.pvalues)
    ours_p = _to_sm(s.columns(False)["p"], d, blocks)
    np.testing.assert_allclose(ours_p, p, rtol=1e-4, atol=1e-12)


def _score_reference(model, X, y, w, theta):
    """Fisher and meat sums by NumPy: the model's closed-form Fisher and its per-row scores."""
    wt = np.ones(X.shape[0]) if w is None else w
    S = model.scores(X, y, theta)
    return model.model_fisher(X, theta, wt) * wt.sum(), (S * wt[:, None]).T @ S


@pytest.mark.parametrize("kind", ["logistic", "linear", "poisson", "softmax"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_sums_equal_a_numpy_reference_and_merge_by_batches(kind, sparse, parallel):
    """Dense GLM batches take the fused kernel (serial or parallel), others the model's."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, d = 900, 4
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.6)
    z = X @ rng.standard_normal(d) * 0.5
    y = {"logistic": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float),
         "linear": z + rng.standard_normal(n),
         "poisson": rng.poisson(np.exp(z)).astype(float),
         "softmax": rng.integers(0, 3, n).astype(float)}[kind]
    w = rng.random(n) + 0.5
    model = make_model(kind, d, **({"n_classes": 3} if kind == "softmax" else {}))
    theta = rng.standard_normal(model.n_params) * 0.1
    F, M = _score_reference(model, X, y, w, theta)
    whole = InferenceSums.zeros(model.n_params)
    parts = [InferenceSums.zeros(model.n_params) for _ in range(3)]
    ws = PassWorkspace(model, parallel=parallel, n_threads=2)
    data = sp.csr_matrix(X) if sparse else X
    whole.add_batch(ws, data, y, w, theta)
    for part, rows in zip(parts, np.array_split(np.arange(n), 3), strict=True):
        part.add_batch(ws, data[rows], y[rows], w[rows], theta)
    merged = parts[0] + parts[1] + parts[2]
    for s in (whole, merged):
        np.testing.assert_allclose(s.fisher, F, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(s.meat, M, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(s.weight, w.sum(), rtol=1e-12)
        assert s.rows == n


@pytest.mark.parametrize("kind", ["logistic", "linear", "poisson"])
@pytest.mark.parametrize("parallel", [False, True])
def test_blas_grams_of_wide_glms_equal_the_reference_and_the_fused_kernel(kind, parallel,
                                                                        monkeypatch):
    """From INFERENCE_BLAS_MIN_PARAMS parameters the Grams are BLAS's, by blocks of rows
    (here 256 a block: three full blocks and a partial one), the second in a thread when
    parallel: the same sums as the NumPy reference and as the fused kernel to 1e-12.
    """
    from natgrad_stream.inference import sums as S

    rng = np.random.default_rng(1)
    n, d = 1000, S.INFERENCE_BLAS_MIN_PARAMS + 3
    X = rng.standard_normal((n, d))
    z = X @ rng.standard_normal(d) * 0.2
    y = {"logistic": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float),
         "linear": z + rng.standard_normal(n),
         "poisson": rng.poisson(np.exp(z)).astype(float)}[kind]
    w = rng.random(n) + 0.5
    model = make_model(kind, d)
    theta = rng.standard_normal(model.n_params) * 0.05
    monkeypatch.setattr(S, "INFERENCE_BLAS_BLOCK_BYTES", 16 * model.n_params * 256)
    monkeypatch.setattr(S, "INFERENCE_BLAS_MIN_BLOCK_ROWS", 1)
    ws = PassWorkspace(model, parallel=parallel, n_threads=2)
    blas = InferenceSums.zeros(model.n_params)
    blas.add_batch(ws, X, y, w, theta)
    ws.close()
    assert ws._blas["rows"] == 256
    monkeypatch.setattr(S, "INFERENCE_BLAS_MIN_PARAMS", 10**9)
    fused = InferenceSums.zeros(model.n_params)
    fused.add_batch(PassWorkspace(model, parallel=parallel, n_threads=2), X, y, w, theta)
    F, M = _score_reference(model, X, y, w, theta)
    np.testing.assert_allclose(blas.fisher, F, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(blas.meat, M, rtol=1e-10, atol=1e-9)
    for name in ("fisher", "meat", "grad"):
        a, b = getattr(blas, name), getattr(fused, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())
        if a.ndim == 2:
            np.testing.assert_array_equal(a, a.T)
    np.testing.assert_allclose([blas.loss, blas.weight], [fused.loss, fused.weight],
                               rtol=1e-12)


def test_penalized_covariance_is_the_sandwich_of_the_penalized_hessian():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-X @ [1.0, -1.0, 0.5]))).astype(float)
    model = make_model("logistic", 3)
    lam = 0.05
    learner = NaturalGradientLearner(model, l2=lam).fit((X, y))
    s = learner.summary((X, y))
    F, M = _score_reference(model, X, y, None, learner.theta)
    A = F + 400 * lam * np.diag([1.0, 1.0, 1.0, 0.0])
    Ai = np.linalg.inv(A)
    np.testing.assert_allclose(s.cov, Ai @ F @ Ai, rtol=1e-8)
    np.testing.assert_allclose(s.cov_robust, Ai @ M @ Ai, rtol=1e-8)
    assert s.cov_type == "nonrobust-penalized" and s.l2 == lam and s.notes
    # the penalized standard errors are smaller than the unpenalized ones at the same θ
    plain = summarize(model, learner.theta, _sums(model, X, y, learner.theta))
    assert np.all(s.bse[:3] < plain.bse[:3])


def _sums(model, X, y, theta):
    out = InferenceSums.zeros(model.n_params)
    out.add_batch(PassWorkspace(model), X, y, None, theta)
    return out


def test_a_collinear_column_is_one_error_naming_a_coefficient():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300)
    X = np.c_[x, 2 * x]
    y = x + rng.standard_normal(300)
    model = make_model("linear", 2)
    with pytest.raises(DataError, match=r"singular .* coefficients 'x0', 'x1' are not "
                       "identified"):
        summary(model, np.zeros(3), (X, y))


def test_a_full_one_hot_beside_the_intercept_names_every_coefficient_involved():
    """The null direction of a full one-hot encoding beside the intercept spans the levels
    and the intercept: the error names them all (it named the intercept alone).
    """
    rng = np.random.default_rng(3)
    level = rng.integers(0, 3, 600)
    X = np.c_[rng.standard_normal(600), np.eye(3)[level]]
    y = (rng.random(600) < 1 / (1 + np.exp(-X[:, 0]))) * 1.0
    model = make_model("logistic", 4)
    names = ["a", "c=x", "c=y", "c=z"]
    with pytest.raises(DataError, match=r"coefficients 'c=x', 'c=y', 'c=z', 'intercept' "
                       r"are not identified .*one-hot"):
        summary(model, np.zeros(5), (X, y), feature_names=names)


def test_ols_with_zero_residuals_is_one_error_not_a_math_domain_error():
    X = np.arange(40.0).reshape(20, 2) % 7
    y = X @ [1.0, 2.0] + 3.0  # exact in float64: every residual is 0
    with pytest.raises(DataError, match="residuals are all zero"):
        summary(make_model("linear", 2), np.array([1.0, 2.0, 3.0]), (X, y))


def test_models_without_a_likelihood_are_refused():
    with pytest.raises(ValueError, match="model 'ica' has no likelihood"):
        summary(make_model("ica", 3), np.zeros(9), (np.zeros((5, 3)), None))


def test_names_and_options():
    assert coefficient_names(make_model("logistic", 2)) == ["x0", "x1", "intercept"]
    soft = make_model("softmax", 1, n_classes=3)
    assert coefficient_names(soft, feature_names=["age"], class_names=["a", "b", "c"]) == \
        ["age[class b]", "intercept[class b]", "age[class c]", "intercept[class c]"]
    X, y = _load("spector")
    model = make_model("logistic", 3)
    s = NaturalGradientLearner(model).fit((X, y)).summary((X, y))
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        s.with_options(alpha=1.5)
    wide = s.with_options(alpha=0.01, cov="robust")
    assert wide.cov_type == "HC0"
    ref = _statsmodels("logistic", X, y, "HC0")
    np.testing.assert_allclose(_to_sm(wide.conf_int()[:, 1], 3),
                               np.asarray(ref.conf_int(alpha=0.01))[:, 1], rtol=1e-5)
    text = str(s)
    assert "Log-Likelihood:" in text and "P>|z|" in text and "intercept" in text


def test_a_dataframe_names_the_coefficients_by_its_columns():
    pd = pytest.importorskip("pandas")
    X, y = _load("spector")
    df = pd.DataFrame(X, columns=["gpa", "tuce", "psi"])
    learner = NaturalGradientLearner(make_model("logistic", 3)).fit((df, pd.Series(y)))
    assert learner.summary((df, pd.Series(y))).names == ["gpa", "tuce", "psi", "intercept"]
    assert learner.summary((X, y)).names == ["x0", "x1", "x2", "intercept"]
    unnamed = pd.DataFrame(X)  # integer column labels 0, 1, 2: named as arrays' are
    assert learner.summary((unnamed, y)).names == ["x0", "x1", "x2", "intercept"]


# -- the command ------------------------------------------------------------------------------
@pytest.fixture
def spector_run(tmp_path, capsys):
    X, y = _load("spector")
    store = write_group(tmp_path / "spector.zarr", X=X, y=y)
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "logistic", "--out", str(run)]) == 0
    capsys.readouterr()
    return store, run, X, y


def test_cli_json_from_a_zarr_store_equals_statsmodels(spector_run, capsys):
    store, run, X, y = spector_run
    assert main(["summary", str(run), "--format", "json"]) == 0  # DATA: the run's own
    out = capsys.readouterr()
    assert out.err == ""
    got = json.loads(out.out.strip().splitlines()[-1])
    ref, hc0 = _statsmodels("logistic", X, y), _statsmodels("logistic", X, y, "HC0")
    rows = got["coefficients"]
    assert [r["name"] for r in rows] == ["x0", "x1", "x2", "intercept"]
    assert set(rows[0]) >= {"name", "coef", "se", "z", "p", "ci_low", "ci_high", "se_robust",
                            "z_robust", "p_robust", "ci_low_robust", "ci_high_robust"}
    np.testing.assert_allclose(_to_sm([r["se"] for r in rows], 3), ref.bse, rtol=RTOL)
    np.testing.assert_allclose(_to_sm([r["se_robust"] for r in rows], 3), hc0.bse, rtol=RTOL)
    np.testing.assert_allclose(got["log_likelihood"], ref.llf, rtol=RTOL)
    for key, want in (("aic", ref.aic), ("bic", ref.bic), ("deviance", -2 * ref.llf)):
        np.testing.assert_allclose(got[key], want, rtol=RTOL)
    assert (got["n_obs"], got["df_model"], got["df_resid"]) == (32, 3, 28)
    assert got["converged"] is True and got["cov_type"] == "nonrobust"
    assert main(["summary", str(run), str(store), "--cov", "robust", "--alpha", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "HC0" in text and "[0.05" in text and "0.95]" in text


def test_cli_missing_chunk_is_one_line_exit_2(spector_run, capsys, tmp_path):
    store, run, _, _ = spector_run
    (store / "X" / "c" / "0" / "0").unlink()
    assert main(["summary", str(run)]) == 2
    err = capsys.readouterr().err
    assert "array 'X', chunk 0" in err and "missing from the store" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_changed_training_data_is_refused_by_its_digests(spector_run, capsys):
    import zarr

    store, run, X, _ = spector_run
    zarr.open_group(str(store), mode="r+")["X"][5, 0] = X[5, 0] + 1.0
    assert main(["summary", str(run)]) == 2
    err = capsys.readouterr().err
    assert "array 'X', chunk 0" in err and len(err.strip().splitlines()) == 1, err


def test_cli_unconverged_run_warns_in_one_line(tmp_path, capsys):
    X, y = _load("spector")
    store = write_group(tmp_path / "s.zarr", X=X, y=y)
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "logistic", "--out", str(run), "--epochs",
                 "1"]) == 0
    capsys.readouterr()
    assert main(["summary", str(run), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("natgrad-stream summary: warning: the run in") and \
        "did not converge" in out.err and len(out.err.strip().splitlines()) == 1
    assert json.loads(out.out)["converged"] is False


def test_cli_model_without_likelihood_exit_2(tmp_path, capsys):
    store = tmp_path / "ica.zarr"
    assert main(["make-data", str(store), "--task", "ica", "--rows", "2000", "--features",
                 "3"]) == 0
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "ica", "--out", str(run), "--epochs",
                 "1"]) == 0
    capsys.readouterr()
    assert main(["summary", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("natgrad-stream summary: error: model 'ica' has no likelihood "
                           "for standard errors and tests; summary supports logistic, "
                           "linear, poisson, softmax")


def test_cli_copied_store_is_read_without_digests(spector_run, capsys, tmp_path):
    store, run, X, y = spector_run
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    assert main(["summary", str(run), str(copy), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(got["log_likelihood"], _statsmodels("logistic", X, y).llf,
                               rtol=RTOL)


# -- scikit-learn ---------------------------------------------------------------------------
def test_estimators_expose_the_summary_after_fit():
    from natgrad_stream.sklearn import NaturalGradientClassifier, NaturalGradientRegressor

    X, y = _load("spector")
    est = NaturalGradientClassifier(C=np.inf).fit(X, y)
    ref = _statsmodels("logistic", X, y)
    np.testing.assert_allclose(_to_sm(est.bse_, 3), ref.bse, rtol=RTOL)
    np.testing.assert_allclose(_to_sm(est.pvalues_, 3), ref.pvalues, rtol=1e-4)
    assert list(est.param_names_) == ["x0", "x1", "x2", "intercept"]
    assert est.summary(cov="robust").cov_type == "HC0"
    est.partial_fit(X, y)
    assert not hasattr(est, "bse_")
    with pytest.raises(ValueError, match="partial_fit does not compute it"):
        est.summary()
    reg = NaturalGradientRegressor(alpha=0.0).fit(*_load("longley"))
    np.testing.assert_allclose(_to_sm(reg.bse_, 6), _statsmodels("linear", *_load("longley"))
                               .bse, rtol=RTOL)
    one = NaturalGradientRegressor().fit(X[:3], y[:3])  # n <= p: no residual variance
    with pytest.raises(ValueError, match="more observations than parameters"):
        one.summary()


# -- Dask -----------------------------------------------------------------------------------
def test_dask_summary_of_a_table_names_the_fix(tmp_path):
    """A table (its workers cannot open it as Zarr) is refused before the cluster is used,
    saying what to do, not that the Parquet file is 'not a zip archive of a Zarr group'.
    """
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X, y = _load("spector")
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y}),
                   tmp_path / "t.parquet")
    model = make_model("logistic", 3)
    with pytest.raises(TypeError, match=r"not a table: copy it first .*convert"):
        summary(model, np.zeros(4), str(tmp_path / "t.parquet"), client=object())


@pytest.mark.slow  # a local cluster of two processes (~30 s on the shared 2-core machine)
def test_dask_summary_equals_the_single_process_one(tmp_path, capsys):
    pytest.importorskip("distributed")
    from natgrad_stream.data.datasets import make_dataset

    store = tmp_path / "d.zarr"
    make_dataset(store, task="poisson", rows=12_000, features=3, chunk_rows=1000, seed=4)
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "poisson", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["summary", str(run), "--format", "json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(["summary", str(run), "--format", "json", "--dask-workers", "2"]) == 0
    out = capsys.readouterr()
    dask = json.loads(out.out.strip().splitlines()[-1])
    for key in ("log_likelihood", "deviance", "aic", "bic", "n_obs"):
        np.testing.assert_allclose(dask[key], local[key], rtol=1e-12)
    for a, b in zip(dask["coefficients"], local["coefficients"], strict=True):
        np.testing.assert_allclose([a["se"], a["se_robust"]], [b["se"], b["se_robust"]],
                                   rtol=1e-8)  # sums in another order


def test_a_run_fitted_on_arrays_needs_data(tmp_path, capsys):
    from natgrad_stream.app.runs import fit_run

    X, y = _load("spector")
    fit_run((X, y), tmp_path / "run", model="logistic")
    assert main(["summary", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("records no data path (it was fitted on in-memory data): "
                                "give DATA"), err
    store = write_group(tmp_path / "s.zarr", X=X, y=y)
    assert main(["summary", str(tmp_path / "run"), str(store), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(got["log_likelihood"], _statsmodels("logistic", X, y).llf,
                               rtol=RTOL)


def test_learner_summary_warns_when_not_converged():
    X, y = _load("spector")
    learner = NaturalGradientLearner(make_model("logistic", 3))
    learner.fit((X, y), epochs=1)  # (the pass cap's note is a log record)
    with pytest.warns(RuntimeWarning, match="the fit did not converge"):
        s = learner.summary((X, y))
    assert s.converged is False and s.decrement > 0


def test_other_data_than_the_fitted_ones_get_a_note():
    X, y = _load("spector")
    learner = NaturalGradientLearner(make_model("logistic", 3)).fit((X, y))
    assert learner.summary((X, y)).notes == []
    other = learner.summary((X[::-1], y))  # rows paired with other labels
    assert other.notes and other.notes[0].startswith("θ is not the optimum of these data")


@pytest.mark.parametrize("kind", ["logistic", "linear", "poisson"])
def test_weights_are_frequency_weights(kind):
    """A row of weight k counts as k copies of it: every figure equals the repeated data's."""
    rng = np.random.default_rng(5)
    n, d = 300, 2
    X = rng.standard_normal((n, d))
    z = X @ [0.7, -0.4]
    y = {"logistic": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float),
         "linear": z + rng.standard_normal(n),
         "poisson": rng.poisson(np.exp(z)).astype(float)}[kind]
    k = rng.integers(1, 4, n)
    model = make_model(kind, d)
    theta = NaturalGradientLearner(model).fit((X, y, k.astype(float))).theta
    weighted = summary(model, theta, (X, y, k.astype(float)))
    repeated = summary(model, theta, (np.repeat(X, k, axis=0), np.repeat(y, k)))
    for a, b in ((weighted.bse, repeated.bse), (weighted.bse_robust, repeated.bse_robust),
                 (weighted.log_likelihood, repeated.log_likelihood),
                 (weighted.deviance, repeated.deviance), (weighted.bic, repeated.bic)):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    assert weighted.n_obs == repeated.n_obs == k.sum() and weighted.rows == n


def test_summary_without_data_is_the_last_fits(tmp_path):
    """``lr.fit(data).summary()``: the issue's ``result.summary()``, on the data (and the
    array names) of the last fit; a learner that fitted nothing asks for the data.
    """
    X, y = _load("spector")
    learner = NaturalGradientLearner(make_model("logistic", 3)).fit((X, y))
    np.testing.assert_array_equal(learner.summary().bse, learner.summary((X, y)).bse)
    store = tmp_path / "s.zarr"
    write_group(store, features=X, target=y)
    lr = NaturalGradientLearner(make_model("logistic", 3)).fit(store, x="features",
                                                                y="target")
    np.testing.assert_allclose(lr.summary().bse, learner.summary().bse, rtol=1e-6)
    with pytest.raises(ValueError, match="has fitted none: pass the data"):
        NaturalGradientLearner(make_model("logistic", 3)).summary()
