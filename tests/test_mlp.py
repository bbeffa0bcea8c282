"""The one-hidden-layer least-squares network (``mlp``) with the Gauss–Newton metric.

Checked against independent references: a NumPy forward pass and hand-written Jacobian,
central finite differences (gradient, Jacobian, and the Hessian of the loss, which equals
the Gauss–Newton metric at a zero-residual point), sampling, and tuned SGD/Adam baselines.
"""

import json
import math
import warnings

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose, assert_array_equal

from natgrad_stream.app.cli import main
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.data.synthetic import mlp as task
from natgrad_stream.evaluate import evaluate
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import _mlp_kernels as K
from natgrad_stream.models import make_model, model_from_config
from natgrad_stream.models.mlp import RECOMMENDED_LEARNER_OPTIONS, MLPRegressor


# -- slow NumPy references -------------------------------------------------------------
def ref_split(theta, H, d):
    """``W1`` (H, d), ``b1``, ``w2``, ``b2`` from the documented layout."""
    theta = np.asarray(theta, dtype=np.float64)
    return (theta[:H * d].reshape(H, d), theta[H * d:H * d + H],
            theta[H * d + H:H * d + 2 * H], theta[-1])


def ref_forward(X, theta, H):
    """Network outputs, shape (n,), by matrix algebra."""
    X = np.asarray(X, dtype=np.float64)
    W1, b1, w2, b2 = ref_split(theta, H, X.shape[1])
    return np.tanh(X @ W1.T + b1) @ w2 + b2


def ref_rows(X, y, theta, H):
    """Per-row loss (n,), loss gradient (n, P) and Jacobian (n, P), row by row."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    W1, b1, w2, b2 = ref_split(theta, H, d)
    loss, grad, J = np.empty(n), [], []
    for i in range(n):
        h = np.tanh(W1 @ X[i] + b1)
        f = w2 @ h + b2
        gate = w2 * (1.0 - h * h)
        Ji = np.concatenate([np.outer(gate, X[i]).ravel(), gate, h, [1.0]])
        loss[i] = 0.5 * (y[i] - f) ** 2
        J.append(Ji)
        grad.append((f - y[i]) * Ji)
    return loss, np.array(grad), np.array(J)


def ref_metric(J, r, w, metric, structure, bounds):
    """``Σ w_i c_i J_i J_iᵀ`` with ``c = 1`` (Gauss–Newton/model) or ``r²`` (empirical)."""
    w = np.ones(J.shape[0]) if w is None else w
    c = np.ones_like(r) if metric in ("gauss-newton", "model") else r * r
    G = np.zeros((J.shape[1],) * 2)
    for i in range(J.shape[0]):
        G += w[i] * c[i] * np.outer(J[i], J[i])
    if structure == "diagonal":
        return np.diag(G).copy()
    if structure == "block":
        out = np.zeros_like(G)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out[a:b, a:b] = G[a:b, a:b]
        return out
    return G


def _batch(n, d, H, dtype=np.float64, seed=0):
    """Badly scaled inputs, non-saturated weights, noisy targets, positive weights."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.1, 10.0, d)
    X = (rng.standard_normal((n, d)) * scales + 0.5).astype(dtype)
    model = MLPRegressor(d, hidden=H, seed=seed)
    W1 = rng.standard_normal((H, d)) / scales / math.sqrt(d)
    theta = model.pack(W1, rng.standard_normal(H) * 0.3, rng.standard_normal(H),
                       rng.standard_normal())
    y = ref_forward(X, theta, H) + rng.standard_normal(n)
    return model, X, y, rng.random(n) * 2.0, theta


