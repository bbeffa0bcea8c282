"""The Kronecker-factored structure for softmax (``structure="kronecker"``, issue 18): the
factor kernels against NumPy, the factors against the Fisher where it is a Kronecker
product, the whitener's maps and checkpoint, the fits it takes part in (the optimum of an
independent solver, train_loss equals evaluate for each later-pass method) and resume
equals uninterrupted.
"""

import json
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from natgrad_stream.checkpoint import load_checkpoint, save_checkpoint
from natgrad_stream.errors import OptionError
from natgrad_stream.geometry.fisher import RunningFisher
from natgrad_stream.geometry.kronecker import (
    KroneckerMetric,
    KroneckerWhitener,
    kron_apply,
    shrink_factors,
    tikhonov_factors,
    whiten_kronecker,
)
from natgrad_stream.geometry.lowrank import whitener_from_state
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from tests.test_cli import run_cli


def _softmax_data(n, d, K, seed, *, scale=0.7, offset=0.5):
    """Correlated, offset features and labels from a softmax model (reference class 0)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d)) + offset
    B = rng.standard_normal((d, K)) * scale / np.sqrt(d) * 3
    Z = X @ B
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    y = (P.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).astype(float)
    return X, np.minimum(y, K - 1)


def _reference_factors(X, y, w, theta, K, metric):
    """``(Σw x̃x̃ᵀ, Σw A_i, Σw)`` straight from the definitions."""
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    Z = np.hstack([np.zeros((n, 1)), Xt @ theta.reshape(K - 1, d + 1).T])
    P = np.exp(Z - Z.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    p = P[:, 1:]
    S = np.zeros((K - 1, K - 1))
    for i in range(n):
        if metric == "model":
            A = np.diag(p[i]) - np.outer(p[i], p[i])
        else:
            r = p[i].copy()
            if y[i] > 0:
                r[int(y[i]) - 1] -= 1.0
            A = np.outer(r, r)
        S += w[i] * A
    return (Xt * w[:, None]).T @ Xt, S, w.sum()


@pytest.mark.parametrize("metric", ["model", "empirical"])
@pytest.mark.parametrize("sparse", [False, True])
def test_factor_sums_equal_the_numpy_reference(metric, sparse):
    rng = np.random.default_rng(0)
    n, d, K = 300, 7, 4
    X, y = _softmax_data(n, d, K, 1)
    if sparse:
        X[rng.random(X.shape) < 0.7] = 0.0
    w = rng.uniform(0.2, 2.0, n)
    theta = rng.standard_normal((K - 1) * (d + 1)) * 0.4
    model = make_model("softmax", d, n_classes=K)
    F, S, wsum = model.kronecker_sums(sp.csr_matrix(X) if sparse else X, y, w, theta,
                                      metric=metric)
    Fr, Sr, wr = _reference_factors(X, y, w, theta, K, metric)
    assert_allclose(F, Fr, rtol=1e-12, atol=1e-12 * np.abs(Fr).max())
    assert_allclose(S, Sr, rtol=1e-12, atol=1e-12 * np.abs(Sr).max())
    assert wsum == pytest.approx(wr, rel=1e-14)
    # float32 rows, unit weights: the same sums of the rows as read
    F32, S32, n32 = model.kronecker_sums(X.astype(np.float32), y, None, theta, metric=metric)
    Fr, Sr, _ = _reference_factors(X.astype(np.float32).astype(np.float64), y, np.ones(n),
                                   theta, K, metric)
    assert_allclose(F32, Fr, rtol=1e-12, atol=1e-12 * np.abs(Fr).max())
    assert_allclose(S32, Sr, rtol=1e-12, atol=1e-12 * np.abs(Sr).max())
    assert n32 == n


def test_factors_are_the_fisher_where_the_class_weight_is_constant():
    """Coefficients zero (intercepts any): every row has the same p, so the model Fisher
    is exactly ``S ⊗ F``; with coefficients it is not, and the factors still keep the
    Fisher's scale (the two agree within a few times on every eigenvalue).
    """
    rng = np.random.default_rng(2)
    n, d, K = 400, 5, 4
    X, y = _softmax_data(n, d, K, 3)
    model = make_model("softmax", d, n_classes=K)
    theta = np.zeros(model.n_params)
    theta[list(model.center_indices)] = [0.3, -0.7, 1.1]
    F, S, wsum = model.kronecker_sums(X, y, None, theta, metric="model")
    G = model.model_fisher(X, theta)
    assert_allclose(np.kron(S / wsum, F / wsum), G, atol=1e-13 * np.abs(G).max())
    theta = rng.standard_normal(model.n_params) * 0.5
    F, S, wsum = model.kronecker_sums(X, y, None, theta, metric="model")
    G = model.model_fisher(X, theta)
    Gk = np.kron(S / wsum, F / wsum)
    assert np.abs(Gk - G).max() > 1e-4 * np.abs(G).max()  # (not the exact case)
    ratio = np.linalg.eigvalsh(np.linalg.solve(np.linalg.cholesky(Gk), np.linalg.solve(
        np.linalg.cholesky(Gk), G).T))
    assert 0.1 < ratio.min() and ratio.max() < 10


def test_kron_apply_and_the_whitener_maps():
    rng = np.random.default_rng(4)
    m, D = 3, 6
    L, R = rng.standard_normal((m, m)), rng.standard_normal((D, D))
    v, V = rng.standard_normal(m * D), rng.standard_normal((m * D, 5))
    assert_allclose(kron_apply(L, R, v), np.kron(L, R) @ v, atol=1e-12)
    assert_allclose(kron_apply(L, R, V), np.kron(L, R) @ V, atol=1e-12)
    Xf = rng.standard_normal((50, D - 1)) @ rng.standard_normal((D - 1, D - 1)) + 2.0
    Xt = np.hstack([Xf, np.ones((50, 1))])
    F = Xt.T @ Xt / 50
    Q = rng.standard_normal((m, m))
    S = Q @ Q.T + 0.1 * np.eye(m)
    for method in ("eigh", "ridge", "robust"):
        W = whiten_kronecker(KroneckerMetric(F, S), method=method, damping=0.0, floor=0.0)
        assert isinstance(W, KroneckerWhitener) and not W.diagonal
        theta = rng.standard_normal(m * D)
        assert_allclose(W.theta(W.phi(theta)), theta, rtol=1e-9, atol=1e-9)
        assert_allclose(W.phi(theta), W.matrix @ theta, rtol=1e-10, atol=1e-10)
        assert_allclose(W.grad_phi(theta), W.inverse.T @ theta, rtol=1e-9, atol=1e-9)
        if method != "robust":  # WᵀW = S ⊗ F without damping: the exact natural gradient
            assert_allclose(W.matrix.T @ W.matrix, np.kron(S, F), rtol=1e-8,
                            atol=1e-9 * np.abs(F).max())
            assert_allclose(W.natural_gradient(theta), np.linalg.solve(np.kron(S, F), theta),
                            rtol=1e-7)
    W = whiten_kronecker(KroneckerMetric(F, S), damping=1e-8, floor=1e-12)
    G = KroneckerMetric(F, S)
    # right after a refresh the metric in φ is I but for the damping
    assert W.drift(G, rng, probes=8) < 1e-3
    assert_allclose(W.metric_in_phi(G), np.eye(m * D), atol=1e-3)
    back = whitener_from_state(W.state_dict())
    assert isinstance(back, KroneckerWhitener)
    assert_array_equal(back.phi(theta), W.phi(theta))
    assert_array_equal(back.grad_phi(theta), W.grad_phi(theta))


def test_the_penalty_is_folded_in_from_above():
    """K-FAC's factored damping: ``S' ⊗ F' ⪰ S ⊗ F + λ I_S``, the intercepts unpenalized."""
    rng = np.random.default_rng(5)
    m, D, lam = 3, 5, 0.3
    A = rng.standard_normal((D, D))
    Q = rng.standard_normal((m, m))
    G = KroneckerMetric(A @ A.T, Q @ Q.T, lam)
    S2, F2 = tikhonov_factors(G)
    gap = np.kron(S2, F2) - G.dense()
    assert np.linalg.eigvalsh(gap).min() > -1e-12
    assert_allclose(G.matvec(np.eye(m * D)), G.dense(), atol=1e-12)
    assert_allclose(G.diagonal(), np.diag(G.dense()), atol=1e-12)
    penalized = np.flatnonzero(np.arange(m * D) % D != D - 1)
    assert_allclose(np.diag(G.dense() - np.kron(Q @ Q.T, A @ A.T))[penalized], lam)


