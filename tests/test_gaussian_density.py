"""The full Gaussian density N(μ, Σ): kernels against slow NumPy/SciPy references, the
closed-form Fisher against a finite-difference Hessian and Monte Carlo scores, and the
learner against the closed-form maximum-likelihood estimate.
"""

import json

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose
from scipy.stats import multivariate_normal

from natgrad_stream.app.cli import main
from natgrad_stream.data.synthetic import gaussian as task
from natgrad_stream.evaluate import evaluate
from natgrad_stream.learner import Callback, NaturalGradientLearner, NumericalError
from natgrad_stream.models import Model, make_model, model_from_config
from natgrad_stream.models import _gaussian_density_kernels as K
from natgrad_stream.models.gaussian import Gaussian, NotPositiveDefiniteError, unvech, vech

# -- slow references ----------------------------------------------------------------------


def duplication(d):
    """The duplication matrix D (d², d(d+1)/2): vec(S) = D vech(S), vech row by row."""
    pairs = [(i, j) for i in range(d) for j in range(i + 1)]
    D = np.zeros((d * d, len(pairs)))
    for k, (i, j) in enumerate(pairs):
        D[i * d + j, k] = 1.0
        D[j * d + i, k] = 1.0
    return D


def reference_terms(X, mu, S):
    """Per-row loss, loss gradient and energy gradient, row by row in NumPy."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    D = duplication(d)
    Lam = np.linalg.inv(S)
    const = 0.5 * np.linalg.slogdet(2 * np.pi * S)[1]
    loss, grad, energy = np.empty(n), [], []
    for i in range(n):
        r = X[i] - mu
        u = Lam @ r
        loss[i] = 0.5 * r @ u + const
        dS = 0.5 * (Lam - np.outer(u, u))  # ∂loss/∂Σ as a symmetric matrix
        grad.append(np.r_[-u, D.T @ dS.ravel()])
        energy.append(np.r_[-u, D.T @ (-0.5 * np.outer(u, u)).ravel()])
    return loss, np.array(grad), np.array(energy)


def reference_fisher(S):
    """Σ⁻¹ ⊕ ½ Dᵀ(Σ⁻¹ ⊗ Σ⁻¹)D, built with an explicit Kronecker product."""
    d = S.shape[0]
    Lam = np.linalg.inv(S)
    D = duplication(d)
    cov = 0.5 * D.T @ np.kron(Lam, Lam) @ D
    P = d + D.shape[1]
    G = np.zeros((P, P))
    G[:d, :d] = Lam
    G[d:, d:] = cov
    return G


def random_params(d, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((d, d)) * np.geomspace(0.2, 3.0, d)
    return rng.standard_normal(d), B @ B.T + 0.1 * np.eye(d)


def data(n, d, seed, dtype=np.float64):
    mu, S = random_params(d, seed)
    rng = np.random.default_rng(seed + 100)
    X = mu + rng.standard_normal((n, d)) @ np.linalg.cholesky(S).T * 1.3 + 0.2
    return X.astype(dtype), mu, S


# -- kernels ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n", [1, 37])
def test_row_kernel_matches_reference(dtype, parallel, n):
    d = 4
    X, mu, S = data(n, d, seed=n, dtype=dtype)
    model = Gaussian(d)
    _, prec, const = model.factor(model.pack(mu, S))
    P = model.n_params
    loss, grad, energy = np.empty(n), np.empty((n, P)), np.empty((n, 1, P))
    kernel = K.gaussian_row_terms_parallel if parallel else K.gaussian_row_terms
    kernel(X, mu, prec, const, True, loss, grad, energy, np.empty((3 if parallel else 1, d)))
    r_loss, r_grad, r_energy = reference_terms(X, mu, S)
    assert_allclose(loss, r_loss, rtol=1e-10)
    assert_allclose(grad, r_grad, rtol=1e-9, atol=1e-12)
    assert_allclose(energy[:, 0, :], r_energy, rtol=1e-9, atol=1e-12)
    assert_allclose(K.gaussian_evaluate(X, mu, prec, const), r_loss.sum(), rtol=1e-10)


def test_loss_is_scipy_negative_log_density():
    X, mu, S = data(50, 3, seed=1)
    model = Gaussian(3)
    loss = model.row_terms(X, None, model.pack(mu, S), metric=None).loss
    assert_allclose(loss, -multivariate_normal(mu, S).logpdf(X), rtol=1e-12)


@pytest.mark.parametrize("metric", ["model", "empirical", "loss-gradient", "energy"])
@pytest.mark.parametrize("structure", ["full", "diagonal", "block"])
def test_accumulate_matches_reference(metric, structure):
    d, n = 3, 60
    X, mu, S = data(n, d, seed=7)
    w = np.random.default_rng(0).random(n) * 2
    model = Gaussian(d)
    theta = model.pack(mu, S)
    r_loss, r_grad, r_energy = reference_terms(X, mu, S)
    ws = model.new_workspace(structure, n_threads=2)
    for weights in (None, w):
        wv = np.ones(n) if weights is None else weights
        loss, wsum = model.accumulate(X, None, weights, theta, metric=metric,
                                      structure=structure, ws=ws)
        assert_allclose(loss, wv @ r_loss, rtol=1e-10)
        assert_allclose(wsum, wv.sum(), rtol=1e-12)
        assert_allclose(ws.grad, wv @ r_grad, rtol=1e-9, atol=1e-11)
        if metric == "model":
            G = wv.sum() * reference_fisher(S)
        else:
            U = r_energy if metric == "energy" else r_grad
            G = (U * wv[:, None]).T @ U
        if structure == "diagonal":
            G = np.diag(G)
        elif structure == "block":
            G[:d, d:] = 0.0
            G[d:, :d] = 0.0
        assert_allclose(ws.fisher, G, rtol=1e-9, atol=1e-10)


def test_energy_metric_is_the_outer_product_of_energy_gradients():
    """Eq. 33 by direct NumPy: E = ½ (x−μ)ᵀΣ⁻¹(x−μ), ∂E/∂Σ_ij by central differences."""
    d = 3
    X, mu, S = data(40, d, seed=3)
    model = Gaussian(d)
    theta = model.pack(mu, S)

    def energy(th):
        m, C = th[:d], unvech(th[d:], d)
        R = X - m
        return 0.5 * np.einsum("ij,ij->i", R, np.linalg.solve(C, R.T).T)

    h = 1e-6
    dE = np.empty((X.shape[0], model.n_params))
    for k in range(model.n_params):
        e = np.zeros(model.n_params)
        e[k] = h
        dE[:, k] = (energy(theta + e) - energy(theta - e)) / (2 * h)
    G = model.batch_metric(X, None, theta, metric="energy")
    assert_allclose(G, dE.T @ dE / X.shape[0], rtol=1e-6, atol=1e-8)


def test_gradient_matches_finite_differences():
    d = 3
    X, mu, S = data(30, d, seed=5)
    model = Gaussian(d)
    theta = model.pack(mu, S)
    grad = model.row_terms(X, None, theta, metric=None).grad.sum(axis=0)
    h = 1e-6
    fd = np.empty(model.n_params)
    for k in range(model.n_params):
        e = np.zeros(model.n_params)
        e[k] = h
        fd[k] = (model.loss(X, None, theta + e) - model.loss(X, None, theta - e)) / (2 * h)
    assert_allclose(grad / X.shape[0], fd, rtol=1e-6, atol=1e-8)


def test_fisher_kernel_matches_the_kronecker_form():
    for d in (1, 2, 5):
        _, S = random_params(d, d)
        model = Gaussian(d)
        G = model.model_fisher(None, model.pack(np.zeros(d), S))
        assert_allclose(G, reference_fisher(S), rtol=1e-10, atol=1e-12)
        assert_allclose(G, G.T, rtol=0, atol=0)


def test_model_fisher_is_the_hessian_of_the_expected_nll():
    """At θ*, the Hessian of ⟨−log q(x; θ)⟩_{x ~ q(θ*)} (closed form in θ) is the Fisher."""
    d = 3
    mu0, S0 = random_params(d, 11)
    model = Gaussian(d)
    theta0 = model.pack(mu0, S0)

    def expected_nll(th):
        m, C = th[:d], unvech(th[d:], d)
        r = m - mu0
        return 0.5 * (np.linalg.slogdet(2 * np.pi * C)[1] + np.trace(np.linalg.solve(C, S0))
                      + r @ np.linalg.solve(C, r))

    P, h = model.n_params, 1e-4
    H = np.empty((P, P))
    for a in range(P):
        for b in range(P):
            ea, eb = np.zeros(P), np.zeros(P)
            ea[a], eb[b] = h, h
            H[a, b] = (expected_nll(theta0 + ea + eb) - expected_nll(theta0 + ea - eb)
                       - expected_nll(theta0 - ea + eb)
                       + expected_nll(theta0 - ea - eb)) / (4 * h * h)
    assert_allclose(model.model_fisher(None, theta0), H, rtol=1e-5, atol=1e-6)


def test_model_fisher_matches_monte_carlo_score_outer_products():
    """Eq. 30 by sampling x from the model: ⟨s sᵀ⟩ → G, within a few Monte Carlo errors."""
    d, n = 2, 200_000
    mu0, S0 = random_params(d, 4)
    model = Gaussian(d)
    theta0 = model.pack(mu0, S0)
    X = model.sample(theta0, np.random.default_rng(0), n)
    scores = model.scores(X, None, theta0)
    G_mc = scores.T @ scores / n
    G = model.model_fisher(None, theta0)
    # standard error of each entry of the Monte Carlo mean
    se = np.sqrt(((scores[:, :, None] * scores[:, None, :] - G_mc) ** 2).mean(axis=0) / n)
    assert np.all(np.abs(G_mc - G) < 5 * se + 1e-12)
    assert np.abs(scores.mean(axis=0)).max() < 5 * scores.std(axis=0).max() / np.sqrt(n)
    # the empirical metric over model samples is the same Monte Carlo estimate
    assert_allclose(model.batch_metric(X, None, theta0, metric="empirical"), G_mc, rtol=1e-9)


def test_fisher_is_exactly_block_diagonal_over_mean_and_cov():
    model = Gaussian(4)
    assert model.param_groups() == [("mean", 0, 4), ("cov", 4, 14)]
    G = model.model_fisher(None, model.pack(*random_params(4, 2)))
    assert not G[:4, 4:].any() and not G[4:, :4].any()
    assert np.all(np.linalg.eigvalsh(G) > 0)


# -- parameters, validation ---------------------------------------------------------------


def test_layout_round_trips_and_params_to_dict():
    mu, S = random_params(3, 0)
    model = Gaussian(3)
    theta = model.pack(mu, S)
    assert theta.shape == (3 + 6,)
    assert_allclose(theta[3:], [S[0, 0], S[1, 0], S[1, 1], S[2, 0], S[2, 1], S[2, 2]])
    m2, S2 = model.unpack(theta)
    assert_allclose(m2, mu) and assert_allclose(S2, S)
    out = model.params_to_dict(theta)
    assert set(out) == {"mean", "cov"}
    assert_allclose(out["cov"], S) and json.dumps(out)
    assert_allclose(vech(unvech(theta[3:], 3)), theta[3:])
    assert_allclose(model.init_params(), model.pack(np.zeros(3), np.eye(3)))


def test_config_rebuilds_the_model_with_its_initial_values():
    X, _, _ = data(500, 3, seed=2)
    model = make_model("gaussian", 3, **Gaussian.init_from_sample(X))
    assert_allclose(model.unpack(model.init_params())[1], np.cov(X.T, bias=True))
    again = model_from_config(json.loads(json.dumps(model.config())))
    assert_allclose(again.init_params(), model.init_params(), rtol=0, atol=0)
    # fewer rows than features: a singular sample covariance is ridged to positive definite
    tiny = Gaussian.init_from_sample(X[:2])
    assert np.linalg.eigvalsh(np.array(tiny["init_cov"]))[0] > 0


def test_non_positive_definite_covariance_is_a_clear_error():
    model = Gaussian(2)
    X = np.zeros((5, 2))
    bad = model.pack([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])  # eigenvalues −1 and 3
    ws = model.new_workspace("block")
    for call in (lambda: model.accumulate(X, None, None, bad, metric="model", structure="block",
                                          ws=ws),
                 lambda: model.evaluation_sums(X, None, bad),
                 lambda: model.check_params(bad)):
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite") as info:
            call()
        assert isinstance(info.value, ValueError) and "-1" in str(info.value)
    with pytest.raises(NotPositiveDefiniteError, match="non-finite"):
        model.check_params(np.r_[np.nan, 0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="init_cov"):
        Gaussian(2, init_cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"init_cov must have shape \(2, 2\)"):
        Gaussian(2, init_cov=np.eye(3))
    with pytest.raises(ValueError, match=r"X must have shape \(n, 2\)"):
        model.loss(np.zeros((4, 3)), None, model.init_params())
    with pytest.raises(TypeError, match="float32 or float64"):
        model.loss(np.zeros((4, 2), dtype=np.int64), None, model.init_params())
    with pytest.raises(ValueError, match="does not support metric 'gauss-newton'"):
        NaturalGradientLearner(model, metric="gauss-newton")


# -- learning -----------------------------------------------------------------------------


class _Track(Callback):
    """Smallest eigenvalue of S^-½ Σ S^-½ over a run (S: the MLE covariance)."""

    def __init__(self, S):
        self.Wc = np.linalg.inv(np.linalg.cholesky(S))
        self.lowest = np.inf

    def on_batch_end(self, learner, info, cursor):
        _, cov = learner.model.unpack(learner.theta)
        self.lowest = min(self.lowest, np.linalg.eigvalsh(self.Wc @ cov @ self.Wc.T)[0])


def _mle_errors(model, theta, X):
    """Mahalanobis error of the mean and relative Frobenius error of Σ, in MLE units."""
    mu, S = X.mean(axis=0), np.cov(X.T, bias=True)
    Wc = np.linalg.inv(np.linalg.cholesky(S))
    mean, cov = model.unpack(theta)
    return (np.linalg.norm(Wc @ (mean - mu)),
            np.linalg.norm(Wc @ cov @ Wc.T - np.eye(X.shape[1])))


@pytest.fixture(scope="module")
def gaussian_rows():
    """20,000 rows of the synthetic task, d = 5: condition number ~2e4, means up to ~8 sd."""
    params = task.true_params(5, 0)
    X, _ = task.sample_chunk(params, np.random.default_rng([0, 1]), 20_000)
    return X


@pytest.mark.parametrize("structure", ["full", "block"])
def test_default_learner_reaches_the_closed_form_mle(gaussian_rows, structure):
    """Default SGD with the harmonic step and the model Fisher, started at the mean and
    covariance of the first batch: one pass lands within 1e-3 (Mahalanobis, mean) and 5e-3
    (relative Frobenius, Σ) of the MLE, a tenth or less of its own sampling error
    √(d/n) ≈ 0.016; the next passes' (verified) step at least halves the error. Σ stays
    positive definite throughout (its smallest eigenvalue in MLE units never falls below
    0.5).
    """
    X = gaussian_rows
    S = np.cov(X.T, bias=True)
    assert np.linalg.cond(S) > 1e3 and np.max(np.abs(X.mean(0)) / np.sqrt(np.diag(S))) > 3
    model = Gaussian(5, **Gaussian.init_from_sample(X[:1024]))
    learner = NaturalGradientLearner(model, structure=structure)
    track = _Track(S)
    learner.fit((X,), epochs=1, callbacks=[track])
    e_mean, e_cov = _mle_errors(model, learner.theta, X)
    assert e_mean < 1e-3 and e_cov < 5e-3
    mle_nll = -multivariate_normal(X.mean(0), S).logpdf(X).mean()
    assert 0 <= model.loss(X, None, learner.theta) - mle_nll < 1e-5
    # the second pass measures θ and takes a Fisher-scoring step, which the fit reports
    # once the third pass has measured it (a run never returns an unmeasured step)
    learner.fit((X,), epochs=3, callbacks=[track])
    e2_mean, e2_cov = _mle_errors(model, learner.theta, X)
    assert e2_mean < 0.7 * e_mean and e2_cov < 0.7 * e_cov
    assert track.lowest > 0.5


def test_block_and_full_structures_take_the_same_steps(gaussian_rows):
    """The closed-form Fisher is exactly block-diagonal, so both structures whiten alike."""
    X = gaussian_rows[:8192]
    thetas = []
    for structure in ("full", "block"):
        model = Gaussian(5, **Gaussian.init_from_sample(X[:1024]))
        thetas.append(NaturalGradientLearner(model, structure=structure).fit((X,)).theta)
    assert_allclose(thetas[0], thetas[1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [2, 8])
def test_covariance_stays_positive_definite_with_default_settings(d, seed):
    """SGD, harmonic step, model Fisher, block structure, first-batch start: no step leaves
    the cone (the smallest eigenvalue of Σ in MLE units stays above 0.5).
    """
    X, _ = task.sample_chunk(task.true_params(d, seed), np.random.default_rng(seed), 10_000)
    track = _Track(np.cov(X.T, bias=True))
    model = Gaussian(d, **Gaussian.init_from_sample(X[:1024]))
    NaturalGradientLearner(model, structure="block").fit((X,), epochs=2, callbacks=[track])
    assert track.lowest > 0.5


@pytest.mark.parametrize(("d", "seed"), [(3, 2), (5, 0)])
def test_far_start_either_converges_or_stops_with_a_clear_error(d, seed):
    """From μ = 0, Σ = I (forced with theta0) on data far from 0, the first step (η = 1) sets
    Σ to the scatter about 0, C + x̄x̄ᵀ; while Σ shrinks back the lagging whitener can step out
    of the cone (measured: at step 13 for d = 3, seed 2). The learner must then reject that
    step (NumericalError caused by NotPositiveDefiniteError) and keep the last valid θ,
    rather than produce numbers from an invalid Σ.
    """
    X, _ = task.sample_chunk(task.true_params(d, seed), np.random.default_rng(seed), 20_000)
    model = Gaussian(d)
    learner = NaturalGradientLearner(model, structure="block")
    learner.reset(model.init_params())
    try:
        learner.fit((X,), epochs=1)
    except NumericalError as exc:
        assert isinstance(exc.__cause__, NotPositiveDefiniteError)
        assert "not positive definite" in str(exc) and learner.steps > 1
        model.check_params(learner.theta)  # the kept θ is valid
    else:
        model.check_params(learner.theta)
        assert np.isfinite(model.loss(X, None, learner.theta))


def test_initial_params_are_the_weighted_mean_and_covariance_of_the_batch():
    X, _, _ = data(300, 3, seed=6)
    w = np.random.default_rng(6).random(300)
    model = Gaussian(3)
    for weights in (None, w):
        mean, cov = model.unpack(model.initial_params(X, None, weights))
        assert_allclose(mean, np.average(X, axis=0, weights=weights), rtol=1e-12)
        assert_allclose(cov, np.cov(X.T, aweights=weights, bias=True), rtol=1e-10)
    assert Gaussian(3, init_mean=np.ones(3)).initial_params(X, None, None) is None
    with pytest.raises(ValueError, match="weights"):
        Gaussian.init_from_sample(X, -w)


@pytest.mark.skipif(not hasattr(Model, "initial_params"),
                    reason="the learner has no data-informed start (Model.initial_params)")
def test_default_learner_from_a_default_model_reaches_the_mle(gaussian_rows):
    """NaturalGradientLearner(Gaussian(d)).fit(X): the learner starts at the first batch's
    mean and covariance (Gaussian.initial_params), so the all-defaults run lands within the
    same tolerances as a start from Gaussian.init_from_sample.
    """
    model = Gaussian(5)
    learner = NaturalGradientLearner(model).fit((gaussian_rows,), epochs=1)
    e_mean, e_cov = _mle_errors(model, learner.theta, gaussian_rows)
    assert e_mean < 1e-3 and e_cov < 5e-3


def test_evaluate_is_the_mean_nll(gaussian_rows):
    X = gaussian_rows[:3000]
    model = Gaussian(5)
    theta = model.pack(X.mean(0), np.cov(X.T))
    out = evaluate(model, theta, (X,), batch_size=700)
    assert set(out) == {"n", "nll"} and out["n"] == 3000
    assert_allclose(out["nll"], -multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(X).mean(),
                    rtol=1e-12)


# -- synthetic task and command line --------------------------------------------------------


def test_synthetic_task_is_ill_conditioned_offset_and_reproducible():
    p = task.true_params(6, 3)
    assert p == task.true_params(6, 3) and task.Y_DTYPE is None
    mean, cov = np.array(p["mean"]), np.array(p["cov"])
    assert_allclose(cov, cov.T) and np.linalg.cond(cov) > 1e3
    assert np.all(np.abs(mean) >= 0.5 * np.sqrt(np.diag(cov)))
    X, y = task.sample_chunk(p, np.random.default_rng(0), 200_000)
    assert y is None and X.shape == (200_000, 6)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(X.mean(0) - mean) < 5 * sd / np.sqrt(200_000))
    assert_allclose(np.corrcoef(X.T), cov / np.outer(sd, sd), atol=0.02)
    with pytest.raises(ValueError, match="features"):
        task.true_params(0, 1)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, _ = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, json.loads(lines[-1]) if lines else None


def test_cli_round_trip(tmp_path, capsys):
    data, run = tmp_path / "g.zarr", tmp_path / "run"
    code, _ = _cli(capsys, "make-data", data, "--task", "gaussian", "--rows", 8000,
                   "--features", 3, "--chunk-rows", 2000, "--test-rows", 1000, "--seed", 4)
    assert code == 0
    g = zarr.open_group(str(data), mode="r")
    assert set(g.array_keys()) == {"X", "X_test"}
    code, summary = _cli(capsys, "fit", data, "--model", "gaussian", "--out", run,
                         "--epochs", 2, "--structure", "block")
    assert code == 0 and summary["samples"] == 16_000
    code, ev = _cli(capsys, "evaluate", run, data, "--x", "X_test")
    Xt = g["X_test"][...].astype(np.float64)
    code, params = _cli(capsys, "params", run)
    assert code == 0 and set(params) == {"mean", "cov"}
    assert ev["n"] == 1000
    assert_allclose(ev["nll"], -multivariate_normal(params["mean"], params["cov"]).logpdf(Xt)
                    .mean(), rtol=1e-9)
    X = g["X"][...].astype(np.float64)
    model = Gaussian(3)
    e_mean, e_cov = _mle_errors(model, model.pack(params["mean"], params["cov"]), X)
    assert e_mean < 2e-3 and e_cov < 1e-2