# -- kernels against the references ---------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 70])
def test_kernel_rows_match_reference_serial_and_parallel(dtype, n):
    model, X, y, _, theta = _batch(n, 4, 3, dtype, seed=n)
    r_loss, r_grad, r_J = ref_rows(X, y, theta, 3)
    loss, grad, J, f = model._rows(X, y, theta, True, parallel=False)
    assert_allclose(loss, r_loss, rtol=1e-11, atol=1e-14)
    assert_allclose(grad, r_grad, rtol=1e-10, atol=1e-13)
    assert_allclose(J[:, 0, :], r_J, rtol=1e-11, atol=1e-14)
    assert_allclose(f, ref_forward(X, theta, 3), rtol=1e-12)
    assert_allclose(model.predict(X, theta), f, rtol=1e-13)
    P = model.n_params
    out = [np.empty(n), np.empty((n, P)), np.empty((n, 1, P)), np.empty(n)]
    K.mlp_rows_parallel(X, y, theta, 3, True, *out, 3)
    for a, b in zip(out, (loss, grad, J, f), strict=True):
        assert_array_equal(a, b)  # rows are independent: bit-for-bit the serial result
    _, grad_nojac, no_jac, _ = model._rows(X, y, theta, False, parallel=True)
    assert no_jac is None
    assert_array_equal(grad_nojac, grad)


@pytest.mark.parametrize("metric", ["gauss-newton", "model", "empirical", "loss-gradient"])
@pytest.mark.parametrize("structure", ["full", "diagonal", "block"])
def test_accumulate_matches_reference_for_every_structure(metric, structure):
    model, X, y, w, theta = _batch(90, 3, 4, seed=1)
    _, r_grad, r_J = ref_rows(X, y, theta, 4)
    r = ref_forward(X, theta, 4) - y
    bounds = model.param_bounds()
    assert list(bounds) == [0, 4 * 4, model.n_params]  # layer1 = (W1, b1), layer2 = (w2, b2)
    ws = model.new_workspace(structure, n_threads=2)
    for weights in (None, w):
        loss, wsum = model.accumulate(X, y, weights, theta, metric=metric,
                                      structure=structure, ws=ws)
        ww = np.ones(90) if weights is None else weights
        assert_allclose(loss, ww @ (0.5 * r * r), rtol=1e-11)
        assert_allclose(wsum, ww.sum(), rtol=1e-13)
        assert_allclose(ws.grad, ww @ r_grad, rtol=1e-10, atol=1e-12)
        G = ref_metric(r_J, r, weights, metric, structure, bounds)
        assert_allclose(ws.fisher, G, rtol=1e-10, atol=1e-10 * np.abs(G).max())
    if structure == "block":  # the off-block (layer1 × layer2) entries really are zero
        assert not ws.fisher[:16, 16:].any() and not ws.fisher[16:, :16].any()
        full = model.batch_metric(X, y, theta, w, metric=metric)
        assert np.abs(full[:16, 16:]).max() > 1e-3 * np.abs(full).max()


def test_gradient_and_jacobian_match_finite_differences():
    model, X, y, _, theta = _batch(30, 3, 4, seed=2)
    _, grad, J, _ = model._rows(X, y, theta, True)
    h = 1e-6
    fd_J = np.empty((30, model.n_params))
    fd_g = np.empty(model.n_params)
    for p in range(model.n_params):
        e = np.zeros(model.n_params)
        e[p] = h
        fp, fm = ref_forward(X, theta + e, 4), ref_forward(X, theta - e, 4)
        fd_J[:, p] = (fp - fm) / (2 * h)
        fd_g[p] = (0.5 * np.sum((y - fp) ** 2) - 0.5 * np.sum((y - fm) ** 2)) / (2 * h)
    assert_allclose(J[:, 0, :], fd_J, rtol=1e-6, atol=1e-7)
    assert_allclose(grad.sum(axis=0), fd_g, rtol=1e-6, atol=1e-6)


def _fd_hessian(X, y, theta, H, h=1e-4):
    """Hessian of the mean loss by second central differences of the NumPy loss."""
    def loss(t):
        return 0.5 * np.mean((y - ref_forward(X, t, H)) ** 2)

    P = theta.size
    E = np.eye(P) * h
    out = np.empty((P, P))
    for i in range(P):
        for j in range(i, P):
            out[i, j] = out[j, i] = (loss(theta + E[i] + E[j]) - loss(theta + E[i] - E[j])
                                     - loss(theta - E[i] + E[j])
                                     + loss(theta - E[i] - E[j])) / (4 * h * h)
    return out


