"""Every GLM reaches the statsmodels / scikit-learn maximum-likelihood optimum on real data.

The datasets ship with scikit-learn and statsmodels (no download), and the features are
used raw: unscaled, uncentred and correlated, so the design's second-moment matrix
``⟨x̃x̃ᵀ⟩`` has condition numbers from 1e4 to 1e11 (asserted below).

Learner settings (the same for every model): Fisher scoring.
``NaturalGradientLearner(model, batch_size=n, rewhiten=1, half_life=1e-3, optimizer="sgd",
lr=1.0, step_schedule="constant", fisher_every=1)``: each pass is one batch holding the
whole dataset; its model Fisher replaces the running metric (a half-life of 1e-3 samples
forgets the previous one), the whitener is refreshed at every step, and the unit step in
the whitened coordinates is the Newton step ``θ ← θ − G⁻¹∇J`` (for canonical links the
model Fisher is the Hessian), up to the default damping ``1e-9·diag(G)``. The run starts
from θ = 0, so the first passes are the damped start of Newton's method.

Losses compared (the mean negative log-likelihood over the training rows):

- logistic, softmax: exactly statsmodels' ``−llf/n`` (``Logit``, ``MNLogit``);
- Poisson: ours omits ``log y!``; we add ``mean(log y!)`` back and compare with
  statsmodels' ``Poisson`` ``−llf/n``;
- linear: ours is ``½·mean(r²)`` (the unit-variance Gaussian NLL without ``½ log 2π``),
  compared with ``ssr/(2n)`` of statsmodels' ``OLS`` (whose own ``llf`` profiles out σ²).

Each comparison asserts the relative gap is below 1e-6 after a stated number of passes
(measured gaps at those passes: 0 to 1e-9; one pass fewer leaves 1e-7 to 1e-5, as Newton's
quadratic convergence sets in) and, loosely, the coefficients. scikit-learn's fits, where
used, first confirm the statsmodels optimum.
"""

import json
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

#: The asserted relative gap to the reference optimum.
GAP = 1e-6
#: Loose coefficient tolerance: a loss gap g leaves weakly determined coefficients off by
#: about √g relative, so 1e-11 … 1e-9 gaps allow 1e-5 … 3e-4 (measured).
COEF_RTOL = 1e-3


def fisher_scoring(model, n):
    """The learner settings of the module docstring for ``n`` training rows."""
    return NaturalGradientLearner(model, batch_size=n, rewhiten=1, half_life=1e-3,
                                  optimizer="sgd", lr=1.0, step_schedule="constant",
                                  fisher_every=1, refine="stream")


def _fit(model, X, y, passes, w=None):
    learner = fisher_scoring(model, X.shape[0])
    learner.fit((X, y) if w is None else (X, y, w), epochs=passes)
    assert learner.samples == passes * X.shape[0] and learner.steps == passes
    return learner.theta


def _ill_conditioned(X, bound=1e4):
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    assert np.linalg.cond(Xt.T @ Xt / X.shape[0]) > bound


def _relative_gap(ours, reference):
    return (ours - reference) / abs(reference)


def test_logistic_breast_cancer():
    """Breast cancer (569 × 10 "mean" features; all 30 are linearly separable, so the MLE
    would not exist): statsmodels ``Logit`` and scikit-learn. 8 passes (gap 3e-12
    measured; 9e-7 after 7).
    """
    import statsmodels.api as sm
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer()
    X, y = data.data[:, :10], data.target.astype(np.float64)
    _ill_conditioned(X, 1e10)
    ref = sm.Logit(y, sm.add_constant(X)).fit(method="newton", disp=0, maxiter=100)
    assert ref.mle_retvals["converged"]
    theta_ref = np.r_[ref.params[1:], ref.params[0]]
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100)
    sk.fit(X, y)
    assert_allclose(np.r_[sk.coef_[0], sk.intercept_], theta_ref, rtol=1e-6)

    model = make_model("logistic", 10)
    theta = _fit(model, X, y, passes=8)
    assert 0 <= _relative_gap(model.loss(X, y, theta), -ref.llf / len(y)) < GAP
    assert_allclose(theta, theta_ref, rtol=COEF_RTOL)  # measured 2e-5


