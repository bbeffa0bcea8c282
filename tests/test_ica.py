"""ICA with Amari's natural gradient: kernels against NumPy/SciPy references, the metric
against eq. 43, and source recovery against scikit-learn's FastICA.
"""

import json
import math

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose
from scipy.integrate import quad
from scipy.stats import logistic

from natgrad_stream.app.cli import main
from natgrad_stream.data.synthetic import ica as task
from natgrad_stream.evaluate import evaluate
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import _ica_kernels as K
from natgrad_stream.models import ica_density as D
from natgrad_stream.models import make_model, model_from_config
from natgrad_stream.models.ica import ICA, SingularUnmixingError, amari_distance

# -- references -----------------------------------------------------------------------------


def reference_terms(X, W, beta=0.5):
    """Per-row loss and gradient, row by row: −log|det W| + Σ (1/β) log cosh(βs) + log Z."""
    X = np.asarray(X, dtype=np.float64)
    b = 60.0 / beta  # the integrand is below e^-60/β beyond ±b
    log_z = math.log(quad(lambda s: np.cosh(beta * s) ** (-1 / beta), -b, b)[0])
    WinvT = np.linalg.inv(W).T
    logdet = np.log(abs(np.linalg.det(W)))
    loss, grad = np.empty(X.shape[0]), []
    for i, x in enumerate(X):
        s = W @ x
        loss[i] = -logdet + np.sum(np.log(np.cosh(beta * s)) / beta + log_z)
        grad.append((np.outer(np.tanh(beta * s), x) - WinvT).ravel())
    return loss, np.array(grad)


def reference_log_density(S, alpha, eps=0.3):
    """``log p(s)`` of the adaptive density, ``−(s² + ε²)^{α/2}/α − log Z(α)``, with ``Z`` by
    SciPy's adaptive quadrature; ``S`` (n, d), ``alpha`` (d,).
    """
    out = np.empty_like(S, dtype=np.float64)
    for a, al in enumerate(np.atleast_1d(alpha)):
        def energy(s, al=al):
            return (s * s + eps * eps) ** (al / 2) / al

        z = 2 * quad(lambda s: np.exp(-energy(s)), 0, np.inf, limit=500, epsabs=0,
                     epsrel=1e-13)[0]
        out[:, a] = -energy(S[:, a]) - math.log(z)
    return out


def shape_ref(kappa):
    """The adaptive density's shapes, ``α = 1 + 9 sin²κ``."""
    return 1 + 9 * np.sin(np.asarray(kappa, dtype=np.float64)) ** 2


def random_unmixing(d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, d)) * 0.5 + np.eye(d) * 1.5


def laplace_rows(n, d, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.laplace(size=(n, d)) @ rng.standard_normal((d, d)).T).astype(dtype)


# -- kernels ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n", [1, 37])
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_row_kernel_matches_reference(dtype, parallel, n, beta):
    d = 4
    X = laplace_rows(n, d, seed=n, dtype=dtype)
    W = random_unmixing(d, n)
    model = ICA(d, sharpness=beta)
    _, Winv, logdet = model.factor(W.ravel())
    loss, grad = np.empty(n), np.empty((n, d * d))
    kernel = K.ica_row_terms_parallel if parallel else K.ica_row_terms
    kernel(X, W, np.ascontiguousarray(Winv.T), logdet, beta, model.log_normalizer, loss, grad,
           np.empty((3 if parallel else 1, d)))
    r_loss, r_grad = reference_terms(X, W, beta)
    assert_allclose(loss, r_loss, rtol=1e-9)
    assert_allclose(grad, r_grad, rtol=1e-9, atol=1e-12)
    assert_allclose(K.ica_evaluate(X, W, logdet, beta, model.log_normalizer), r_loss.sum(),
                    rtol=1e-9)


def test_sech_prior_default_is_the_logistic_density():
    """Log p(s) = −2 log cosh(s/2) − log 4 = scipy's logistic log-density; every β integrates
    to one.
    """
    s = np.linspace(-40, 40, 801)
    assert_allclose(ICA(2, density="sech").log_prior(s), logistic.logpdf(s), rtol=1e-12,
                    atol=1e-12)
    for beta in (0.5, 1.0, 3.0):
        mass = quad(lambda v, b=beta: np.exp(ICA(2, sharpness=b).log_prior(v)), -80, 80)[0]
        assert mass == pytest.approx(1.0, abs=1e-9)
    # huge sources do not overflow
    X = np.array([[1e6, -1e6]])
    assert np.isfinite(ICA(2, density="sech").loss(X, None, np.eye(2).ravel()))


def test_loss_is_minus_the_log_density_of_x():
    """−log q(x) = −log|det W| − Σ log p(w_a·x), with scipy's logistic for p."""
    W = random_unmixing(3, 1)
    X = laplace_rows(50, 3, seed=1)
    loss = ICA(3, density="sech").row_terms(X, None, W.ravel(), metric=None).loss
    ref = -np.log(abs(np.linalg.det(W))) - logistic.logpdf(X @ W.T).sum(axis=1)
    assert_allclose(loss, ref, rtol=1e-12)


