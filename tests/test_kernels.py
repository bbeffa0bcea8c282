"""Every kernel against a slow NumPy reference; gradients against finite differences."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.models import PAPER_MIXING, GaussianMean, make_model

from ._reference import (
    gaussian_mean_reference,
    glm_reference,
    logistic_fisher_by_enumeration,
)


def _data(n, d, dtype, seed=0, family="logistic"):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * np.geomspace(0.1, 10, d) + 1.0).astype(dtype)
    theta = rng.standard_normal(d + 1) * 0.3 / np.r_[np.geomspace(0.1, 10, d), 1.0]
    if family == "logistic":
        y = (rng.random(n) < 0.4).astype(np.float64)
    elif family == "poisson":
        y = rng.poisson(2.0, n).astype(np.float64)
    else:
        y = rng.standard_normal(n) * 2.0 + 1.0
    w = rng.random(n) * 2.0
    return X, y, w, theta


@pytest.mark.parametrize("family", ["logistic", "linear", "poisson"])
@pytest.mark.parametrize("metric", ["model", "empirical"])
@pytest.mark.parametrize("structure", ["full", "diagonal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n", [1, 63, 200])
def test_glm_kernel_matches_reference(family, metric, structure, dtype, parallel, n):
    X, y, w, theta = _data(n, 5, dtype, seed=n, family=family)
    model = make_model(family, 5)
    ws = model.new_workspace(structure, n_threads=3)
    for weights in (None, w):
        loss, wsum = model.accumulate(X, y, weights, theta, metric=metric, structure=structure,
                                      ws=ws, parallel=parallel)
        r_loss, r_grad, r_G, r_w = glm_reference(family, X, y, weights, theta, metric, structure)
        assert_allclose(loss, r_loss, rtol=1e-10)
        assert_allclose(wsum, r_w, rtol=1e-12)
        assert_allclose(ws.grad, r_grad, rtol=1e-9, atol=1e-12)
        assert_allclose(ws.fisher, r_G, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", ["logistic", "poisson"])
@pytest.mark.parametrize("metric", ["model", "empirical"])
@pytest.mark.parametrize("n", [1, 64, 200])
@pytest.mark.parametrize("d", [6, 7, 130])
def test_wide_glm_kernel_matches_reference_and_the_serial_sums(family, metric, n, d,
                                                               monkeypatch):
    """The wide path (the metric's rows split over threads, no per-thread copy) against
    NumPy, and against the serial kernel, whose sums it adds in the same order.
    """
    import natgrad_stream.models.glm as glm

    X, y, w, theta = _data(n, d, np.float32, seed=n + d, family=family)
    theta /= np.sqrt(d)  # moderate margins (the reference's log underflows beyond ~36)
    model = make_model(family, d)
    monkeypatch.setattr(glm, "WIDE_METRIC_PARAMS", 1)
    wide, serial = model.new_workspace("full"), model.new_workspace("full")
    assert wide.scratch["fisher_t"].shape[1:] == (1, 1)  # no per-thread P × P copies
    for weights in (None, w):
        out = model.accumulate(X, y, weights, theta, metric=metric, structure="full",
                               ws=wide, parallel=True)
        ref = model.accumulate(X, y, weights, theta, metric=metric, structure="full",
                               ws=serial, parallel=False)
        r_loss, r_grad, r_G, _ = glm_reference(family, X, y, weights, theta, metric, "full")
        assert_allclose(out[0], r_loss, rtol=1e-10)
        assert_allclose(wide.grad, r_grad, rtol=1e-9, atol=1e-12)
        assert_allclose(wide.fisher, r_G, rtol=1e-9, atol=1e-12)
        assert np.array_equal(wide.fisher, wide.fisher.T)
        # the same sums in the same order as the serial kernel (round-off aside: LLVM may
        # vectorize the two call sites differently)
        assert_allclose(wide.fisher, serial.fisher, rtol=1e-13, atol=0)
        assert_allclose(out, ref, rtol=1e-13)


def test_metric_none_leaves_fisher_zero_and_grad_intact():
    X, y, _, theta = _data(100, 4, np.float64)
    model = make_model("logistic", 4)
    ws = model.new_workspace("full")
    model.accumulate(X, y, None, theta, metric=None, structure="full", ws=ws)
    assert not ws.fisher.any()
    _, r_grad, _, _ = glm_reference("logistic", X, y, None, theta, "model", "full")
    assert_allclose(ws.grad, r_grad, rtol=1e-10)


@pytest.mark.parametrize("family", ["logistic", "linear", "poisson"])
def test_glm_gradient_matches_finite_differences(family):
    X, y, _, theta = _data(50, 3, np.float64, family=family)
    model = make_model(family, 3)
    ws = model.new_workspace("diagonal")
    model.accumulate(X, y, None, theta, metric=None, structure="diagonal", ws=ws)
    h = 1e-6
    fd = [(model.loss(X, y, theta + h * e) - model.loss(X, y, theta - h * e)) / (2 * h)
          for e in np.eye(4)]
    assert_allclose(ws.grad / 50, fd, rtol=1e-6, atol=1e-9)


def test_logistic_model_fisher_equals_expectation_over_model_and_hessian():
    X, y, _, theta = _data(40, 3, np.float64)
    model = make_model("logistic", 3)
    G = model.model_fisher(X, theta)
    assert_allclose(G, logistic_fisher_by_enumeration(X, theta), rtol=1e-12)
    # canonical link: the model Fisher is the Hessian of the mean loss
    h = 1e-5
    ws = model.new_workspace("diagonal")

    def grad(t):
        model.accumulate(X, y, None, t, metric=None, structure="diagonal", ws=ws)
        return ws.grad / 40

    H = np.array([(grad(theta + h * e) - grad(theta - h * e)) / (2 * h) for e in np.eye(4)])
    assert_allclose(H, G, rtol=1e-6, atol=1e-9)


def test_scores_match_reference_and_average_to_minus_gradient():
    for family in ("logistic", "linear"):
        X, y, _, theta = _data(30, 3, np.float32, family=family)
        model = make_model(family, 3)
        S = model.scores(X, y, theta)
        ws = model.new_workspace("full")
        model.accumulate(X, y, None, theta, metric="empirical", structure="full", ws=ws)
        assert_allclose(-S.sum(axis=0), ws.grad, rtol=1e-10, atol=1e-12)
        assert_allclose(S.T @ S, ws.fisher, rtol=1e-9)


def test_mean_prediction_and_evaluation_sums():
    X, y, _, theta = _data(64, 3, np.float64)
    model = make_model("logistic", 3)
    z = X @ theta[:-1] + theta[-1]
    assert_allclose(model.predict_mean(X, theta), 1 / (1 + np.exp(-z)), rtol=1e-12)
    sums = model.evaluation_sums(X, y, theta)
    m = model.evaluation_metrics(sums)
    assert m["n"] == 64
    assert_allclose(m["log_loss"], np.mean(np.logaddexp(0, z) - y * z), rtol=1e-12)
    assert_allclose(m["accuracy"], np.mean((z > 0) == (y > 0.5)))


def test_logistic_kernel_is_stable_for_huge_margins():
    model = make_model("logistic", 1)
    X = np.array([[1e4], [-1e4]])
    y = np.array([1.0, 1.0])
    ws = model.new_workspace("full")
    loss, _ = model.accumulate(X, y, None, np.array([1.0, 0.0]), metric="model",
                               structure="full", ws=ws)
    assert_allclose(loss, 1e4)
    assert np.all(np.isfinite(ws.fisher))


@pytest.mark.parametrize("metric", ["model", "empirical"])
@pytest.mark.parametrize("structure", ["full", "diagonal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_mean_kernel_matches_reference(metric, structure, dtype):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 3))
    X = rng.standard_normal((130, 4)).astype(dtype) + 2.0
    w = rng.random(130)
    theta = rng.standard_normal(3)
    model = GaussianMean(4, mixing=A)
    ws = model.new_workspace(structure)
    for weights in (None, w):
        loss, wsum = model.accumulate(X, None, weights, theta, metric=metric,
                                      structure=structure, ws=ws)
        r = gaussian_mean_reference(A, X, weights, theta, metric, structure)
        assert_allclose(loss, r[0], rtol=1e-10)
        assert_allclose(ws.grad, r[1], rtol=1e-9, atol=1e-10)
        assert_allclose(ws.fisher, r[2], rtol=1e-9, atol=1e-10)
        assert_allclose(wsum, r[3], rtol=1e-12)
    S = model.scores(X, None, theta)
    assert_allclose(S, (X.astype(float) - A @ theta) @ A, rtol=1e-10)


def test_paper_fisher_closed_form():
    model = GaussianMean(2)
    assert_allclose(model.model_fisher(None, np.zeros(2)), [[9 + 1 / 9, 1], [1, 1 / 9]],
                    rtol=1e-14)
    assert_allclose(PAPER_MIXING, [[3, 1 / 3], [1 / 3, 0]])


def test_bad_shapes_and_dtypes_are_rejected():
    model = make_model("logistic", 3)
    ws = model.new_workspace("full")
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        model.accumulate(np.zeros((4, 2)), np.zeros(4), None, np.zeros(4), metric="model",
                         structure="full", ws=ws)
    with pytest.raises(TypeError, match="float32 or float64"):
        model.accumulate(np.zeros((4, 3), dtype=np.int64), np.zeros(4), None, np.zeros(4),
                         metric="model", structure="full", ws=ws)
    with pytest.raises(ValueError, match="gaussian-mean"):
        GaussianMean(3)
    with pytest.raises(ValueError, match="unknown model"):
        make_model("nope", 3)


def test_a_wide_workspace_releases_its_batch_metric_pages(monkeypatch):
    """A full metric of a wide model sits in a private anonymous mapping whose pages are
    given back after the batch folds in (values read as zeros; the next batch rewrites it).
    """
    import natgrad_stream.models.base as base

    def resident_mib():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    monkeypatch.setattr(base, "WIDE_METRIC_PARAMS", 100)
    model = make_model("logistic", 2000)
    ws = model.new_workspace("full")
    X, y, _, theta = _data(64, 2000, np.float64)
    model.accumulate(X, y, None, theta / 100, metric="model", structure="full", ws=ws)
    first = ws.fisher.copy()
    before = resident_mib()
    ws.release_metric()
    assert not ws.fisher.any()
    assert before - resident_mib() > 20  # the 30.5 MiB buffer's pages, give or take
    model.accumulate(X, y, None, theta / 100, metric="model", structure="full", ws=ws)
    assert np.array_equal(ws.fisher, first)
    small = make_model("logistic", 10).new_workspace("full")
    small.fisher[0, 0] = 1.0
    small.release_metric()  # a NumPy buffer: nothing to release
    assert small.fisher[0, 0] == 1.0