def test_gauss_newton_equals_loss_hessian_at_zero_residual():
    """G = ⟨JᵀJ⟩ is the Hessian of ½⟨(y − f)²⟩ exactly when y = f(x; θ); not otherwise."""
    model, X, y_noisy, _, theta = _batch(40, 3, 3, seed=3)
    y_exact = ref_forward(X, theta, 3)  # zero residual (independent forward pass)
    G = model.batch_metric(X, y_exact, theta, metric="gauss-newton")
    hess = _fd_hessian(X, y_exact, theta, 3)
    scale = np.abs(G).max()
    assert np.abs(hess - G).max() < 1e-5 * scale
    assert_allclose(model.batch_metric(X, y_exact, theta, metric="model"), G, rtol=1e-12)
    # with residuals the Hessian gains ⟨r ∂²f⟩ and the two differ
    hess_noisy = _fd_hessian(X, y_noisy, theta, 3)
    assert np.abs(hess_noisy - G).max() > 1e-2 * scale


def test_monte_carlo_metric_samples_the_unit_gaussian():
    model, X, y, _, theta = _batch(25, 2, 3, seed=4)
    U = model.row_terms(X, y, theta, metric="monte-carlo", rng=np.random.default_rng(9),
                        mc_samples=5).factors
    generic = model.monte_carlo_factors(X, theta, np.random.default_rng(9), 5)
    assert U.shape == (25, 5, model.n_params)
    assert_allclose(np.abs(U), np.abs(generic), rtol=1e-9, atol=1e-12)
    G_mc = model.batch_metric(X, y, theta, metric="monte-carlo",
                              rng=np.random.default_rng(1), mc_samples=4000)
    G = model.batch_metric(X, y, theta, metric="gauss-newton")
    assert np.abs(G_mc - G).max() < 0.05 * np.abs(G).max()
    ys = model.sample_targets(X, theta, np.random.default_rng(2), 20000)
    resid = ys - ref_forward(X, theta, 3)
    assert np.abs(resid.mean(axis=0)).max() < 0.04
    assert np.abs(resid.var(axis=0) - 1.0).max() < 0.06


def test_metric_matvec_evaluation_and_scores():
    model, X, y, w, theta = _batch(50, 3, 2, seed=5)
    V = np.random.default_rng(0).standard_normal((model.n_params, 3))
    for metric in ("gauss-newton", "empirical"):
        G = model.batch_metric(X, y, theta, w, metric=metric)
        assert_allclose(model.metric_matvec(X, y, w, theta, V, metric=metric), G @ V,
                        rtol=1e-10, atol=1e-12)
    ev = evaluate(model, theta, (X, y))
    assert ev["n"] == 50
    assert_allclose(ev["mse"], np.mean((y - ref_forward(X, theta, 2)) ** 2), rtol=1e-12)
    _, r_grad, _ = ref_rows(X, y, theta, 2)
    assert_allclose(model.scores(X, y, theta), -r_grad, rtol=1e-10, atol=1e-13)


# -- layout, configuration, validation -------------------------------------------------
def test_layout_init_config_and_params():
    model = make_model("mlp", 3, hidden=5, seed=7)
    assert isinstance(model, MLPRegressor) and model.n_params == 5 * 3 + 5 + 5 + 1
    assert model.default_metric == "gauss-newton"
    assert [g[0] for g in model.param_groups()] == ["layer1", "layer2"]
    theta = model.init_params()
    W1, b1, w2, b2 = model.unpack(theta)
    assert np.all(b1 == 0) and b2 == 0 and np.all(w2 != 0)
    assert len(set(np.round(W1[:, 0], 12))) == 5  # symmetry broken
    assert_array_equal(model.pack(W1, b1, w2, b2), theta)
    assert_array_equal(make_model("mlp", 3, hidden=5, seed=7).init_params(), theta)
    assert not np.array_equal(make_model("mlp", 3, hidden=5, seed=8).init_params(), theta)
    cfg = model.config()
    assert cfg == {"name": "mlp", "n_features": 3, "hidden": 5, "seed": 7}
    assert json.loads(json.dumps(cfg)) == cfg
    assert_array_equal(model_from_config(cfg).init_params(), theta)
    d = model.params_to_dict(theta)
    assert set(d) == {"W1", "b1", "W2", "b2"}
    assert np.shape(d["W1"]) == (5, 3) and np.shape(d["W2"]) == (1, 5)
    assert len(d["b1"]) == 5 and len(d["b2"]) == 1
    assert_array_equal(model.pack(d["W1"], d["b1"], d["W2"], d["b2"]), theta)
    assert MLPRegressor.options_from_data(None, None, {"hidden": 9, "classes": None}) == \
        {"hidden": 9}
    assert MLPRegressor.options_from_data(None, None, {"hidden": None}) == {}
    assert make_model("mlp", 2).hidden == 16
    c = model.center_indices
    assert c == (15, 16, 17, 18, 19, 25) and model.intercept_index == 25