def test_linear_diabetes_raw():
    """Diabetes with its raw, unscaled features (``scaled=False``): statsmodels ``OLS``.
    The loss is quadratic, so one pass (one Newton step) is exact up to the damping
    (gap 0 measured).
    """
    import statsmodels.api as sm
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    X, y = data.data, data.target.astype(np.float64)
    _ill_conditioned(X, 1e7)
    ref = sm.OLS(y, sm.add_constant(X)).fit()
    model = make_model("linear", 10)
    theta = _fit(model, X, y, passes=1)
    assert abs(_relative_gap(model.loss(X, y, theta), ref.ssr / (2 * len(y)))) < GAP
    # measured 4e-7: the damping 1e-9·diag(G) against a condition number of 5e7
    assert_allclose(theta, np.r_[ref.params[1:], ref.params[0]], rtol=1e-5)


def _softmax_case(X, y, K, passes):
    import statsmodels.api as sm

    ref = sm.MNLogit(y, sm.add_constant(X)).fit(method="newton", disp=0, maxiter=100)
    assert ref.mle_retvals["converged"]
    params = np.asarray(ref.params)  # (d + 1, K − 1), the constant first
    theta_ref = np.vstack([params[1:], params[:1]]).T.ravel()
    model = make_model("softmax", X.shape[1], n_classes=K)
    theta = _fit(model, X, y, passes)
    gap = _relative_gap(model.loss(X, y, theta), -ref.llf / len(y))
    assert -1e-12 < gap < GAP
    assert_allclose(theta, theta_ref, rtol=COEF_RTOL)  # measured 3e-4 (anes96), 9e-6 (wine)
    return model, theta


def test_softmax_wine():
    """Wine (178 × the first 5 features, 3 classes; with 7 or more features a class is
    linearly separable and the MLE does not exist): statsmodels ``MNLogit`` and
    scikit-learn's multinomial ``LogisticRegression``. 7 passes (gap 5e-12 measured;
    7e-7 after 6).
    """
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    data = load_wine()
    X, y = data.data[:, :5], data.target.astype(np.float64)
    _ill_conditioned(X, 1e6)
    model, theta = _softmax_case(X, y, 3, passes=7)
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100)
    sk.fit(X, y)
    # scikit-learn's symmetric parameterization: class c minus class 0 is our block c
    coef, intercept = model.coef_intercept(theta)
    assert_allclose(coef[1:], sk.coef_[1:] - sk.coef_[0], rtol=COEF_RTOL)
    assert_allclose(intercept[1:], sk.intercept_[1:] - sk.intercept_[0], rtol=COEF_RTOL)
    sk_loss = -np.mean(np.log(sk.predict_proba(X)[np.arange(len(y)), data.target]))
    assert _relative_gap(model.loss(X, y, theta), sk_loss) < GAP


def test_softmax_anes96():
    """The 1996 American National Election Study, statsmodels' own ``MNLogit`` example
    (944 × 5, 7 party-identification classes). 4 passes (gap 1e-9 measured; 8e-6 after 3).
    """
    import statsmodels.api as sm

    data = sm.datasets.anes96.load_pandas()
    X, y = data.exog.to_numpy(np.float64), data.endog.to_numpy(np.float64)
    _ill_conditioned(X, 1e4)
    _softmax_case(X, y, 7, passes=4)


