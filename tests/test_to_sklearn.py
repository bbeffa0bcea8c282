"""to_sklearn: the equivalent fitted scikit-learn estimator predicts as our model.

Tolerance: both sides compute the same float64 linear predictor ``z = x·coef + b`` in a
different summation order (our kernel's loop, BLAS's blocked dot), so ``z`` differs by
round-off: at most a few units of 1e-16 × ``Σ_j |x_j coef_j| + |b|`` (the sum of the
magnitudes, not of the values: raw features cancel). The tests allow 1e-12 of that scale
per row on ``z``, and on what the inverse links make of it (probabilities: |Δp| ≤ |Δz|/4;
Poisson: relative |Δμ|/μ ≈ |Δz|).
"""

import numpy as np
import pytest

from natgrad_stream.models import make_model
from natgrad_stream.models.predictions import predict_columns
from natgrad_stream.sklearn_equivalent import NoEquivalentError, to_sklearn

pytest.importorskip("sklearn")


def _raw_features(n=400, d=5, seed=0):
    """Ill-conditioned raw features: scales over three decades, offsets far from zero."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-1.5, 1.5, d)
    return (rng.standard_normal((n, d)) * scales + 3 * scales).astype(np.float32), scales


def _scale(X, coef, intercept):
    """Per-row ``Σ_j |x_j coef_j| + |b|`` (max over classes)."""
    A = np.abs(X.astype(np.float64)) @ np.abs(np.atleast_2d(coef)).T + np.abs(intercept)
    return A.max(axis=1)


def test_logistic_equals_logistic_regression():
    X, scales = _raw_features()
    theta = np.r_[np.random.default_rng(1).standard_normal(5) / scales, 0.3]
    model = make_model("logistic", 5)
    est = to_sklearn(model, theta)
    ours = predict_columns(model, X, theta, ("proba", "class", "link"))
    tol = 1e-12 * _scale(X, theta[:-1], theta[-1])
    assert type(est).__name__ == "LogisticRegression"
    np.testing.assert_array_less(np.abs(est.decision_function(X) - ours["link"]), tol + 1e-300)
    np.testing.assert_array_less(np.abs(est.predict_proba(X) - ours["proba"]).max(axis=1),
                                 tol + 1e-300)
    assert np.array_equal(est.predict(X), ours["class"])


def test_softmax_equals_multinomial_logistic_regression_with_class_labels():
    X, scales = _raw_features(d=4)
    rng = np.random.default_rng(2)
    model = make_model("softmax", 4, n_classes=3)
    theta = (rng.standard_normal((2, 5)) / np.r_[scales, 1.0]).ravel()
    labels = np.array(["cat", "dog", "eel"])
    est = to_sklearn(model, theta, classes=labels)
    ours = predict_columns(model, X, theta, ("proba", "class"))
    coef, intercept = model.coef_intercept(theta)
    tol = 1e-12 * _scale(X, coef, intercept)
    np.testing.assert_array_less(np.abs(est.predict_proba(X) - ours["proba"]).max(axis=1),
                                 tol + 1e-300)
    assert np.array_equal(est.predict(X), labels[ours["class"]])
    assert list(est.classes_) == list(labels) and est.coef_.shape == (3, 4)


@pytest.mark.parametrize("name, kind", [("linear", "LinearRegression"),
                                        ("poisson", "PoissonRegressor")])
def test_regressions_equal_their_sklearn_counterparts(name, kind):
    X, scales = _raw_features()
    theta = np.r_[np.random.default_rng(3).standard_normal(5) / scales * 0.1, 0.2]
    model = make_model(name, 5)
    est = to_sklearn(model, theta)
    assert type(est).__name__ == kind
    mean = predict_columns(model, X, theta, ("mean",))["mean"]
    tol = 1e-12 * _scale(X, theta[:-1], theta[-1])
    err = np.abs(est.predict(X) - mean) / (mean if name == "poisson" else 1.0)
    np.testing.assert_array_less(err, tol + 1e-300)


def test_mlp_equals_mlp_regressor():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 3))
    model = make_model("mlp", 3, hidden=4)
    theta = rng.standard_normal(model.n_params)
    est = to_sklearn(model, theta)
    assert type(est).__name__ == "MLPRegressor" and est.activation == "tanh"
    np.testing.assert_allclose(est.predict(X), model.predict(X, theta), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "gaussian-mean", "ica"])
def test_density_models_have_no_equivalent(name):
    model = make_model(name, 2)
    with pytest.raises(NoEquivalentError, match="no scikit-learn equivalent"):
        to_sklearn(model, model.init_params())


def test_learner_and_estimators_to_sklearn():
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.sklearn import (
        NaturalGradientClassifier,
        NaturalGradientPoissonRegressor,
        NaturalGradientRegressor,
    )

    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 3))
    y = (X @ [1.0, -1.0, 0.5] + rng.standard_normal(500) > 0).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 3)).fit((X, y), epochs=3)
    est = learner.to_sklearn()
    np.testing.assert_allclose(est.coef_[0], learner.theta[:-1], rtol=0, atol=0)
    np.testing.assert_allclose(est.predict_proba(X)[:, 1],
                               learner.model.predict_mean(X, learner.theta), atol=1e-13)

    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 500)]
    for ours, target, sk in ((NaturalGradientClassifier(C=0.5), labels, "LogisticRegression"),
                             (NaturalGradientRegressor(alpha=2.0), X[:, 0], "Ridge"),
                             (NaturalGradientRegressor(alpha=0), X[:, 0], "LinearRegression"),
                             (NaturalGradientPoissonRegressor(alpha=0.1),
                              rng.poisson(1.0, 500), "PoissonRegressor")):
        fitted = ours.fit(X, target)
        equivalent = fitted.to_sklearn()
        assert type(equivalent).__name__ == sk
        if sk == "LogisticRegression":
            assert equivalent.C == 0.5
            np.testing.assert_allclose(equivalent.predict_proba(X), fitted.predict_proba(X),
                                       rtol=0, atol=1e-13)
            assert np.array_equal(equivalent.predict(X), fitted.predict(X))
        else:
            assert getattr(equivalent, "alpha", 0.0) == getattr(ours, "alpha", 0.0)
            np.testing.assert_allclose(equivalent.predict(X), fitted.predict(X), rtol=1e-13,
                                       atol=1e-13)


def test_unfitted_estimator_to_sklearn_is_refused():
    from sklearn.exceptions import NotFittedError

    from natgrad_stream.sklearn import NaturalGradientClassifier

    with pytest.raises(NotFittedError):
        NaturalGradientClassifier().to_sklearn()


def test_run_to_sklearn(tmp_path, small_zarr):
    import zarr

    from natgrad_stream.app.runs import fit_run
    from natgrad_stream.sklearn_equivalent import run_to_sklearn

    fit_run(small_zarr, tmp_path / "run", model="logistic", epochs=2)
    est = run_to_sklearn(tmp_path / "run")
    X = zarr.open_group(str(small_zarr), mode="r")["X_test"][...]
    from natgrad_stream.app.runs import run_params

    params = run_params(tmp_path / "run")
    theta = np.r_[params["coef"], params["intercept"]]
    np.testing.assert_allclose(est.predict_proba(X)[:, 1],
                               make_model("logistic", 3).predict_mean(X, theta),
                               rtol=0, atol=1e-12)