def test_docstring_examples():
    import doctest

    from natgrad_stream.models import mlp

    assert doctest.testmod(mlp).failed == 0


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        MLPRegressor(3, hidden=0)
    with pytest.raises(TypeError, match="hidden must be an integer"):
        MLPRegressor(3, hidden=2.5)
    with pytest.raises(TypeError, match="seed must be an integer"):
        MLPRegressor(3, seed="1")
    model, X, y, _, theta = _batch(10, 3, 2)
    ws = model.new_workspace("full")
    with pytest.raises(ValueError, match=r"X must have shape \(n, 3\)"):
        model.accumulate(X[:, :2], y, None, theta, metric=None, structure="full", ws=ws)
    with pytest.raises(ValueError, match="theta must have shape"):
        model.accumulate(X, y, None, theta[:-1], metric=None, structure="full", ws=ws)
    with pytest.raises(ValueError, match="y must have shape"):
        model.accumulate(X, y[:5], None, theta, metric=None, structure="full", ws=ws)
    with pytest.raises(ValueError, match="does not support metric 'energy'"):
        model.accumulate(X, y, None, theta, metric="energy", structure="full", ws=ws)
    with pytest.raises(ValueError, match="needs a random generator"):
        model.accumulate(X, y, None, theta, metric="monte-carlo", structure="full", ws=ws)
    with pytest.raises(ValueError, match="W1 must have shape"):
        model.pack(np.zeros((3, 3)), np.zeros(2), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="does not support metric 'amari'"):
        NaturalGradientLearner(model, metric="amari")


# -- synthetic task ----------------------------------------------------------------------
def test_synthetic_task_draws_from_the_true_network(tmp_path):
    g = make_dataset(tmp_path / "m.zarr", task="mlp", rows=6000, features=4, chunk_rows=1500,
                     seed=2)
    assert g["y"].dtype == np.float32
    params = g.attrs["natgrad_stream"]["true_params"]
    assert params == task.true_params(4, 2)  # a pure function of (features, seed)
    X, y = g["X"][...].astype(np.float64), g["y"][...].astype(np.float64)
    model = MLPRegressor(4, hidden=task.HIDDEN)
    theta = model.pack(params["W1"], params["b1"], params["W2"], params["b2"])
    f = model.predict(X, theta)
    assert_allclose(f, task.network(params, X), rtol=1e-10, atol=1e-10)
    resid = y - f
    assert abs(resid.std() / task.NOISE_STD - 1) < 0.05 and abs(resid.mean()) < 0.01
    pre = X @ np.asarray(params["W1"]).T + params["b1"]  # units active, not saturated
    assert_allclose(pre.std(axis=0), task.PREACT_STD, rtol=0.1)
    sd = X.std(axis=0)
    assert sd.max() / sd.min() > 100  # badly scaled, as steepest descent dislikes
    Xt = np.c_[X, np.ones(len(X))]  # and truly nonlinear: a linear fit is far worse
    lin = np.linalg.lstsq(Xt, y, rcond=None)[0]
    assert np.mean((Xt @ lin - y) ** 2) > 10 * task.NOISE_STD**2