def test_gradient_matches_finite_differences():
    d = 3
    X = laplace_rows(40, d, seed=2)
    model = ICA(d, sharpness=1.0)
    theta = random_unmixing(d, 2).ravel()
    grad = model.row_terms(X, None, theta, metric=None).grad.mean(axis=0)
    h = 1e-6
    fd = np.empty(d * d)
    for k in range(d * d):
        e = np.zeros(d * d)
        e[k] = h
        fd[k] = (model.loss(X, None, theta + e) - model.loss(X, None, theta - e)) / (2 * h)
    assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("metric", ["amari", "empirical", "loss-gradient"])
@pytest.mark.parametrize("structure", ["full", "diagonal", "block"])
def test_accumulate_matches_reference(metric, structure):
    d, n = 3, 50
    X = laplace_rows(n, d, seed=3)
    W = random_unmixing(d, 3)
    w = np.random.default_rng(0).random(n) * 2
    model = ICA(d, density="sech")
    r_loss, r_grad = reference_terms(X, W)
    ws = model.new_workspace(structure, n_threads=2)
    for weights in (None, w):
        wv = np.ones(n) if weights is None else weights
        loss, wsum = model.accumulate(X, None, weights, W.ravel(), metric=metric,
                                      structure=structure, ws=ws)
        assert_allclose(loss, wv @ r_loss, rtol=1e-10)
        assert_allclose(ws.grad, wv @ r_grad, rtol=1e-9, atol=1e-11)
        if metric == "amari":
            G = wv.sum() * np.kron(np.eye(d), np.linalg.inv(W.T @ W))
        else:
            G = (r_grad * wv[:, None]).T @ r_grad
            if structure == "block":
                mask = np.kron(np.eye(d), np.ones((d, d))).astype(bool)
                G = np.where(mask, G, 0.0)
        if structure == "diagonal":
            G = np.diag(G)
        assert_allclose(ws.fisher, G, rtol=1e-9, atol=1e-10)


# -- Amari's metric (eq. 43) ------------------------------------------------------------------


@pytest.mark.parametrize("structure", ["full", "block"])
def test_learner_natural_gradient_is_grad_times_wt_w(structure):
    """G⁻¹∇ = vec(mat(∇) WᵀW): the whitener built from the metric, and the first step
    (harmonic η = 1) of the learner, both equal Amari's rule.
    """
    d = 3
    W0 = random_unmixing(d, 5)
    X = laplace_rows(500, d, seed=5)
    model = ICA(d, density="sech")
    learner = NaturalGradientLearner(model, structure=structure, damping=0.0, floor=0.0,
                                     batch_size=500)
    learner.reset(W0.ravel())
    grad = model.row_terms(X, None, W0.ravel(), metric=None).grad.mean(axis=0)
    learner.step(X)
    amari = (grad.reshape(d, d) @ W0.T @ W0).ravel()
    assert_allclose(learner.whitener.natural_gradient(grad), amari, rtol=1e-10, atol=1e-12)
    assert_allclose(W0.ravel() - learner.theta, amari, rtol=1e-10, atol=1e-12)
    g = np.random.default_rng(1).standard_normal(d * d)
    assert_allclose(learner.whitener.natural_gradient(g), (g.reshape(d, d) @ W0.T @ W0).ravel(),
                    rtol=1e-10, atol=1e-12)


def test_amari_metric_is_invariant_under_right_multiplication():
    """Eq. 44: dθᵀ G(W) dθ = (dW Y)ᵀ G(W Y) (dW Y) for any non-singular Y."""
    d = 3
    rng = np.random.default_rng(4)
    W, dW, Y = random_unmixing(d, 4), rng.standard_normal((d, d)), random_unmixing(d, 9)
    model = ICA(d, density="sech")
    lhs = dW.ravel() @ model.amari_metric(W.ravel()) @ dW.ravel()
    rhs = (dW @ Y).ravel() @ model.amari_metric((W @ Y).ravel()) @ (dW @ Y).ravel()
    assert lhs == pytest.approx(rhs, rel=1e-10)
    assert model.param_groups()[1] == ("W[1]", 3, 6)


# -- source recovery ---------------------------------------------------------------------------


def _fastica_distance(X, A):
    from sklearn.decomposition import FastICA

    fast = FastICA(n_components=A.shape[0], whiten="unit-variance", random_state=0,
                   max_iter=1000, tol=1e-6).fit(X)
    return amari_distance(fast.components_ @ A)


