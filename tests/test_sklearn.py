"""The scikit-learn estimators of :mod:`natgrad_stream.sklearn`."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from natgrad_stream.sklearn import (
    DEFAULT_ALPHA,
    DEFAULT_C,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    ESTIMATOR_OPTIONS,
    NaturalGradientClassifier,
    NaturalGradientPoissonRegressor,
    NaturalGradientRegressor,
)
from natgrad_stream.training import options as opts

ESTIMATORS = (NaturalGradientClassifier, NaturalGradientRegressor,
              NaturalGradientPoissonRegressor)


@parametrize_with_checks([cls() for cls in ESTIMATORS],
                         expected_failed_checks=lambda est: est._expected_failed_checks())
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_defaults_come_from_the_options_table(cls):
    params = inspect.signature(cls.__init__).parameters
    for name in ESTIMATOR_OPTIONS:
        assert name in opts.LEARNER_OPTIONS
        assert params[name].default == opts.BY_NAME[name].default, name
    assert params["tol"].default == DEFAULT_TOL
    assert params["max_iter"].default == DEFAULT_MAX_ITER
    penalty = "C" if cls is NaturalGradientClassifier else "alpha"  # scikit-learn's names
    assert params[penalty].default == (DEFAULT_C if penalty == "C" else DEFAULT_ALPHA) == 1.0
    assert params["warm_start"].default is False
    own = {"class_weight"} if cls is NaturalGradientClassifier else set()
    if own:
        assert params["class_weight"].default is None
    assert set(params) - {"self"} == {*ESTIMATOR_OPTIONS, "tol", "max_iter", penalty,
                                      "warm_start", *own}


def test_the_lowrank_structure_takes_its_rank_from_the_estimator():
    """``rank`` (issue 18's low-rank structure) is an estimator parameter: it reaches the
    learner, and the fit reaches the same penalized optimum as the full metric's.
    """
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    full = NaturalGradientClassifier().fit(X, y)
    low = NaturalGradientClassifier(structure="lowrank", rank=4).fit(X, y)
    assert low.get_params()["rank"] == 4 and low.learner_.rank == 4
    assert low.learner_.structure == "lowrank" and low.converged_
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X, y)
    # the estimators stop at a Newton decrement of tol = 1e-10 of |J|: the coefficients
    # are then within about 1e-4 (measured on Zen 4: 2e-6 full, 4e-5 lowrank)
    for m in (full, low):
        np.testing.assert_allclose(m.coef_, ref.coef_, atol=1e-3)


@pytest.mark.parametrize("C", [np.inf, DEFAULT_C])
def test_logistic_reaches_sklearn_optimum(C):
    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :10]
    est = NaturalGradientClassifier(C=C).fit(X, y)
    assert est.converged_ and 1 < est.n_iter_ < DEFAULT_MAX_ITER
    ref = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12,
                             max_iter=1000).fit(X, y)
    assert est.coef_.shape == ref.coef_.shape == (1, 10)
    assert est.intercept_.shape == (1,)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-4, atol=1e-4)
    # tol=1e-10 bounds the objective's gap: with C=1.0 the fit stops 1e-10 above the
    # optimum (the absolute decrement rule), the probabilities within about 1e-5 of it
    atol = 1e-6 if np.isinf(C) else 1e-4
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=atol)
    np.testing.assert_allclose(est.predict_log_proba(X), ref.predict_log_proba(X),
                               rtol=100 * atol, atol=atol)


def test_a_converged_fit_logs_no_pass_cap_lines(caplog):
    """The estimator runs the learner one pass at a time; the learner's 'stopped by the
    pass cap' line after each is the estimator's business (one ConvergenceWarning when it
    does not converge), not a line per pass on the user's stderr.
    """
    X, y = load_breast_cancer(return_X_y=True)
    with caplog.at_level("INFO", logger="natgrad_stream"):
        est = NaturalGradientClassifier().fit(X[:, :10], y)
    assert est.converged_ and est.n_iter_ > 2
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_linear_reaches_sklearn_optimum():
    X, y = load_diabetes(return_X_y=True)
    est = NaturalGradientRegressor().fit(X, y)
    ref = Ridge().fit(X, y)  # the default alpha=1.0 of both
    assert est.converged_ and est.coef_.shape == (10,)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-5, atol=1e-3)
    assert est.intercept_ == pytest.approx(ref.intercept_, rel=1e-8)
    assert est.score(X, y) == pytest.approx(ref.score(X, y), rel=1e-8)


def _poisson_data(n=800, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    exposure = rng.uniform(0.5, 3.0, n)
    counts = rng.poisson(exposure * np.exp(X @ [0.3, -0.2, 0.1, 0.0] + 0.5))
    return X, counts / exposure, exposure


def test_poisson_reaches_sklearn_optimum_with_exposure_weights():
    X, rate, exposure = _poisson_data()
    est = NaturalGradientPoissonRegressor(alpha=0).fit(X, rate, sample_weight=exposure)
    ref = PoissonRegressor(alpha=0, tol=1e-12, max_iter=1000).fit(
        X, rate, sample_weight=exposure)
    assert est.converged_
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-5)
    assert est.intercept_ == pytest.approx(ref.intercept_, abs=1e-5)
    assert est.score(X, rate) == pytest.approx(ref.score(X, rate), rel=1e-6)


def test_multiclass_string_labels():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    unpenalized = make_pipeline(StandardScaler(),
                                NaturalGradientClassifier(C=np.inf, max_iter=8))
    with pytest.warns(Warning):  # iris's setosa is separable: no finite optimum
        unpenalized.fit(X, names)
    est = make_pipeline(StandardScaler(), NaturalGradientClassifier())  # C=1.0: one
    est.fit(X, names)
    clf = est[-1]
    assert clf.converged_
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.coef_.shape == (3, 4) and clf.intercept_.shape == (3,)
    assert set(est.predict(X)) <= set(names)
    assert est.score(X, names) > 0.95
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)


def test_binary_string_labels_and_partial_fit():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X[:, :10])
    labels = np.array(["benign", "malignant"])[y]
    est = NaturalGradientClassifier().fit(X, labels)
    assert list(est.classes_) == ["benign", "malignant"]
    assert est.score(X, labels) > 0.9
    stream = NaturalGradientClassifier()
    with pytest.raises(ValueError, match="classes"):
        stream.partial_fit(X[:100], labels[:100])
    for a in range(0, len(X), 100):
        stream.partial_fit(X[a:a + 100], labels[a:a + 100], classes=["benign", "malignant"])
    assert stream.n_iter_ == 6
    assert stream.score(X, labels) > 0.85


def test_pipeline_grid_search_and_cross_validation():
    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :10]
    pipe = make_pipeline(StandardScaler(), NaturalGradientClassifier())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.85
    grid = GridSearchCV(pipe, {"naturalgradientclassifier__whitening": ["eigh", "ridge"],
                               "naturalgradientclassifier__damping": [1e-9, 1e-6]},
                        cv=3).fit(X, y)
    assert grid.best_score_ > 0.85
    Xd, yd = load_diabetes(return_X_y=True)
    assert cross_val_score(NaturalGradientRegressor(), Xd, yd, cv=3).mean() > 0.3


def test_feature_names_from_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    est = NaturalGradientRegressor().fit(X, y)
    assert list(est.feature_names_in_) == list(X.columns)
    assert est.predict(X).shape == (len(X),)
    assert isinstance(X, pd.DataFrame)


def test_fit_from_zarr_path(tmp_path):
    from natgrad_stream.data import as_source
    from natgrad_stream.data.datasets import make_dataset

    path = tmp_path / "logistic.zarr"
    make_dataset(path, task="logistic", rows=5000, features=3, chunk_rows=1000)
    est = NaturalGradientClassifier().fit(str(path))
    assert est.n_features_in_ == 3 and not hasattr(est, "feature_names_in_")
    assert list(est.classes_) == [0, 1] and est.converged_
    source = as_source(str(path))
    X, y = np.asarray(source.X[:]), np.asarray(source.y[:])
    mem = NaturalGradientClassifier().fit(X, y)
    np.testing.assert_allclose(est.coef_, mem.coef_, rtol=1e-4, atol=1e-5)
    assert np.mean(est.predict(X) == y) > 0.6
    assert est.predict_proba(X).shape == (5000, 2)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_integer_weights_equal_repeated_rows(cls):
    X, rate, _ = _poisson_data(n=200, seed=1)
    y = (rate > 1.5).astype(int) if cls is NaturalGradientClassifier else rate
    sw = np.random.default_rng(2).integers(0, 4, len(y))
    weighted = cls().fit(X, y, sample_weight=sw)
    repeated = cls().fit(X.repeat(sw, axis=0), y.repeat(sw))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(weighted.intercept_, repeated.intercept_, rtol=1e-6, atol=1e-8)


def test_bad_parameters_raise_value_error():
    X, y = load_diabetes(return_X_y=True)
    with pytest.raises(ValueError):
        NaturalGradientRegressor(structure="nope").fit(X, y)
    with pytest.raises(ValueError):
        NaturalGradientRegressor(max_iter=0).fit(X, y)
    with pytest.raises(ValueError):
        NaturalGradientRegressor(optimizer="lbfgs").fit(X, y)


def _standardized_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X[:, :10]), y


@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 1: 0.5}])
@pytest.mark.parametrize("C", [1.0, 0.1])
def test_class_weight_reaches_sklearn_optimum(C, class_weight):
    """``class_weight`` means what it means to ``LogisticRegression``: the same optimum.

    Standardized features and tol=1e-14: at the default tol=1e-10 the fit stops where the
    objective is within 1e-10·|J| of its minimum, the coefficients within about 1e-5.
    """
    X, y = _standardized_cancer()
    est = NaturalGradientClassifier(C=C, class_weight=class_weight, tol=1e-14).fit(X, y)
    ref = LogisticRegression(C=C, class_weight=class_weight, solver="newton-cholesky",
                             tol=1e-14, max_iter=1000).fit(X, y)
    assert est.converged_
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=0, atol=1e-6)
    plain = NaturalGradientClassifier(C=C, tol=1e-14).fit(X, y)
    assert np.abs(plain.coef_ - est.coef_).max() > 1e-2  # the weights did change the fit


@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_balanced_class_weight_equals_the_matching_sample_weights(with_sample_weight):
    """The issue's criterion, on three unequal classes: "balanced" is the sample weights
    ``n_samples / (n_classes · bincount(y))`` (weighted counts with sample_weight, which
    they multiply), to 1e-9.
    """
    X, y = load_iris(return_X_y=True)
    keep = np.r_[0:50, 50:80, 100:115]  # 50, 30 and 15 rows
    X, y = X[keep], y[keep]
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y)) if with_sample_weight else None
    balanced = NaturalGradientClassifier(class_weight="balanced").fit(X, y, sample_weight=sw)
    base = np.ones(len(y)) if sw is None else sw
    counts = np.bincount(y, weights=base)
    matching = base * (base.sum() / (3 * counts))[y]
    weighted = NaturalGradientClassifier().fit(X, y, sample_weight=matching)
    np.testing.assert_allclose(balanced.coef_, weighted.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(balanced.intercept_, weighted.intercept_, rtol=0, atol=1e-9)


def test_class_weight_dict_in_partial_fit_and_refusals(tmp_path):
    X, y = _standardized_cancer()
    labels = np.where(y == 1, "b", "m")
    cw = {"b": 0.5, "m": 3.0}
    by_dict = NaturalGradientClassifier(class_weight=cw).partial_fit(X, labels,
                                                                    classes=["b", "m"])
    by_weights = NaturalGradientClassifier().partial_fit(
        X, labels, classes=["b", "m"], sample_weight=np.where(labels == "b", 0.5, 3.0))
    np.testing.assert_array_equal(by_dict.coef_, by_weights.coef_)
    with pytest.raises(ValueError, match="not supported by partial_fit"):
        NaturalGradientClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="class_weight must be"):
        NaturalGradientClassifier(class_weight="equal").fit(X, y)
    import zarr
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    group["X"], group["y"] = X, y.astype(np.int8)
    with pytest.raises(ValueError, match=r"with a path \(a Zarr store"):
        NaturalGradientClassifier(class_weight="balanced").fit(str(tmp_path / "d.zarr"))


def test_warm_start_starts_from_the_previous_coefficients():
    """A warm start skips the streaming first pass and runs the converging passes from the
    previous ``coef_``: the same optimum as a cold fit, in fewer passes; a refit at the
    optimum takes one (the pass that checks the rule). Without it, fit starts afresh.
    """
    X, y = _standardized_cancer()
    warm = NaturalGradientClassifier(C=1.0, warm_start=True, tol=1e-14).fit(X, y)
    first = warm.n_iter_
    warm.set_params(C=2.0).fit(X, y)
    cold = NaturalGradientClassifier(C=2.0, tol=1e-14).fit(X, y)
    assert warm.converged_ and cold.converged_
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=0, atol=1e-8)
    assert warm.n_iter_ < cold.n_iter_ and warm.n_iter_ < first
    warm.fit(X, y)
    assert warm.n_iter_ == 1 and warm.converged_
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=0, atol=1e-8)
    again = NaturalGradientClassifier(C=2.0, tol=1e-14).fit(X, y)
    again.fit(X, y)  # warm_start=False: the second fit is the first over again
    assert again.n_iter_ == cold.n_iter_
    np.testing.assert_array_equal(again.coef_, cold.coef_)


@pytest.mark.parametrize("cls", [NaturalGradientRegressor, NaturalGradientPoissonRegressor])
def test_warm_start_regressors(cls):
    X, rate, _ = _poisson_data()
    warm = cls(warm_start=True).fit(X, rate)
    warm.set_params(alpha=0.5).fit(X, rate)
    cold = cls(alpha=0.5).fit(X, rate)
    assert warm.converged_ and warm.n_iter_ <= cold.n_iter_
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="warm_start"):
        warm.fit(X[:, :3], rate)


def test_warm_start_where_structure_auto_settles_on_the_data(settling_logistic):
    """A warm start whose ``structure="auto"`` settles on the data (the thresholds scaled
    down: P = 16 diagonal before the data, full on 20 rows per parameter) still skips the
    streaming first pass: it is the warm start of ``structure="full"`` given.
    """
    X, y = settling_logistic
    y = y.astype(int)
    fits = {}
    for structure in ("auto", "full"):
        est = NaturalGradientClassifier(structure=structure, warm_start=True, tol=1e-12)
        est.fit(X, y)
        assert est.learner_.structure == "full"
        est.set_params(C=0.5).fit(X, y)
        assert est.learner_.structure == "full"
        fits[structure] = est
    auto, full = fits["auto"], fits["full"]
    assert auto.n_iter_ == full.n_iter_
    np.testing.assert_array_equal(auto.coef_, full.coef_)
    np.testing.assert_array_equal(auto.intercept_, full.intercept_)