# -- convergence against tuned first-order baselines ------------------------------------
N_ROWS, BATCH, FEATURES, HIDDEN = 8192, 256, 6, 8
TARGET_MSE = 0.2
MAX_PASSES = 30
NATURAL_PASSES = 3
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@pytest.fixture(scope="module")
def race():
    params = task.true_params(FEATURES, 0)
    X, y = task.sample_chunk(params, np.random.default_rng([0, 1]), N_ROWS)
    rng = np.random.default_rng(5)
    orders = [np.array_split(rng.permutation(N_ROWS), N_ROWS // BATCH)
              for _ in range(MAX_PASSES)]
    return X.astype(np.float32), y.astype(np.float64), orders


def _mse(model, X, y, theta):
    return float(np.mean((model.predict(X, theta) - y) ** 2))


def _passes_to_target(history):
    return next((p for p, mse in enumerate(history, 1) if mse <= TARGET_MSE), math.inf)


def _natural_history(X, y, orders, structure):
    """Training MSE after each pass of the Gauss–Newton natural-gradient learner, with the
    model's own learner defaults (:data:`RECOMMENDED_LEARNER_OPTIONS`).
    """
    model = MLPRegressor(FEATURES, hidden=HIDDEN, seed=0)
    learner = NaturalGradientLearner(model, structure=structure, batch_size=BATCH)
    assert learner.options()["damping"] == RECOMMENDED_LEARNER_OPTIONS["damping"]
    history = []
    for order in orders:
        for idx in order:
            learner.step(X[idx], y[idx])
        history.append(_mse(model, X, y, learner.theta))
    return history


def _first_order_history(X, y, orders, lr, adam):
    """Plain minibatch SGD or Adam (β = 0.9, 0.999) in θ on the same batches; stops at the
    target or on non-finite parameters.
    """
    model = MLPRegressor(FEATURES, hidden=HIDDEN, seed=0)
    ws = model.new_workspace("diagonal", n_threads=1)
    theta = model.init_params()
    m, v, k = np.zeros_like(theta), np.zeros_like(theta), 0
    history = []
    with np.errstate(all="ignore"):
        for order in orders:
            for idx in order:
                _, wsum = model.accumulate(X[idx], y[idx], None, theta, metric=None,
                                           structure="diagonal", ws=ws)
                g = ws.grad / wsum
                k += 1
                if adam:
                    m = 0.9 * m + 0.1 * g
                    v = 0.999 * v + 0.001 * g * g
                    theta = theta - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k))
                                                               + 1e-8)
                else:
                    theta = theta - lr * g
            history.append(_mse(model, X, y, theta))
            if not np.isfinite(history[-1]) or history[-1] <= TARGET_MSE:
                break
    return history


def test_gauss_newton_reaches_target_in_fewer_passes_than_tuned_sgd_and_adam(race):
    """Target: training MSE <= 0.2 (var y = 2.67, noise floor 0.01) on 8,192 rows × 6 raw,
    correlated features (scales over three decades), hidden = 8, batches of 256; every
    method sees the same batches from the same initial θ; at most 30 passes.

    Measured passes to the target: Gauss–Newton natural gradient (``RECOMMENDED_LEARNER_
    OPTIONS``, re-whitened every batch) 1 with the full metric, 1 block-diagonal by layer,
    and training MSE 0.011 (full) / 0.013 (block) after 3 passes. Adam in θ, best over
    lr in {1e-3, 3e-3, 0.01, 0.03, 0.1}: 10 passes (lr = 0.03; 13 at 0.01, 14 at 0.1).
    SGD in θ, best over the same grid: not reached in 30 passes (lowest MSE 0.40).
    """
    X, y, orders = race
    nat = {s: _natural_history(X, y, orders[:NATURAL_PASSES], s) for s in ("full", "block")}
    sgd = min(_passes_to_target(_first_order_history(X, y, orders, lr, adam=False))
              for lr in LRS)
    adam = min(_passes_to_target(_first_order_history(X, y, orders, lr, adam=True))
               for lr in LRS)
    natural = max(_passes_to_target(h) for h in nat.values())
    assert natural <= 2 < adam <= MAX_PASSES
    assert natural < adam < sgd
    for history in nat.values():  # and it goes on to near the noise floor (0.01)
        assert history[-1] < 2.5 * task.NOISE_STD**2


# -- command line -------------------------------------------------------------------------
def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, (json.loads(lines[-1]) if lines else None), err