def _two_phase_fit(model, X):
    """8 passes of Amari's rule with the η = √(b/t) schedule (separation), then 10 passes of
    the default harmonic step with the empirical metric (efficient convergence).
    """
    first = NaturalGradientLearner(model).fit((X,), epochs=8)  # ICA's default: sqrt
    assert first.options()["optimizer"]["schedule"] == "sqrt"
    second = NaturalGradientLearner(model, metric="empirical", step_schedule="harmonic")
    second.reset(first.theta)
    return second.fit((X,), epochs=10).theta


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recovers_laplace_sources_better_than_fastica(seed):
    """D = 4 Laplace sources, 20,000 rows, mixing condition number 10, prior sharpness β = 2:
    18 passes (see _two_phase_fit) reach an Amari distance of W A at most FastICA's (logcosh,
    unit-variance whitening) on every seed; measured ratios 0.61–0.99, mean 0.78.
    """
    p = task.true_params(4, seed)
    A = np.array(p["mixing"])
    X, _ = task.sample_chunk(p, np.random.default_rng(seed), 20_000)
    model = ICA(4, sharpness=2.0)
    ours = amari_distance(model.unmixing(_two_phase_fit(model, X)) @ A)
    assert ours <= _fastica_distance(X, A) + 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_logistic_prior_matches_fastica(seed):
    """With the logistic prior (ψ = tanh(s/2), FastICA's own nonlinearity up to scale) the ML
    estimate and FastICA are statistically equivalent (ratios 0.98–1.01 at the exact optimum);
    18 passes land within 5% of FastICA.
    """
    p = task.true_params(4, seed)
    A = np.array(p["mixing"])
    X, _ = task.sample_chunk(p, np.random.default_rng(seed), 20_000)
    model = ICA(4, density="sech")
    ours = amari_distance(model.unmixing(_two_phase_fit(model, X)) @ A)
    assert ours <= 1.05 * _fastica_distance(X, A)


def test_fit_is_equivariant_to_the_data_scale():
    """Amari's rule and the whitener scale exactly: data × 100 from W₀ = I/100 gives W/100
    (and the same source shapes, which do not depend on the data's units).
    """
    p = task.true_params(3, 0)
    X, _ = task.sample_chunk(p, np.random.default_rng(0), 5000)
    for density in ("sech", "adaptive"):
        W, shapes = [], []
        for k in (1.0, 100.0):
            model = ICA(3, init_scale=1 / k, density=density)
            learner = NaturalGradientLearner(model, step_schedule="sqrt")
            theta = learner.fit((X * k,), epochs=3).theta
            W.append(model.unmixing(theta) * k)
            shapes.append(theta[9:])
        assert_allclose(W[1], W[0], rtol=1e-7, atol=1e-9)
        assert_allclose(shapes[1], shapes[0], rtol=1e-7, atol=1e-9)