def test_poisson_randhie():
    """The RAND Health Insurance Experiment, statsmodels' ``Poisson`` example (20,190 × 9,
    outpatient visit counts), and scikit-learn's ``PoissonRegressor(alpha=0)``. 10 passes
    (gap 2e-13 measured; 1e-7 after 9 — Newton from θ = 0 overshoots for a log link and
    needs its first six steps to find the basin).
    """
    import statsmodels.api as sm
    from scipy.special import gammaln
    from sklearn.linear_model import PoissonRegressor

    data = sm.datasets.randhie.load_pandas()
    X, y = data.exog.to_numpy(np.float64), data.endog.to_numpy(np.float64)
    _ill_conditioned(X, 1e4)
    ref = sm.Poisson(y, sm.add_constant(X)).fit(method="newton", disp=0, maxiter=100)
    assert ref.mle_retvals["converged"]
    theta_ref = np.r_[ref.params[1:], ref.params[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk = PoissonRegressor(alpha=0.0, solver="newton-cholesky", tol=1e-12, max_iter=100)
        sk.fit(X, y)
    assert_allclose(np.r_[sk.coef_, sk.intercept_], theta_ref, rtol=1e-6)

    model = make_model("poisson", 9)
    theta = _fit(model, X, y, passes=10)
    nll = model.loss(X, y, theta) + gammaln(y + 1).mean()
    assert -1e-14 < _relative_gap(nll, -ref.llf / len(y)) < GAP
    assert_allclose(theta, theta_ref, rtol=COEF_RTOL)  # measured 2e-5


@pytest.mark.parametrize("passes", [1, 2])
def test_too_few_passes_do_not_pass(passes):
    """The gap bound is not vacuous: one or two passes leave breast cancer far off."""
    import statsmodels.api as sm
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X, y = data.data[:, :10], data.target.astype(np.float64)
    ref = sm.Logit(y, sm.add_constant(X)).fit(method="newton", disp=0, maxiter=100)
    model = make_model("logistic", 10)
    theta = _fit(model, X, y, passes=passes)
    assert _relative_gap(model.loss(X, y, theta), -ref.llf / len(y)) > 0.1


def test_poisson_exposure_as_weights_matches_statsmodels_exposure():
    """Exposure t: fitting the rate y/t with sample weights t (``--w``) gives the MLE of
    y ~ Poisson(t·exp(x·β + b)), statsmodels' ``Poisson(..., exposure=t)``.
    """
    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    n = 4000
    X = rng.standard_normal((n, 3)) * [1.0, 0.3, 2.0] + [0.0, 1.0, -0.5]
    t = rng.uniform(0.2, 5.0, n)
    y = rng.poisson(t * np.exp(X @ [0.3, -0.5, 0.2] + 0.1)).astype(np.float64)
    ref = sm.Poisson(y, sm.add_constant(X), exposure=t).fit(disp=0, method="newton")
    model = make_model("poisson", 3)
    theta = _fit(model, X, y / t, passes=8, w=t)
    assert_allclose(theta, np.r_[ref.params[1:], ref.params[0]], rtol=1e-6, atol=1e-9)


def test_weighted_evaluation_of_a_poisson_exposure_model(tmp_path, capsys):
    """``evaluate --w`` weights every mean like training does: the exposure-weighted mean
    deviance of the rates equals statsmodels' deviance of the counts over Σ exposure.
    """
    import statsmodels.api as sm

    from natgrad_stream.app.cli import main
    from natgrad_stream.evaluate import evaluate

    rng = np.random.default_rng(6)
    n = 3000
    X = rng.standard_normal((n, 2))
    t = rng.uniform(0.5, 4.0, n)
    y = rng.poisson(t * np.exp(X @ [0.4, -0.3] + 0.2)).astype(np.float64)
    glm = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson(), exposure=t).fit()
    model = make_model("poisson", 2)
    theta = np.r_[glm.params[1:], glm.params[0]]
    got = evaluate(model, theta, (X, y / t, t), w="w")
    assert got["mean_deviance"] == pytest.approx(glm.deviance / t.sum(), rel=1e-10)
    unweighted = evaluate(model, theta, (X, y / t))
    assert unweighted["mean_deviance"] != pytest.approx(got["mean_deviance"], rel=1e-3)
    with pytest.raises(ValueError, match="sample weights"):
        evaluate(make_model("gaussian", 2), np.zeros(5), (X,), w="w")

    import zarr

    g = zarr.open_group(str(tmp_path / "rates.zarr"), mode="w", zarr_format=3)
    for name, arr in (("X", X), ("y", y / t), ("t", t)):
        g.create_array(name, shape=arr.shape, chunks=(1000,) + arr.shape[1:],
                       dtype="float64")[...] = arr
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "rates.zarr"), "--model", "poisson", "--out", str(run),
                 "--w", "t", "--epochs", "3"]) == 0
    assert main(["evaluate", str(run), str(tmp_path / "rates.zarr"), "--w", "t"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == n
    assert out["mean_deviance"] == pytest.approx(glm.deviance / t.sum(), rel=1e-3)