def test_running_factors_checkpoint_and_merge(tmp_path):
    rng = np.random.default_rng(6)
    parts = [KroneckerMetric(rng.random((4, 4)), rng.random((2, 2)), 0.5) for _ in range(3)]
    f = RunningFisher(8, structure="kronecker", half_life=100.0, factors=(4, 2))
    for k, b in enumerate(parts):
        f.add(b, weight=10.0 + k, rows=10 + k)
    save_checkpoint(tmp_path / "f.npz", {"fisher": f.state_dict()})
    back = RunningFisher.from_state(load_checkpoint(tmp_path / "f.npz")["fisher"])
    a, b = f.estimate(), back.estimate()
    assert_array_equal(a.features, b.features)
    assert_array_equal(a.classes, b.classes)
    assert a.penalty == b.penalty and back.rows == f.rows
    plain = RunningFisher(8, structure="kronecker", half_life=None, factors=(4, 2))
    for b in parts:
        plain.add(b, weight=2.0, rows=2)
    merged = plain.merge(plain).estimate()
    assert_allclose(merged.features, sum(p.features for p in parts) / 6.0)
    assert_allclose(merged.classes, sum(p.classes for p in parts) / 6.0)
    with pytest.raises(ValueError, match="KroneckerMetric"):
        plain.add(np.zeros((4, 4)), weight=1.0, rows=1)