def test_cli_round_trip(tmp_path, capsys):
    data, run = tmp_path / "mlp.zarr", tmp_path / "run"
    code, made, _ = _cli(capsys, "make-data", data, "--task", "mlp", "--rows", 6000,
                         "--features", 3, "--chunk-rows", 1000, "--test-rows", 2000,
                         "--seed", 4)
    assert code == 0 and made["task"] == "mlp"
    code, summary, err = _cli(capsys, "fit", data, "--model", "mlp", "--hidden", 8,
                              "--structure", "block", "--out", run, "--epochs", 4,
                              "--batch-size", 256, "--step-schedule", "constant",
                              "--lr", 0.1, "--damping", 0.01, "--rewhiten-every", 256,
                              "--fisher-every", 1, "--seed", 1)
    assert code == 0, err
    assert summary["samples"] == 24000 and summary["rewhitens"] > summary["steps"] // 2
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["hidden"] == 8 and info["options"]["structure"] == "block"
    code, ev, _ = _cli(capsys, "evaluate", run, data, "--x", "X_test", "--y", "y_test")
    y_test = zarr.open_group(str(data), mode="r")["y_test"][...].astype(np.float64)
    assert code == 0 and ev["n"] == 2000
    assert ev["mse"] < 0.1 * y_test.var()
    code, params, _ = _cli(capsys, "params", run)
    assert code == 0 and set(params) == {"W1", "b1", "W2", "b2"}
    assert np.shape(params["W1"]) == (8, 3) and np.shape(params["W2"]) == (1, 8)
    assert len(params["b1"]) == 8 and len(params["b2"]) == 1