def test_amari_distance_reference_values():
    assert amari_distance(np.eye(3)) == 0.0
    assert amari_distance(np.array([[0, 2.0, 0], [0, 0, -3], [0.5, 0, 0]])) == 0.0
    # [[1, 1], [0, 1]]: rows (2/1 − 1) + 0, columns 0 + (2/1 − 1); / (2·2·1)
    assert amari_distance(np.array([[1.0, 1.0], [0.0, 1.0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="square"):
        amari_distance(np.ones((2, 3)))


# -- parameters, validation, data -------------------------------------------------------------


def test_initial_params_whiten_the_first_batch():
    """Adaptive density: the symmetric whitening C^{-1/2} of the batch's weighted covariance
    followed by the rotation R of the log-cosh contrast's fixed point (W C Wᵀ = I, R = W C^½
    orthogonal, and a further FastICA iteration leaves R's rows where they are), Gaussian
    shapes; sech: I/√(mean variance).
    """
    X = laplace_rows(400, 3, seed=4) * 30.0
    w = np.random.default_rng(4).random(400)
    model, sech = ICA(3), ICA(3, density="sech")
    for weights in (None, w):
        C = np.cov(X.T, aweights=weights, bias=True)
        theta0 = model.initial_params(X, None, weights)
        W0 = model.unmixing(theta0)
        assert_allclose(W0 @ C @ W0.T, np.eye(3), atol=1e-10)
        lam, V = np.linalg.eigh(C)
        K = (V / np.sqrt(lam)) @ V.T
        R = W0 @ np.linalg.inv(K)
        assert_allclose(R @ R.T, np.eye(3), atol=1e-10)
        p = np.ones(400) / 400 if weights is None else weights / weights.sum()
        Z = (X - p @ X) @ K.T
        g = np.tanh(Z @ R.T)  # one more fixed-point iteration, by hand
        R1 = (g * p[:, None]).T @ Z - (p @ (1 - g * g))[:, None] * R
        u, _, vt = np.linalg.svd(R1)
        assert_allclose(np.abs(np.sum((u @ vt) * R, axis=1)), 1.0, atol=1e-8)
        assert_allclose(model.shapes(theta0), 2.0, rtol=1e-14)
        v = np.mean(C.diagonal())
        assert_allclose(sech.unmixing(sech.initial_params(X, None, weights)),
                        np.eye(3) / np.sqrt(v), rtol=1e-10)
    assert ICA(3, init_scale=2.0).initial_params(X, None, None) is None
    assert model.initial_params(np.zeros((5, 3)), None, None) is None
    assert sech.initial_params(np.zeros((5, 3)), None, None) is None


def test_params_config_and_init():
    model = make_model("ica", 3, init_scale=0.5, sharpness=2.0)
    assert_allclose(model.unmixing(model.init_params()), 0.5 * np.eye(3))
    again = model_from_config(json.loads(json.dumps(model.config())))
    assert again.config() == model.config() and again.sharpness == 2.0
    assert model.density == "sech"  # sharpness implies the sech density
    W = random_unmixing(3, 0)
    assert model.params_to_dict(W.ravel()) == {"W": W.tolist()}
    assert ICA(3).config() == {"name": "ica", "n_features": 3, "density": "adaptive",
                               "location": True}
    theta0 = ICA(3).init_params()
    assert_allclose(theta0[:9], np.eye(3).ravel())
    assert_allclose(shape_ref(theta0[9:12]), 2.0, rtol=1e-14)  # Gaussian
    assert not theta0[12:].any()  # centred at 0
    theta = np.r_[W.ravel(), 0.0, -1.0, 2.0, 0.5, 0.0, -0.25]
    out = ICA(3).params_to_dict(theta)
    assert out["W"] == W.tolist() and out["mu"] == [0.5, 0.0, -0.25]
    assert_allclose(out["alpha"], shape_ref(np.array([0.0, -1.0, 2.0])), rtol=1e-14)
    # a run recorded before the adaptive density existed: no "density" key means sech
    legacy = model_from_config({"name": "ica", "n_features": 3})
    assert legacy.density == "sech" and legacy.n_params == 9
    assert model_from_config(ICA(3).config()).n_params == 15
    # one recorded before the locations existed: μ = 0, not in θ
    old_config = {"name": "ica", "n_features": 3, "density": "adaptive"}
    old = model_from_config(old_config)
    assert not old.location and old.n_params == 12
    assert old.config() == old_config  # (a resumed run's checkpoint must match it)
    assert set(old.params_to_dict(theta[:12])) == {"W", "alpha"}
    assert_allclose(old.locations(theta[:12]), 0.0)
    assert old.loss(np.eye(3), None, theta[:12]) == pytest.approx(
        ICA(3).loss(np.eye(3), None, np.r_[theta[:12], 0.0, 0.0, 0.0]), rel=1e-14)
    # the first pass's step scale: halved with learned locations only (LOCATED_LR)
    assert NaturalGradientLearner(ICA(3)).options()["optimizer"]["lr"] == 0.5
    for other in (old, legacy):
        assert NaturalGradientLearner(other).options()["optimizer"]["lr"] == 1.0


def test_bad_input_is_a_clear_error():
    model = ICA(2, density="sech")
    X = np.ones((4, 2))
    with pytest.raises(SingularUnmixingError, match="singular") as info:
        model.loss(X, None, np.array([1.0, 2.0, 2.0, 4.0]))
    assert isinstance(info.value, ValueError)
    with pytest.raises(SingularUnmixingError, match="non-finite"):
        model.loss(X, None, np.array([1.0, np.inf, 0.0, 1.0]))
    for bad in ({"init_scale": 0.0}, {"sharpness": -1.0}, {"sharpness": float("nan")}):
        with pytest.raises(ValueError, match="must be a finite number > 0"):
            ICA(2, **bad)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 2\)"):
        model.loss(np.ones((4, 3)), None, model.init_params())
    with pytest.raises(ValueError, match="no closed-form model Fisher"):
        model.model_fisher(X, model.init_params())
    with pytest.raises(ValueError, match="does not support metric 'model'"):
        NaturalGradientLearner(model, metric="model")
    with pytest.raises(ValueError, match="sharpness applies to density 'sech' only"):
        ICA(2, density="adaptive", sharpness=1.0)
    with pytest.raises(ValueError, match="density must be one of adaptive, sech"):
        ICA(2, density="laplace")
    with pytest.raises(ValueError, match=r"shape parameter is not finite"):
        ICA(2).loss(X, None, np.r_[np.eye(2).ravel(), 0.0, np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"source location is not finite"):
        ICA(2).loss(X, None, np.r_[np.eye(2).ravel(), 0.0, 0.0, np.inf, 0.0])
    with pytest.raises(ValueError, match="location applies to density 'adaptive' only"):
        ICA(2, density="sech", location=True)
    with pytest.raises(ValueError, match="location must be True or False"):
        ICA(2, location="yes")


def test_options_from_data_scale_and_centering_check(tmp_path):
    from natgrad_stream.data import as_source

    X, _ = task.sample_chunk(task.true_params(3, 1), np.random.default_rng(1), 6000)
    opts = ICA.options_from_data(None, as_source((X * 50.0,), y=None), {"density": "sech"})
    assert opts["init_scale"] == pytest.approx(1 / np.sqrt(np.mean((X[:4096] * 50).var(0))))
    assert opts["density"] == "sech"
    # the adaptive density starts from the learner's first batch (initial_params)
    assert ICA.options_from_data(None, as_source((X * 50.0,), y=None), {}) == {}
    with pytest.warns(RuntimeWarning, match="zero-mean data"):
        ICA.options_from_data(None, as_source((X + 3.0,), y=None), {})


def test_synthetic_task():
    p = task.true_params(5, 2)
    assert p == task.true_params(5, 2) and task.Y_DTYPE is None
    A = np.array(p["mixing"])
    assert np.sum(A * A) == pytest.approx(5.0) and np.linalg.cond(A) == pytest.approx(10.0)
    assert_allclose(task.extra_arrays(p)["A"], A)
    X, y = task.sample_chunk(p, np.random.default_rng(0), 100_000)
    assert y is None and X.shape == (100_000, 5)
    S = X @ np.linalg.inv(A).T
    assert np.abs(S.mean(axis=0)).max() < 0.02
    assert_allclose(S.var(axis=0), 1.0, atol=0.05)
    kurt = (S**4).mean(axis=0) / S.var(axis=0) ** 2 - 3
    assert np.all(np.abs(kurt - 3.0) < 0.6)  # Laplace: excess kurtosis 3


def test_evaluate_is_the_mean_log_likelihood():
    X = laplace_rows(3000, 3, seed=8)
    W = random_unmixing(3, 8)
    out = evaluate(ICA(3, density="sech"), W.ravel(), (X,), batch_size=700)
    assert set(out) == {"n", "log_likelihood"} and out["n"] == 3000
    ref = np.log(abs(np.linalg.det(W))) + logistic.logpdf(X @ W.T).sum(axis=1)
    assert_allclose(out["log_likelihood"], ref.mean(), rtol=1e-12)
    kappa, mu = np.array([-0.5, 0.3, 1.2]), np.array([0.2, 0.0, -0.7])
    out = evaluate(ICA(3), np.r_[W.ravel(), kappa, mu], (X,), batch_size=700)
    ref = reference_log_density(X @ W.T - mu, shape_ref(kappa)).sum(axis=1)
    assert_allclose(out["log_likelihood"], np.log(abs(np.linalg.det(W))) + ref.mean(),
                    rtol=1e-11)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, _ = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, json.loads(lines[-1]) if lines else None


def test_cli_round_trip(tmp_path, capsys):
    """make-data → fit (Amari metric, √ schedule, 20 passes) → evaluate → params; measured
    Amari distance of W A 0.016 (0.089 after 12 passes, 0.007 after 30).
    """
    data, run = tmp_path / "ica.zarr", tmp_path / "run"
    code, _ = _cli(capsys, "make-data", data, "--task", "ica", "--rows", 20_000, "--features",
                   3, "--chunk-rows", 4096, "--test-rows", 2000, "--seed", 3)
    assert code == 0
    g = zarr.open_group(str(data), mode="r")
    assert set(g.array_keys()) == {"X", "X_test", "A"}
    code, summary = _cli(capsys, "fit", data, "--model", "ica", "--out", run, "--epochs", 20,
                         "--step-schedule", "sqrt")
    assert code == 0 and summary["samples"] == 400_000
    code, ev = _cli(capsys, "evaluate", run, data, "--x", "X_test")
    code, params = _cli(capsys, "params", run)
    assert code == 0 and set(params) == {"W", "alpha", "mu"}
    W, alpha, mu = (np.array(params[k]) for k in ("W", "alpha", "mu"))
    assert amari_distance(W @ g["A"][...]) < 0.05
    assert np.all(alpha < 2.0)  # Laplace sources: super-Gaussian shapes
    Xt = g["X_test"][...].astype(np.float64)
    ref = (np.log(abs(np.linalg.det(W)))
           + reference_log_density(Xt @ W.T - mu, alpha).sum(axis=1))
    assert ev["n"] == 2000 and ev["log_likelihood"] == pytest.approx(ref.mean(), rel=1e-9)


def test_amari_rule_beats_steepest_descent_on_an_ill_conditioned_mixture():
    """Amari's WᵀW metric (eq. 43) against steepest descent on W over the same 10 passes of
    256-row batches, on mixtures whose mixing matrix has condition number 100. Steepest
    descent takes the best of seven constant steps (1e-3 … 1e3); the natural run uses the
    model's defaults but for streaming passes throughout (``refine="stream"``, the same
    kind of steps). Separation is the Amari distance of W A (0 = perfect). Measured:
    natural 0.005; steepest descent at best 0.26 (lr 10), 0.34–0.49 for the others.
    """
    d, n, passes = 3, 12_000, 10
    rng = np.random.default_rng(11)
    S = rng.laplace(size=(n, d)) / np.sqrt(2.0)
    Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = Q1 @ np.diag([1.0, 0.1, 1e-2]) @ Q2.T
    X = S @ A.T
    model = ICA(d)
    # both start from the symmetric whitening of the first batch (the contrast rotation of
    # the default start would already separate these mixtures: 0.036 for steepest descent)
    Xc = X[:256] - X[:256].mean(axis=0)
    lam, V = np.linalg.eigh(Xc.T @ Xc / 256)
    start = np.r_[((V / np.sqrt(lam)) @ V.T).ravel(), model.init_params()[d * d:]]
    # (lr 1: the step scale of Amari's rule alone; the default halves it for the locations)
    natural = NaturalGradientLearner(model, batch_size=256, refine="stream",
                                     lr=1.0).reset(start)
    natural.fit((X,), epochs=passes, shuffle=False)
    nat_dist = amari_distance(model.unmixing(natural.theta) @ A)

    ws = model.new_workspace("diagonal", n_threads=1)
    sd_dists = []
    for lr in 10.0 ** np.arange(-3, 4):
        theta = start.copy()
        try:
            for _ in range(passes):
                for a in range(0, n, 256):
                    _, wsum = model.accumulate(X[a:a + 256], None, None, theta, metric=None,
                                               structure="diagonal", ws=ws)
                    theta = theta - lr * ws.grad / wsum
            sd_dists.append(amari_distance(model.unmixing(theta) @ A))
        except (ValueError, FloatingPointError):
            sd_dists.append(np.inf)
    assert nat_dist < 0.02, nat_dist
    assert nat_dist < min(sd_dists) / 10, (nat_dist, sd_dists)


def test_cli_sharpness_option_reaches_the_model(tmp_path, capsys):
    """``fit --sharpness 2`` builds the model with that prior (recorded in the checkpoint);
    ICA's own default step schedule applies without ``--step-schedule``.
    """
    data, run = tmp_path / "ica.zarr", tmp_path / "run"
    _cli(capsys, "make-data", data, "--task", "ica", "--rows", 4096, "--features", 2,
         "--chunk-rows", 1024)
    code, _ = _cli(capsys, "fit", data, "--model", "ica", "--out", run, "--sharpness", 2)
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["sharpness"] == 2.0
    assert info["options"]["optimizer"]["schedule"] == "sqrt"


# -- the adaptive density ------------------------------------------------------------------------


def _adaptive_theta(d, seed):
    rng = np.random.default_rng(seed)
    kappa, mu = rng.uniform(-2.0, 2.0, d), rng.uniform(-0.5, 0.5, d)
    return np.r_[random_unmixing(d, seed).ravel(), kappa, mu]


@pytest.mark.parametrize("alpha", [1.0, 1.0 + 1e-9, 1.3, 2.0, 5.0, 50.0, 200.0])
def test_normalizer_matches_adaptive_quadrature(alpha):
    """Log Z, ∂log Z/∂α and the Fisher information Var_p[∂g/∂α] of the grid rule against
    SciPy's adaptive quadrature (α = 2: the Gaussian's log Z = log √(2π) − ε²/2 exactly).
    """
    eps = D.SMOOTHING

    def energy(s):
        return (s * s + eps * eps) ** (alpha / 2) / alpha

    def g_alpha(s):
        return energy(s) * (0.5 * math.log(s * s + eps * eps) - 1 / alpha)

    upper = (80 * alpha) ** (1 / alpha) + 1  # e^{−g} < e^{−80} beyond

    def integral(f):
        return 2 * quad(f, 0, upper, limit=500, epsabs=0, epsrel=1e-13)[0]

    z = integral(lambda s: math.exp(-energy(s)))
    mean = integral(lambda s: math.exp(-energy(s)) * g_alpha(s)) / z
    var = integral(lambda s: math.exp(-energy(s)) * (g_alpha(s) - mean) ** 2) / z
    log_z, dlog_z, fisher = D.normalizer([alpha])
    assert log_z[0] == pytest.approx(math.log(z), abs=1e-12)
    assert dlog_z[0] == pytest.approx(-mean, rel=1e-9, abs=1e-13)
    assert fisher[0] == pytest.approx(var, rel=1e-9, abs=1e-13)
    if alpha == 2.0:
        assert log_z[0] == pytest.approx(0.5 * math.log(2 * math.pi) - eps**2 / 2, abs=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n", [1, 37])
@pytest.mark.parametrize("location", [True, False])
def test_power_kernel_matches_reference(dtype, parallel, n, location):
    """Per-row loss and gradient (W, κ and, when learned, μ) of the adaptive density
    against NumPy; without locations in θ (runs recorded before them), μ = 0.
    """
    d = 3
    X = laplace_rows(n, d, seed=n, dtype=dtype)
    theta = _adaptive_theta(d, n)
    if not location:
        theta = theta[:d * d + d]
    model = ICA(d, location=location)
    W, Winv, logdet = model.factor(theta)
    kappa = theta[d * d:d * d + d]
    mu = theta[d * d + d:] if location else np.zeros(d)
    alpha = shape_ref(kappa)
    slope = 9 * np.sin(2 * kappa)
    log_z, dlog_z, _ = D.normalizer(alpha)
    loss, grad = np.empty(n), np.empty((n, model.n_params))
    kernel = K.ica_power_row_terms_parallel if parallel else K.ica_power_row_terms
    kernel(X, W, np.ascontiguousarray(Winv.T), logdet, alpha, mu, log_z, dlog_z, slope,
           D.SMOOTHING**2, loss, grad, np.empty((3 if parallel else 1, d)))
    U = X.astype(np.float64) @ W.T - mu
    r2 = U * U + D.SMOOTHING**2
    g = r2 ** (alpha / 2) / alpha
    psi = U * r2 ** (alpha / 2 - 1)
    r_loss = -logdet + (g + log_z).sum(axis=1)
    r_grad_W = psi[:, :, None] * X.astype(np.float64)[:, None, :] - Winv.T[None]
    r_grad_k = (g * (0.5 * np.log(r2) - 1 / alpha) + dlog_z) * slope
    parts = [r_grad_W.reshape(n, -1), r_grad_k] + ([-psi] if location else [])
    assert_allclose(loss, r_loss, rtol=1e-12)
    assert_allclose(grad, np.hstack(parts), rtol=1e-10, atol=1e-12)
    assert_allclose(K.ica_power_evaluate(X, W, logdet, alpha, mu, log_z, D.SMOOTHING**2),
                    r_loss.sum(), rtol=1e-12)


def test_adaptive_gradient_matches_finite_differences():
    d = 3
    X = laplace_rows(60, d, seed=4)
    model = ICA(d)
    theta = _adaptive_theta(d, 4)
    grad = model.row_terms(X, None, theta, metric=None).grad.mean(axis=0)
    h = 1e-6
    fd = np.array([(model.loss(X, None, theta + h * e) - model.loss(X, None, theta - h * e))
                   / (2 * h) for e in np.eye(theta.size)])
    # round-off of the central difference: |J| ε / h, with |J| up to 1e5 (sharp shapes)
    atol = 10 * abs(model.loss(X, None, theta)) * np.finfo(float).eps / h
    assert_allclose(grad, fd, rtol=1e-6, atol=atol)


def test_adaptive_metric_is_amari_and_the_shapes_fisher():
    """The ``amari`` metric with the adaptive density: Amari's block for W; for κ, the
    Fisher information of one source value, E_p[(∂ log p/∂κ)²] (by quadrature), plus the
    floor times that of α; for μ, E_p[(∂ log p/∂μ)²].
    """
    d = 3
    theta = _adaptive_theta(d, 6)
    model = ICA(d)
    G = model.amari_metric(theta)
    W = model.unmixing(theta)
    assert_allclose(G[:9, :9], np.kron(np.eye(d), np.linalg.inv(W.T @ W)), rtol=1e-10)
    assert not G[:9, 9:].any() and not G[9:, :9].any()
    assert not (G[9:12, 12:].any() or G[12:, 9:12].any())
    alpha = model.shapes(theta)
    for a in range(d):
        # E_p[(∂ log p/∂κ)²] by finite differences of log p in κ, integrated by quad
        def score(s, a=a):
            h = 1e-6
            kp, km = theta.copy(), theta.copy()
            kp[9 + a] += h
            km[9 + a] -= h
            up = model.log_prior(np.full((1, d), s), kp)[0, a]
            down = model.log_prior(np.full((1, d), s), km)[0, a]
            return (up - down) / (2 * h)

        dens = [math.exp(model.log_prior(np.full((1, d), s), theta)[0, a])
                for s in np.linspace(-1, 1, 3)]
        assert all(v > 0 for v in dens)
        mu = model.locations(theta)[a]
        fisher = quad(lambda s, a=a: math.exp(model.log_prior(np.full((1, d), s),
                                                              theta)[0, a]) * score(s) ** 2,
                      mu - 60, mu + 60, points=[mu], limit=200)[0]
        slope = 9 * math.sin(2 * theta[9 + a])  # dα/dκ
        # the Fisher information of κ, plus the floor times that of α (= it / slope²)
        assert G[9 + a, 9 + a] == pytest.approx(fisher * (1 + D.SHAPE_METRIC_FLOOR / slope**2),
                                                rel=1e-5)
        assert 1 < alpha[a] < 10

        def location_score(s, a=a):
            h = 1e-6
            return (model.log_prior(np.full((1, d), s), theta + h * np.eye(15)[12 + a])[0, a]
                    - model.log_prior(np.full((1, d), s), theta - h * np.eye(15)[12 + a])[0, a]
                    ) / (2 * h)

        fisher_mu = quad(lambda s, a=a: math.exp(model.log_prior(np.full((1, d), s),
                                                                 theta)[0, a])
                         * location_score(s) ** 2, mu - 60, mu + 60, points=[mu], limit=200)[0]
        assert G[12 + a, 12 + a] == pytest.approx(fisher_mu, rel=1e-5)


def test_adaptive_density_separates_sub_and_super_gaussian_sources():
    """Two uniform (sub-Gaussian) and two Laplace (super-Gaussian) sources, 20,000 rows: the
    logistic prior cannot separate the uniform pair, the default adaptive density does, at
    most FastICA's Amari distance, with shapes above 2 (sub) and below 2 (super); converged.
    Measured: adaptive 0.0045 (95 passes, shapes 10, 10, 1, 1), FastICA 0.0061, logistic 0.18.
    """
    rng = np.random.default_rng(11)
    n = 20_000
    S = np.column_stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n),
                         rng.laplace(size=n), rng.laplace(size=n)])
    S /= S.std(axis=0)
    A = rng.standard_normal((4, 4))
    X = S @ A.T
    X -= X.mean(axis=0)
    learner = NaturalGradientLearner(ICA(4))
    learner.fit((X,))
    model = learner.model
    ours = amari_distance(model.unmixing(learner.theta) @ A)
    assert learner.converged
    assert ours <= _fastica_distance(X, A)
    alpha = model.shapes(learner.theta)
    # the row of W that recovers source j
    which = np.argmax(np.abs(model.unmixing(learner.theta) @ A), axis=0)
    assert np.all(alpha[which[:2]] > 2.0) and np.all(alpha[which[2:]] < 2.0)
    logistic_fit = NaturalGradientLearner(ICA(4, density="sech")).fit((X,))
    assert amari_distance(logistic_fit.model.unmixing(logistic_fit.theta) @ A) > 0.05


def _random_sources(rng, n, kinds):
    make = {"u": lambda: rng.uniform(-1, 1, n), "l": lambda: rng.laplace(size=n),
            "b": lambda: rng.choice([-1.0, 1.0], n) + 0.3 * rng.standard_normal(n),
            "t": lambda: rng.standard_t(5, n), "g": lambda: rng.gamma(2.0, size=n)}
    S = np.column_stack([make[k]() for k in kinds])
    return (S - S.mean(axis=0)) / S.std(axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_default_fit_separates_random_mixtures(seed):
    """3–5 sources drawn from uniform, Laplace, bimodal (±1 + N(0, 0.3²)), Student-t(5) and
    skewed gamma(2), 20,000 rows, a random N(0, 1) mixing: the default fit converges and
    separates, within 1.5× FastICA's best ``fun`` (logcosh, exp, cube) and below 0.02.
    Measured: Amari 0.0042–0.0081, converged in 32–158 passes, ours/FastICA 0.62–1.42; with
    densities symmetric about 0 (no locations) the ratios were 0.67–2.0 (2.0 and 1.6 on
    mixtures with a gamma source, which fails here).
    """
    from sklearn.decomposition import FastICA

    rng = np.random.default_rng(100 + seed)
    kinds = ["u", "l", "b", "t", "g"]
    pick = [kinds[i] for i in rng.permutation(5)[: 3 + seed % 3]]
    S = _random_sources(rng, 20_000, pick)
    A = rng.standard_normal((S.shape[1],) * 2)
    X = S @ A.T
    learner = NaturalGradientLearner(ICA(S.shape[1]))
    learner.fit((X,))
    ours = amari_distance(learner.model.unmixing(learner.theta) @ A)
    best = min(amari_distance(FastICA(n_components=S.shape[1], fun=fun, whiten="unit-variance",
                                      max_iter=10_000, tol=1e-8, random_state=0)
                              .fit(X).components_ @ A)
               for fun in ("logcosh", "exp", "cube"))
    assert learner.converged
    assert ours < 0.02 and ours <= 1.5 * best


def test_default_fit_separates_a_mix_of_real_signals():
    """The panel's image mix (``scripts/model_panel.py``): the pixels of scikit-learn's
    china.jpg row by row (excess kurtosis 2.3), flower.jpg's in a seeded random order (0.4)
    and the digits' pixels (−1.05), mixed by A ~ N(0, 1). From the first batch's whitening
    alone the default fit ended at a local optimum separating one source of three (Amari
    0.234, loss 1e-3 above); from the contrast rotation it reaches the separating one. With
    symmetric densities centred at 0 that optimum's Amari distance was 0.00305, above
    FastICA's best ``fun`` (cube, 0.0025); with the learned locations, 0.0015.
    """
    from sklearn.datasets import load_digits, load_sample_images
    from sklearn.decomposition import FastICA

    imgs = load_sample_images().images
    gray = [im.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for im in imgs]
    digits = load_digits().data.ravel().astype(np.float64)
    n = digits.size
    rng = np.random.default_rng(17)
    S = np.column_stack([gray[0].ravel()[:n], rng.permutation(gray[1].ravel())[:n], digits])
    S = (S - S.mean(axis=0)) / S.std(axis=0)
    A = rng.standard_normal((3, 3))
    X = S @ A.T
    X -= X.mean(axis=0)
    model = ICA(3)
    lr = NaturalGradientLearner(model).fit((X,))
    assert lr.result.converged
    best = min(amari_distance(FastICA(n_components=3, fun=fun, whiten="unit-variance",
                                      max_iter=10_000, tol=1e-8, random_state=0)
                              .fit(X).components_ @ A)
               for fun in ("logcosh", "exp", "cube"))
    assert amari_distance(model.unmixing(lr.theta) @ A) <= best