def test_shrinkage_is_for_each_factors_own_dimension():
    """A feature factor from fewer than 5·D rows is shrunk toward its centred diagonal;
    the class factor (m ≪ rows) is not.
    """
    rng = np.random.default_rng(7)
    D, m = 40, 3
    Xt = np.hstack([rng.standard_normal((60, D - 1)) + 1.0, np.ones((60, 1))])
    F = Xt.T @ Xt / 60
    Q = rng.standard_normal((m, m))
    G, rho = shrink_factors(KroneckerMetric(F.copy(), Q @ Q.T), 60.0)
    assert 0 < rho < 1
    assert_allclose(G.classes, Q @ Q.T)
    assert_allclose(np.diag(G.features), np.diag(F))
    G2, rho2 = shrink_factors(KroneckerMetric(F.copy(), Q @ Q.T), 10 * D)
    assert rho2 == 0.0
    assert_array_equal(G2.features, F)


def _objective(X, y, K, lam):
    """The penalized mean loss and its gradient in NumPy (independent of the kernels)."""
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    Y = np.eye(K)[y.astype(int)][:, 1:]

    def f(theta):
        T = theta.reshape(K - 1, d + 1)
        Z = np.hstack([np.zeros((n, 1)), Xt @ T.T])
        top = Z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(Z - top).sum(axis=1))
        P = np.exp(Z - lse[:, None])[:, 1:]
        J = np.mean(lse - (Z[:, 1:] * Y).sum(axis=1)) + 0.5 * lam * np.sum(T[:, :-1] ** 2)
        g = (P - Y).T @ Xt / n
        g[:, :-1] += lam * T[:, :-1]
        return J, g.reshape(-1)
    return f


@pytest.mark.parametrize("lam", [0.0, 1e-3])
@pytest.mark.parametrize("n, d, K", [(2000, 30, 5)])
def test_default_fit_reaches_the_optimum_of_an_independent_solver(lam, n, d, K):
    """Unpenalized: scikit-learn's multinomial ``LogisticRegression`` (the same loss; its
    symmetric parameterization differs only by a shift of the coefficients); penalized
    (scikit-learn's penalty takes K rows, ours K − 1): SciPy's L-BFGS on the objective in
    NumPy. The default fit's objective matches to 1e-6.
    """
    X, y = _softmax_data(n, d, K, 8)
    model = make_model("softmax", d, n_classes=K)
    lr = NaturalGradientLearner(model, structure="kronecker", l2=lam).fit((X, y))
    f = _objective(X, y, K, lam)
    if lam == 0.0:
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():  # (its line search's notes at round-off)
            warnings.simplefilter("ignore")
            ref = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12,
                                     max_iter=1000).fit(X, y)
        p = ref.predict_proba(X)
        best = float(np.mean(-np.log(p[np.arange(n), y.astype(int)])))
    else:
        res = scipy.optimize.minimize(f, np.zeros(model.n_params), jac=True,
                                      method="L-BFGS-B",
                                      options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-11})
        best = res.fun
    J = f(lr.theta)[0]
    assert lr.converged and lr.effective_options["refine"] == "newton-cg"
    assert abs(J - best) <= 1e-6 * best, (J, best)
    reported = lr.result.objective if lam else lr.result.train_loss
    assert reported == pytest.approx(J, rel=1e-10)


@pytest.fixture(scope="module")
def softmax_zarr(tmp_path_factory):
    from tests.conftest import write_group

    X, y = _softmax_data(3000, 12, 5, 9)
    path = tmp_path_factory.mktemp("kron") / "s.zarr"
    write_group(path, X=X.astype(np.float32), y=y)
    return path


@pytest.mark.parametrize("refine", ["newton-cg", "lbfgs"])
def test_default_fit_train_loss_equals_evaluate(softmax_zarr, tmp_path, capsys, refine):
    flags = ["--structure", "kronecker", "--classes", "5", "--l2", "1e-3"]
    if refine != "newton-cg":
        flags += ["--refine", refine]
    code, summary, _ = run_cli(capsys, "fit", softmax_zarr, "--model", "softmax", "--out",
                               tmp_path / "r", "--progress", "never", *flags)
    # (the L-BFGS hand-over whitens its rounds by the whole data's diagonal, as the
    # diagonal and low-rank structures' do: it need not converge within the 50 passes)
    assert code == 0 and (summary["converged"] is True or refine == "lbfgs")
    code, scores, _ = run_cli(capsys, "evaluate", tmp_path / "r", softmax_zarr)
    assert abs(scores["log_loss"] - summary["train_loss"]) <= 1e-12 * summary["train_loss"]
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())
    text = json.dumps(recorded)
    assert '"structure": "kronecker"' in text and f'"refine": "{refine}"' in text