def test_raw_and_standardized_inputs_give_the_same_fit():
    """The data-informed start (the default network for standardized data, mapped to the
    data's units) makes raw diabetes features fit as standardized ones do: before it, the
    raw fit stayed a constant predictor (MSE = Var(y)) with every unit saturated.
    """
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    X, y = d.data.astype(np.float64), d.target.astype(np.float64)
    Xs, ys = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    scores = np.empty((5, 2))
    for seed in range(5):
        for k, (A, b) in enumerate(((X, y), (Xs, ys))):
            model = make_model("mlp", 10, seed=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # re-whitening notes
                theta = NaturalGradientLearner(model).fit((A, b), epochs=50).theta
            scores[seed, k] = np.mean((model.predict(A, theta) - b) ** 2) / b.var()
    # one non-convex fit's path is chaotic (round-off decides between nearby optima: per
    # seed, raw and standardized differ by up to 25% either way), so the fits are compared
    # over 5 seeds; measured mean MSE/Var(y) 0.305 raw and 0.271 standardized (0.268 and
    # 0.261 with another round-off path); the failure this guards against is 1.0 (raw
    # features leaving every unit saturated: a constant predictor)
    raw, standardized = scores.mean(axis=0)
    assert raw < 0.4 and standardized < 0.4
    assert abs(raw - standardized) < 0.2 * standardized


def test_kfac_metric_against_the_gauss_newton_blocks():
    """``kfac``: its output-layer block is the Gauss–Newton block exactly; its hidden-layer
    block is ``I_H ⊗ A`` (the same (d+1)² block per unit, none across units) whose trace
    equals the Gauss–Newton block's (the per-unit output factor averaged over the units);
    and a saturated unit keeps the scale of the others (its Gauss–Newton block: ~0).
    """
    rng = np.random.default_rng(4)
    d, H, n = 3, 4, 200
    model = make_model("mlp", d, hidden=H, seed=1)
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w = rng.uniform(0.5, 2.0, n)
    theta = model.init_params()
    theta[H * d + 2] = 40.0  # unit 2's bias: saturated
    G = model.kfac_metric(X, theta, w)
    GN = model.batch_metric(X, y, theta, w, metric="gauss-newton")
    out = np.r_[H * d + H:H * d + 2 * H + 1]
    assert_allclose(G[np.ix_(out, out)], GN[np.ix_(out, out)], rtol=1e-12, atol=1e-15)
    units = [np.r_[u * d:(u + 1) * d, H * d + u] for u in range(H)]
    A = G[np.ix_(units[0], units[0])]
    for u in range(H):
        assert_allclose(G[np.ix_(units[u], units[u])], A, rtol=0, atol=0)
        for v in range(H):
            if v != u:
                assert not G[np.ix_(units[u], units[v])].any()
    layer1 = np.concatenate(units)
    assert_allclose(np.trace(G[np.ix_(layer1, layer1)]), np.trace(GN[np.ix_(layer1, layer1)]),
                    rtol=1e-12)
    assert not G[np.ix_(layer1, out)].any()
    sat = units[2]
    assert np.trace(GN[np.ix_(sat, sat)]) < 1e-20 * np.trace(A)  # the saturated unit
    # the batch sums: accumulate gives Σ w · (batch mean), as for the other metrics
    ws = model.new_workspace("full", n_threads=1)
    _, wsum = model.accumulate(X, y, w, theta, metric="kfac", structure="full", ws=ws)
    assert_allclose(ws.fisher / wsum, G, rtol=1e-12)
    U = rng.standard_normal((model.n_params, 2))
    assert_allclose(model.metric_matvec(X, y, w, theta, U, metric="kfac"), G @ U, rtol=1e-12)


@pytest.mark.slow
def test_default_fit_on_diabetes_reaches_scikit_learns_best(tmp_path):
    """The default fit (no flags) on standardized and on raw diabetes: 30 raced starts (the
    mlp's budget on 442 rows: each screened by 2 L-BFGS rounds whitened by ``kfac``, 500
    iterations each, the 2 lowest continued up to the mlp's pass cap), the lowest training
    loss kept. scikit-learn's
    ``MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", solver="lbfgs", alpha=0,
    max_iter=5000)`` over 5 seeds ends at MSE/Var(y) 0.0699 … 0.0848 standardized
    (``scripts/model_panel.py``); our single fits at 0.065 … 0.097 (seeds 0–15, median
    0.075). Before restarts: seed 0 alone, 0.0805 standardized. Measured with 10 whole
    fits (Zen 4): 0.0653 standardized (seed 8 kept); raced, 0.0654 (seed 8 again: the
    starts lowest after 2 rounds were the lowest at the end, 6 of 60).
    """
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    X, y = d.data.astype(np.float64), d.target.astype(np.float64)
    Xs, ys = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    for A, b in ((Xs, ys), (X, y)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lr = NaturalGradientLearner(make_model("mlp", 10)).fit((A, b))
        ratio = float(np.mean((lr.model.predict(A, lr.theta) - b) ** 2) / b.var())
        # a non-convex path: round-off picks between nearby minima on another CPU, so the
        # bound is below scikit-learn's median restart (0.083) and our single fits' median,
        # with a margin over what the raced best reached here, not that figure itself
        # (scripts/mlp_restarts_bench.py measures the criterion, 0.0699, over seeds and
        # layouts)
        assert ratio < 0.075, ratio
        restarts = lr.result.restarts
        assert len(restarts) == 30  # raced: 30 starts screened by 2 rounds, 2 continued
        assert sum(not r.get("screened_out", False) for r in restarts) == 2
        kept = [r for r in restarts if r["kept"]]
        assert kept[0]["train_loss"] == min(r["train_loss"] for r in restarts)
        assert lr.result.epochs > 50  # the mlp's own cap, not the learner's
        assert abs(lr.result.train_loss - 0.5 * ratio * b.var()) <= 1e-12 * lr.result.train_loss


def test_a_rebuilt_learner_whitens_its_rounds_as_the_original():
    """A run rebuilt from its checkpoint (``--resume``) passes the recorded options, which
    name the metric: before ``round_metric`` was recorded, the rebuilt mlp learner whitened
    its L-BFGS rounds by ``gauss-newton`` where the original used ``kfac``, so a resumed
    default fit was not the uninterrupted one.
    """
    for given, want in (({}, "kfac"), ({"metric": "empirical"}, "empirical"),
                        ({"round_metric": "gauss-newton"}, "gauss-newton")):
        lr = NaturalGradientLearner(make_model("mlp", 3, hidden=2), **given)
        again = NaturalGradientLearner.from_state_dict(lr.state_dict())
        assert lr.round_metric == again.round_metric == want
        assert again.options()["round_metric"] == want
