"""The fitted scikit-learn estimator equivalent to a fitted natgrad_stream model.

``to_sklearn`` maps a model and its parameters θ to the scikit-learn estimator that makes
the same predictions, so that a fit done here can be used wherever scikit-learn estimators
are (pipelines, ONNX export through skl2onnx, joblib files):

=============  ==========================================================================
model          estimator (fitted attributes)
=============  ==========================================================================
``logistic``   ``LogisticRegression``: ``classes_`` (0, 1), ``coef_`` (1, d), ``intercept_``
``softmax``    ``LogisticRegression`` (multinomial): ``classes_`` (K), ``coef_`` (K, d) with
               the reference class 0's row zeros, ``intercept_`` (K)
``linear``     ``LinearRegression`` (``Ridge(alpha)`` from a penalized
               :class:`~natgrad_stream.sklearn.NaturalGradientRegressor`)
``poisson``    ``PoissonRegressor`` (log link)
``mlp``        ``MLPRegressor(hidden_layer_sizes=(H,), activation="tanh")``
=============  ==========================================================================

The density models (``gaussian``, ``gaussian-mean``, ``ising``, ``ica``) predict no target
and have no scikit-learn equivalent: :class:`NoEquivalentError`.

The estimator is fitted once on a few placeholder rows (so that every private attribute
its ``predict`` needs is set by scikit-learn itself, whatever its version), then given our
learned attributes. Its hyperparameters are scikit-learn's defaults, except ``C`` and
``alpha`` when the source is one of our scikit-learn estimators (the same penalty) and a
run's ``l2`` as ``PoissonRegressor``'s ``alpha`` (the same meaning): only the fitted
attributes decide the predictions.

Equality: the predictions are the same float64 arithmetic as ours (``X @ coef + b``, then
the inverse link) in another summation order, so they differ by round-off only, at most a
few units of 1e-16 relative to ``Σ_j |x_j coef_j| + |b|`` (``tests/test_to_sklearn.py``
checks 1e-12 of that scale).
"""

from __future__ import annotations

import warnings

import numpy as np

#: Models with a scikit-learn equivalent (``to_sklearn``).
EQUIVALENTS = {"logistic": "LogisticRegression", "softmax": "LogisticRegression",
               "linear": "LinearRegression", "poisson": "PoissonRegressor",
               "mlp": "MLPRegressor"}


class NoEquivalentError(ValueError):
    """The model has no scikit-learn equivalent (a density model: it predicts no target)."""


def to_sklearn(model, theta, *, classes=None, hyperparameters: dict | None = None,
               feature_names=None):
    """The fitted scikit-learn estimator that predicts as ``model`` at ``theta``.

    Parameters
    ----------
    model : Model
        A fitted model's family and sizes (``logistic``, ``softmax``, ``linear``,
        ``poisson``, ``mlp``).
    theta : ndarray, shape (n_params,)
    classes : array_like, optional
        Labels of the classes in code order (classifiers; default ``0 … K−1``).
    hyperparameters : dict, optional
        Constructor arguments of the estimator (e.g. ``{"C": 0.5}``).
    feature_names : array_like of str, optional
        Set as ``feature_names_in_`` (the estimator then checks DataFrame columns).

    Returns
    -------
    sklearn estimator, fitted

    Raises
    ------
    NoEquivalentError
        For a model without a scikit-learn equivalent.

    Examples
    --------
    >>> from natgrad_stream.models import make_model
    >>> est = to_sklearn(make_model("logistic", 2), np.array([1.0, -2.0, 0.5]))
    >>> type(est).__name__, est.coef_.tolist(), est.intercept_.tolist()
    ('LogisticRegression', [[1.0, -2.0]], [0.5])
    """
    name = model.name
    if name not in EQUIVALENTS:
        raise NoEquivalentError(
            f"model {name!r} has no scikit-learn equivalent (it models the density of X and "
            f"predicts no target); to_sklearn applies to {', '.join(EQUIVALENTS)}")
    theta = np.asarray(theta, dtype=np.float64).copy()
    if theta.shape != (model.n_params,):
        raise ValueError(f"theta must have shape ({model.n_params},), got {theta.shape}")
    d = model.n_features
    kw = dict(hyperparameters or {})
    if name in ("logistic", "softmax"):
        K = 2 if name == "logistic" else model.n_classes
        labels = np.arange(K) if classes is None else np.asarray(classes)
        if labels.shape != (K,):
            raise ValueError(f"classes must hold the {K} class labels, got {labels.shape}")
        if name == "logistic":
            coef, intercept = theta[None, :-1], theta[-1:]
        else:
            coef, intercept = model.coef_intercept(theta)
        est = _placeholder_fit("LogisticRegression", kw, d, np.arange(K))
        est.classes_ = labels
        est.coef_, est.intercept_ = np.ascontiguousarray(coef), np.asarray(intercept)
    elif name == "mlp":
        H = model.hidden
        W1 = theta[:H * d].reshape(H, d)
        b1, w2, b2 = theta[H * d:H * d + H], theta[H * d + H:H * d + 2 * H], theta[-1:]
        kw = {"hidden_layer_sizes": (H,), "activation": "tanh", **kw}
        est = _placeholder_fit("MLPRegressor", kw, d, np.arange(2.0))
        est.coefs_ = [np.ascontiguousarray(W1.T), w2.reshape(H, 1).copy()]
        est.intercepts_ = [b1.copy(), b2.copy()]
    else:
        kind = kw.pop("estimator", EQUIVALENTS[name])
        est = _placeholder_fit(kind, kw, d, np.array([1.0, 2.0]))
        est.coef_, est.intercept_ = theta[:-1].copy(), np.float64(theta[-1])
    if feature_names is not None:
        est.feature_names_in_ = np.asarray(feature_names, dtype=object)
    return est


def _placeholder_fit(kind: str, kw: dict, d: int, targets: np.ndarray):
    """A ``kind`` estimator fitted on ``len(targets)`` zero rows of ``d`` features (its
    learned attributes are replaced by the caller).
    """
    import sklearn.linear_model as lm
    import sklearn.neural_network as nn

    cls = getattr(lm, kind, None) or getattr(nn, kind)
    est = cls(**kw)
    if kind == "MLPRegressor":
        est.set_params(max_iter=1)
    X = np.zeros((len(targets), d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence on placeholder rows is irrelevant
        est.fit(X, targets)
    if kind == "MLPRegressor":
        est.set_params(max_iter=kw.get("max_iter", 200))
    return est


def run_to_sklearn(run_dir, *, allow_legacy: bool = False):
    """:func:`to_sklearn` of a run directory's reported parameters (the Polyak average when
    the run kept one), with the categories of a categorical target as ``classes_`` and a
    Poisson run's ``l2`` as ``alpha``.
    """
    from natgrad_stream.app.runs import _load_state, reported_theta
    from natgrad_stream.models import model_from_config

    state = _load_state(run_dir, allow_legacy=allow_legacy)
    model = model_from_config(state["model"])
    names = (state.get("run") or {}).get("class_names")
    l2 = float((state.get("fit_options") or {}).get("l2") or 0.0)
    hyper = {"alpha": l2} if model.name == "poisson" else None
    return to_sklearn(model, reported_theta(state), classes=names, hyperparameters=hyper)


def learner_theta(learner) -> np.ndarray:
    """The parameters a learner reports: the Polyak average when it keeps one (and has
    taken a step), else :attr:`~natgrad_stream.learner.NaturalGradientLearner.theta`.
    """
    if getattr(learner, "average", False) and learner.state.average_weight:
        return learner.theta_average
    return learner.theta