@pytest.mark.parametrize("stop", [7 * 256, 9_000])
def test_resume_from_checkpoint_equals_uninterrupted(softmax_zarr, tmp_path, stop):
    kw = dict(structure="kronecker", batch_size=256, seed=11, l2=1e-3)
    model = make_model("softmax", 12, n_classes=5)
    whole = NaturalGradientLearner(model, **kw).fit(softmax_zarr, epochs=3)
    part = NaturalGradientLearner(model, **kw)
    part.fit(softmax_zarr, epochs=3, max_samples=stop)
    assert part.result.interrupted
    save_checkpoint(tmp_path / "c.npz", part.state_dict())
    resumed = NaturalGradientLearner.from_state_dict(load_checkpoint(tmp_path / "c.npz"))
    resumed.fit(softmax_zarr, epochs=3)
    assert resumed.samples == whole.samples
    assert_array_equal(resumed.theta, whole.theta)
    assert resumed.rewhitens == whole.rewhitens
    assert resumed.result.train_loss == whole.result.train_loss


def test_sparse_rows_reach_the_dense_rows_optimum():
    """CSR batches take the sparse factor kernel (and the diagonal's evidence prior, so
    another path): the default fit ends at the same optimum as on the dense rows.
    """
    X, y = _softmax_data(1500, 10, 4, 10)
    X[np.random.default_rng(0).random(X.shape) < 0.6] = 0.0
    model = make_model("softmax", 10, n_classes=4)
    kw = dict(structure="kronecker", batch_size=256, l2=1e-3)
    dense = NaturalGradientLearner(model, **kw).fit((X, y))
    sparse = NaturalGradientLearner(model, **kw).fit((sp.csr_matrix(X), y))
    assert isinstance(sparse.whitener, KroneckerWhitener) and sparse.converged
    assert sparse.result.objective == pytest.approx(dense.result.objective, rel=1e-9)


def test_kronecker_is_refused_beyond_softmax(small_zarr, tmp_path, capsys):
    with pytest.raises(OptionError, match="applies to the softmax model"):
        NaturalGradientLearner(make_model("logistic", 3), structure="kronecker")
    code, _, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--structure",
                           "kronecker", "--out", tmp_path / "r", "--progress", "never")
    assert code == 2 and err.count("\n") == 1 and "applies to the softmax model" in err


def test_structure_auto_keeps_lowrank_for_wide_dense_softmax(monkeypatch):
    """The thresholds scaled down: softmax beyond the full metric takes lowrank on dense
    rows and the diagonal on sparse rows, as the GLMs do; the Kronecker factors only when
    asked for (their one pass ended further from the optimum than lowrank's, measured in
    scripts/results/kronecker.md).
    """
    from natgrad_stream.training import options as opts

    monkeypatch.setattr(opts, "AUTO_FULL_MAX_PARAMS", 10)
    monkeypatch.setattr(opts, "AUTO_FULL_HESSIAN_MAX_PARAMS", 20)
    model = make_model("softmax", 8, n_classes=3)  # P = 18
    assert opts.auto_structure(model) == "diagonal"
    # (the full metric where it is the Hessian and the rows are many: 20 per parameter)
    assert opts.auto_structure_for_data(model, 20 * 18, sparse=False) == "full"
    assert opts.auto_structure_for_data(model, 20 * 18 - 1, sparse=False) == "lowrank"
    assert opts.auto_structure_for_data(model, 300, sparse=True) == "diagonal"
    assert opts.auto_structure_for_data(make_model("logistic", 25), 10**6,
                                        sparse=False) == "lowrank"
    X, y = _softmax_data(300, 8, 3, 12)
    given = NaturalGradientLearner(model, structure="kronecker").fit((X, y), epochs=3)
    assert given.structure == "kronecker" and given.options()["structure"] == "kronecker"
    assert given.effective_options["refine"] == "newton-cg"


def test_the_estimator_takes_the_kronecker_structure():
    from natgrad_stream.sklearn import NaturalGradientClassifier

    X, y = _softmax_data(1500, 10, 4, 3)
    est = NaturalGradientClassifier(structure="kronecker", C=1.0).fit(X, y.astype(int))
    assert est.learner_.structure == "kronecker" and est.converged_
    assert isinstance(est.learner_.whitener, KroneckerWhitener)
