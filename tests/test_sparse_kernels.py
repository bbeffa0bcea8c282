"""CSR kernels of the GLMs and softmax against the dense kernels and plain NumPy.

Tolerances: a sparse kernel adds the same float64 terms as the dense one (float32 values
are read exactly), in another order (non-zeros only, repeats one by one). Each sum has at
most a few thousand terms here, so the orders differ by at most ~1e-13 of the sum of the
terms' magnitudes: ``rtol=1e-12`` on each entry, and ``atol`` 1e-12 of the largest entry
for entries that cancel.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.models import make_model

D_FEATURES = 13
N_ROWS = 150
RTOL = 1e-12


def close(actual, desired):
    """Equal to float64 summation-order round-off (see the module docstring)."""
    desired = np.asarray(desired, dtype=np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    assert_allclose(actual, desired, rtol=RTOL, atol=1e-12 * scale)


def random_rows(n, d, dtype, seed=0):
    """CSR rows with repeated columns, empty rows and ``indptr[0] != 0`` (a view)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 7, n + 5)
    counts[[5, 9, 10]] = 0  # empty rows (view rows 2, 6, 7)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    indices = rng.integers(0, d, indptr[-1]).astype(np.int32)  # repeats within rows
    data = (rng.standard_normal(indptr[-1]) * 1.5).astype(dtype)
    rows = SparseRows(data, indices, indptr, d).rows_slice(3, 3 + n)
    assert rows.indptr[0] != 0 and rows.shape == (n, d)
    return rows


def dense_of(rows):
    """The rows' dense float64 matrix, repeats added, by a plain loop."""
    n, d = rows.shape
    X = np.zeros((n, d))
    for i in range(n):
        for k in range(rows.indptr[i], rows.indptr[i + 1]):
            X[i, rows.indices[k]] += float(rows.data[k])
    return X


def targets(family, n, rng, n_classes=4):
    if family == "logistic":
        return (rng.random(n) < 0.4).astype(np.float64)
    if family == "poisson":
        return rng.poisson(1.5, n).astype(np.float64)
    if family == "softmax":
        return rng.integers(0, n_classes, n).astype(np.float64)
    return rng.standard_normal(n) * 2.0 + 0.5


def model_and_theta(family, rng):
    if family == "softmax":
        model = make_model("softmax", D_FEATURES, n_classes=4)
    else:
        model = make_model(family, D_FEATURES)
    return model, rng.standard_normal(model.n_params) * 0.25


# -- plain NumPy references -----------------------------------------------------------------
def glm_numpy(family, X, y, w, theta, metric):
    """Loss, gradient, full metric and weight sums of a GLM batch, vectorized NumPy."""
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    w = np.ones(X.shape[0]) if w is None else w
    z = Xt @ theta
    if family == "logistic":
        mu = 1.0 / (1.0 + np.exp(-z))
        loss = np.logaddexp(0.0, z) - y * z
        c_model = mu * (1.0 - mu)
    elif family == "poisson":
        mu = np.exp(z)
        loss = mu - y * z
        c_model = mu
    else:
        mu = z
        loss = 0.5 * (y - z) ** 2
        c_model = np.ones_like(z)
    c = c_model if metric == "model" else (mu - y) ** 2
    G = Xt.T @ ((w * c)[:, None] * Xt)
    return w @ loss, Xt.T @ (w * (mu - y)), G, w.sum()


def softmax_numpy(X, y, w, theta, n_classes, metric):
    """Loss, gradient, full metric and weight sums of a softmax batch, vectorized NumPy."""
    n = X.shape[0]
    m = n_classes - 1
    Xt = np.hstack([X, np.ones((n, 1))])
    w = np.ones(n) if w is None else w
    Z = np.hstack([np.zeros((n, 1)), Xt @ theta.reshape(m, -1).T])
    lse = np.logaddexp.reduce(Z, axis=1)
    p = np.exp(Z - lse[:, None])[:, 1:]
    E = np.zeros((n, m))
    lab = y.astype(int)
    E[lab > 0, lab[lab > 0] - 1] = 1.0
    R = p - E
    grad = (Xt.T @ (w[:, None] * R)).T.ravel()
    if metric == "model":
        A = np.einsum("na,ab->nab", p, np.eye(m)) - p[:, :, None] * p[:, None, :]
    else:
        A = R[:, :, None] * R[:, None, :]
    D = Xt.shape[1]
    G = np.zeros((m * D, m * D))
    for a in range(m):
        for b in range(m):
            G[a * D:(a + 1) * D, b * D:(b + 1) * D] = Xt.T @ ((w * A[:, a, b])[:, None] * Xt)
    return w @ (lse - Z[np.arange(n), lab]), grad, G, w.sum()


def restrict(G, structure, bounds):
    if structure == "diagonal":
        return np.diag(G).copy()
    if structure == "block":
        out = np.zeros_like(G)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out[a:b, a:b] = G[a:b, a:b]
        return out
    return G


# -- accumulate: sparse = dense kernels = NumPy -----------------------------------------------
FAMILIES = ["logistic", "linear", "poisson", "softmax"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric", [None, "model", "empirical", "monte-carlo"])
@pytest.mark.parametrize("structure", ["full", "diagonal", "block"])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_accumulate_equals_dense(family, metric, structure, parallel, dtype):
    rng = np.random.default_rng(7)
    rows = random_rows(N_ROWS, D_FEATURES, dtype, seed=11)
    X = dense_of(rows)
    y = targets(family, N_ROWS, rng)
    model, theta = model_and_theta(family, rng)
    for w in (None, rng.random(N_ROWS) * 2.0):
        ws_s = model.new_workspace(structure, n_threads=3)
        ws_d = model.new_workspace(structure, n_threads=3)
        # the same draws for the Monte Carlo metric on both paths
        out_s = model.accumulate(rows, y, w, theta, metric=metric, structure=structure,
                                 ws=ws_s, parallel=parallel, rng=np.random.default_rng(5),
                                 mc_samples=3)
        out_d = model.accumulate(X, y, w, theta, metric=metric, structure=structure,
                                 ws=ws_d, parallel=parallel, rng=np.random.default_rng(5),
                                 mc_samples=3)
        close(out_s, out_d)
        close(ws_s.grad, ws_d.grad)
        close(ws_s.fisher, ws_d.fisher)
        if metric in (None, "model", "empirical"):
            ref = (glm_numpy(family, X, y, w, theta, metric) if family != "softmax"
                   else softmax_numpy(X, y, w, theta, 4, metric))
            close(out_s, (ref[0], ref[3]))
            close(ws_s.grad, ref[1])
            if metric is not None:
                close(ws_s.fisher, restrict(ref[2], structure, model.param_bounds()))
        if "sparse" in ws_s.scratch:  # per-thread buffers are left all zeros
            for name, buf in ws_s.scratch["sparse"].items():
                assert not np.any(buf), name


@pytest.mark.parametrize("family", FAMILIES)
def test_scipy_formats_and_a_reused_workspace(family):
    """CSR, CSC and COO SciPy input; a workspace reused over batches gives each batch's sums."""
    rng = np.random.default_rng(3)
    rows = random_rows(N_ROWS, D_FEATURES, np.float64, seed=4)
    X = dense_of(rows)
    y = targets(family, N_ROWS, rng)
    model, theta = model_and_theta(family, rng)
    ws = model.new_workspace("diagonal", n_threads=2)
    ref = model.new_workspace("diagonal", n_threads=2)
    out_ref = model.accumulate(X, y, None, theta, metric="model", structure="diagonal", ws=ref)
    for matrix in (sp.csr_matrix(X), sp.csc_matrix(X), sp.coo_matrix(X), sp.csr_array(X)):
        for parallel in (True, False):
            out = model.accumulate(matrix, y, None, theta, metric="model",
                                   structure="diagonal", ws=ws, parallel=parallel)
            close(out, out_ref)
            close(ws.grad, ref.grad)
            close(ws.fisher, ref.fisher)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parallel", [False, True])
def test_batches_of_views_add_up_to_the_whole(family, parallel):
    """Streaming views (one of them empty) through one workspace sums to the whole batch."""
    rng = np.random.default_rng(6)
    rows = random_rows(N_ROWS, D_FEATURES, np.float32, seed=6)
    y = targets(family, N_ROWS, rng)
    w = rng.random(N_ROWS)
    model, theta = model_and_theta(family, rng)
    ws = model.new_workspace("diagonal", n_threads=2)
    whole = model.accumulate(rows, y, w, theta, metric="empirical", structure="diagonal",
                             ws=ws, parallel=parallel)
    grad, fisher = ws.grad.copy(), ws.fisher.copy()
    total = np.zeros(2)
    g, f = np.zeros_like(grad), np.zeros_like(fisher)
    for a, b in ((0, 40), (40, 40), (40, 101), (101, N_ROWS)):
        total += model.accumulate(rows.rows_slice(a, b), y[a:b], w[a:b], theta,
                                  metric="empirical", structure="diagonal", ws=ws,
                                  parallel=parallel)
        g += ws.grad
        f += ws.fisher
    close(total, whole)
    close(g, grad)
    close(f, fisher)


def test_float32_rows_without_repeats_equal_the_dense_float32_kernel():
    rng = np.random.default_rng(2)
    A = sp.random(200, D_FEATURES, density=0.3, random_state=2, format="csr", dtype=np.float32)
    y = targets("logistic", 200, rng)
    model, theta = model_and_theta("logistic", rng)
    for structure in ("full", "diagonal"):
        ws_s, ws_d = model.new_workspace(structure), model.new_workspace(structure)
        out_s = model.accumulate(A, y, None, theta, metric="model", structure=structure,
                                 ws=ws_s, parallel=False)
        out_d = model.accumulate(A.toarray(), y, None, theta, metric="model",
                                 structure=structure, ws=ws_d, parallel=False)
        close(out_s, out_d)
        close(ws_s.grad, ws_d.grad)
        close(ws_s.fisher, ws_d.fisher)


# -- the other batch methods ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluation_means_scores(family, dtype):
    rng = np.random.default_rng(8)
    rows = random_rows(N_ROWS, D_FEATURES, dtype, seed=9)
    X = dense_of(rows)
    y = targets(family, N_ROWS, rng)
    model, theta = model_and_theta(family, rng)
    s, d = model.evaluation_sums(rows, y, theta), model.evaluation_sums(X, y, theta)
    assert s.keys() == d.keys()
    for key in s:
        close(s[key], d[key])
    Xt = np.hstack([X, np.ones((N_ROWS, 1))])
    if family == "softmax":
        Z = np.hstack([np.zeros((N_ROWS, 1)), Xt @ theta.reshape(3, -1).T])
        proba = np.exp(Z - np.logaddexp.reduce(Z, axis=1)[:, None])
        close(model.predict_proba(rows, theta), proba)
        assert s["correct"] == np.sum(np.argmax(Z, axis=1) == y)
        R = np.eye(4)[y.astype(int)][:, 1:] - proba[:, 1:]
        scores = (R[:, :, None] * Xt[:, None, :]).reshape(N_ROWS, -1)
    else:
        z = Xt @ theta
        mu = {"logistic": 1.0 / (1.0 + np.exp(-z)), "poisson": np.exp(z), "linear": z}[family]
        close(model.predict_mean(rows, theta), mu)
        scores = (y - mu)[:, None] * Xt
        w = rng.random(N_ROWS)
        sw, dw = model.evaluation_sums(rows, y, theta, w=w), model.evaluation_sums(X, y, theta,
                                                                                   w=w)
        for key in sw:
            close(sw[key], dw[key])
    close(model.scores(rows, y, theta), scores)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric", ["model", "empirical", "monte-carlo"])
def test_metric_matvec_and_model_fisher(family, metric):
    rng = np.random.default_rng(12)
    rows = random_rows(N_ROWS, D_FEATURES, np.float32, seed=13)
    X = dense_of(rows)
    y = targets(family, N_ROWS, rng)
    model, theta = model_and_theta(family, rng)
    w = rng.random(N_ROWS) + 0.5
    U = rng.standard_normal((model.n_params, 3))
    close(model.metric_matvec(rows, y, w, theta, U, metric=metric),
          model.metric_matvec(X, y, w, theta, U, metric=metric))
    if metric == "model":
        G = model.model_fisher(X, theta, w)
        close(model.model_fisher(rows, theta, w), G)
        close(model.metric_matvec(rows, y, w, theta, U, metric=metric), G @ U)
        close(model.model_fisher(rows, theta), model.model_fisher(X, theta))


def test_initial_params_and_monte_carlo_factors_on_sparse():
    rng = np.random.default_rng(1)
    rows = random_rows(N_ROWS, D_FEATURES, np.float64, seed=1)
    model = make_model("poisson", D_FEATURES)
    y = targets("poisson", N_ROWS, rng)
    assert_allclose(model.initial_params(rows, y, None),
                    model.initial_params(dense_of(rows), y, None))
    close(model.monte_carlo_factors(rows, np.zeros(model.n_params), np.random.default_rng(0), 2),
          model.monte_carlo_factors(dense_of(rows), np.zeros(model.n_params),
                                    np.random.default_rng(0), 2))


# -- the kernel variant and bad batches --------------------------------------------------------
def test_variant_rule_by_rows_non_zeros_and_width(monkeypatch):
    import natgrad_stream.models.base as base

    monkeypatch.setattr(base, "num_threads", lambda: 2)
    model = make_model("logistic", 100_000)
    sp_ = {"grad_t": np.zeros((2, 1))}

    def rows(n, per_row):
        indptr = np.arange(n + 1, dtype=np.int64) * per_row
        return SparseRows(np.ones(n * per_row), np.zeros(n * per_row, np.int32), indptr,
                          100_000)

    pick = base.use_sparse_parallel
    assert not pick(model, rows(1024, 50), "diagonal", "model", None, sp_)  # few rows
    assert not pick(model, rows(8192, 1), "diagonal", "model", None, sp_)  # little work
    assert not pick(model, rows(8192, 50), "diagonal", "model", None, sp_)  # < 1M a thread
    assert pick(model, rows(65536, 50), "diagonal", "model", None, sp_)
    assert pick(model, rows(65536, 50), "diagonal", None, None, sp_)
    assert not pick(model, rows(65536, 50), "full", "model", None, sp_)  # wide full: serial
    assert not pick(model, rows(65536, 50), "diagonal", "model", False, sp_)
    assert pick(model, rows(16, 50), "diagonal", "model", True, sp_)


def test_bad_sparse_batches_are_named():
    model = make_model("logistic", 5)
    ws = model.new_workspace("diagonal")
    y = np.zeros(2)
    bad_index = SparseRows(np.ones(3), np.array([0, 5, 1], np.int32),
                           np.array([0, 1, 3], np.int64), 5)
    with pytest.raises(ValueError, match=r"row 1 has column index 5, outside 0 … 4"):
        model.accumulate(bad_index, y, None, np.zeros(6), metric="model", structure="diagonal",
                         ws=ws)
    with pytest.raises(ValueError, match=r"shape \(n, 5\), got \(2, 4\)"):
        model.loss(sp.csr_matrix(np.ones((2, 4))), y, np.zeros(6))
    decreasing = SparseRows(np.ones(3), np.zeros(3, np.int32), np.array([0, 2, 1], np.int64), 5)
    with pytest.raises(ValueError, match="indptr decreases at row 1"):
        model.loss(decreasing, y, np.zeros(6))
    short = SparseRows(np.ones(2), np.zeros(2, np.int32), np.array([0, 1, 3], np.int64), 5)
    with pytest.raises(ValueError, match="outside the 2 values"):
        model.loss(short, y, np.zeros(6))


def test_strided_and_wide_integer_arrays_are_made_canonical():
    model = make_model("logistic", 4)
    data = np.arange(1.0, 13.0)[::2]  # strided float64
    indices, indptr = np.array([0, 1, 3, 3, 0, 2]), np.array([0, 3, 6])  # int64
    X = np.zeros((2, 4))
    np.add.at(X, (np.repeat([0, 1], 3), indices), data)
    theta, y = np.linspace(-0.5, 0.5, 5), np.array([0.0, 1.0])
    close(model.loss(SparseRows(data, indices, indptr, 4), y, theta), model.loss(X, y, theta))


# -- models without CSR kernels ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["gaussian", "gaussian-mean", "ising", "ica", "mlp"])
def test_models_without_sparse_kernels_densify_small_batches(name):
    rng = np.random.default_rng(4)
    d = 4
    X = rng.standard_normal((200, d)) + np.arange(d)
    X[X < 0.3] = 0.0
    if name == "ising":
        X = (X > 1.0).astype(np.float64)
    model = make_model(name, d, **({"mixing": np.eye(d)} if name == "gaussian-mean" else {}))
    theta = model.start_params()
    if name in ("gaussian", "ica"):
        theta = model.initial_params(sp.csr_matrix(X), None, None)
        assert_allclose(theta, model.initial_params(X, None, None))
    y = rng.standard_normal(200) if model.requires_targets else None
    if name == "mlp":
        assert_allclose(model.initial_params(sp.csr_matrix(X), y, None),
                        model.initial_params(X, y, None))
    metric = model.default_metric
    ws_s, ws_d = model.new_workspace("full"), model.new_workspace("full")
    out_s = model.accumulate(SparseRows.from_scipy(sp.csr_matrix(X)), y, None, theta,
                             metric=metric, structure="full", ws=ws_s)
    out_d = model.accumulate(X, y, None, theta, metric=metric, structure="full", ws=ws_d)
    assert out_s == out_d
    assert np.array_equal(ws_s.grad, ws_d.grad) and np.array_equal(ws_s.fisher, ws_d.fisher)


def test_a_batch_too_large_to_densify_is_refused_with_its_figures():
    model = make_model("mlp", 40_000)
    n = 1000
    big = SparseRows(np.ones(n), np.arange(n, dtype=np.int32), np.arange(n + 1, dtype=np.int64),
                     40_000)
    with pytest.raises(ValueError, match=r"model 'mlp' has no sparse kernels; a batch of "
                                         r"1,000 rows × 40,000 features would take 0\.30 GiB "
                                         r"dense .*use a GLM .* or a smaller batch_size"):
        model.accumulate(big, np.zeros(n), None, model.init_params(), metric=None,
                         structure="diagonal", ws=model.new_workspace("diagonal", n_threads=1))


@pytest.mark.parametrize("metric", [None, "model", "empirical"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_feature_major_kernels_equal_the_dense_path(monkeypatch, metric, weighted):
    """Wide softmax models take the feature-major CSR kernels (θ transposed per batch);
    their sums, probabilities and Hessian-vector products equal the dense kernels'.
    """
    import natgrad_stream.models.softmax as softmax_module

    monkeypatch.setattr(softmax_module, "SOFTMAX_FEATURE_MAJOR_PARAMS", 0)
    rng = np.random.default_rng(7)
    M = sp.random(300, 40, density=0.1, random_state=8, format="csr", dtype=np.float32)
    X = SparseRows.from_scipy(M)
    dense = M.toarray()
    y = rng.integers(0, 5, 300).astype(float)
    w = rng.random(300) if weighted else None
    model = make_model("softmax", 40, n_classes=5)
    theta = rng.normal(0, 0.4, model.n_params)
    sums = []
    for batch in (X, dense):
        ws = model.new_workspace("diagonal")
        out = model.accumulate(batch, y, w, theta, metric=metric, structure="diagonal", ws=ws,
                               parallel=False if batch is dense else None)
        sums.append((np.array(out), ws.grad.copy(), ws.fisher.copy()))
    (o1, g1, f1), (o2, g2, f2) = sums
    np.testing.assert_allclose(o1, o2, rtol=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12 * np.abs(g2).max())
    np.testing.assert_allclose(f1, f2, rtol=1e-12, atol=1e-12 * np.abs(f2).max())
    np.testing.assert_allclose(model.predict_proba(X, theta), model.predict_proba(dense, theta),
                               rtol=1e-12, atol=1e-15)
    u = rng.standard_normal((model.n_params, 1))
    np.testing.assert_allclose(model.metric_matvec(X, y, w, theta, u, metric="model"),
                               model.model_fisher(dense, theta, w) @ u, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("structure", ["diagonal", "full"])
def test_glm_accumulate_metric_after_metric_free_batches(sparse, structure):
    """A metric-free batch skips clearing a metric buffer it knows is zero, yet the buffer
    is zeros after every metric-free batch and each metric batch's sums are its own.
    """
    rng = np.random.default_rng(3)
    model = make_model("logistic", D_FEATURES)
    rows = random_rows(N_ROWS, D_FEATURES, np.float64)
    X = rows if sparse else dense_of(rows)
    y = targets("logistic", N_ROWS, rng)
    theta = rng.standard_normal(model.n_params) * 0.3
    ws = model.new_workspace(structure, n_threads=1)
    fresh = model.new_workspace(structure, n_threads=1)
    for metric in ("model", None, None, "empirical", None, "model"):
        model.accumulate(X, y, None, theta, metric=metric, structure=structure, ws=ws,
                         parallel=False)
        model.accumulate(X, y, None, theta, metric=metric, structure=structure, ws=fresh,
                         parallel=False)
        if metric is None:
            assert not ws.fisher.any()
        else:
            assert ws.fisher.any()
        np.testing.assert_array_equal(ws.fisher, fresh.fisher)
        fresh = model.new_workspace(structure, n_threads=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_predictors_equal_numpy(dtype):
    """Each row's ``z = x·θ[:-1] + θ[-1]`` over a sub-range of a view's rows, as NumPy
    computes it on the dense rows.
    """
    from natgrad_stream.models._glm_sparse_kernels import linear_predictors

    rows = random_rows(N_ROWS, D_FEATURES, dtype)
    theta = np.random.default_rng(5).standard_normal(D_FEATURES + 1)
    want = dense_of(rows) @ theta[:-1] + theta[-1]
    out = np.full(N_ROWS - 20, np.nan)
    linear_predictors(rows.data, rows.indices, rows.indptr, theta, 10, N_ROWS - 10, out)
    close(out, want[10:N_ROWS - 10])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_glm_curvature_power_iteration_equals_numpy(weighted, lam):
    """The compiled power iteration of the curvature cap: the NumPy rounds
    ``v ← W⁻¹ (G_b + λ I_S) W⁻¹ v/‖v‖`` on the dense rows, ``ρ = ‖v‖``.
    """
    from natgrad_stream.models.penalty import L2Penalty

    rng = np.random.default_rng(8)
    model = make_model("logistic", D_FEATURES)
    rows = random_rows(N_ROWS, D_FEATURES, np.float32)
    y = targets("logistic", N_ROWS, rng)
    w = rng.random(N_ROWS) + 0.2 if weighted else None
    theta = rng.standard_normal(model.n_params) * 0.4
    inverse = rng.random(model.n_params) + 0.5
    v0 = rng.standard_normal(model.n_params)
    penalty = L2Penalty.for_model(model, lam)
    rho = model.curvature_power_iteration(rows, y, w, theta, inverse, penalty, v0[:, None],
                                          7, metric="model")
    Xt = np.hstack([dense_of(rows), np.ones((N_ROWS, 1))])
    z = Xt @ theta
    mu = 1.0 / (1.0 + np.exp(-z))
    wt = np.ones(N_ROWS) if w is None else w
    G = (Xt * (wt * mu * (1 - mu))[:, None]).T @ Xt / wt.sum()
    G[np.arange(D_FEATURES), np.arange(D_FEATURES)] += lam
    v = v0.copy()
    for _ in range(7):
        u = inverse * (v / np.linalg.norm(v))
        v = inverse * (G @ u)
    assert rho == pytest.approx(np.linalg.norm(v), rel=1e-12)
    # dense rows and other metrics: no compiled loop (the learner's generic one runs)
    assert model.curvature_power_iteration(dense_of(rows), y, w, theta, inverse, penalty, v0,
                                           7, metric="model") is None
    assert model.curvature_power_iteration(rows, y, w, theta, inverse, penalty, v0, 7,
                                           metric="empirical") is None


def test_learner_curvature_cap_compiled_equals_generic(monkeypatch):
    """A diagonal fit on sparse rows takes the same steps with the model's compiled power
    iteration as with the learner's generic loop (same ρ at every refresh).
    """
    from natgrad_stream.learner import NaturalGradientLearner

    rng = np.random.default_rng(4)
    X = sp.random(4_096, 300, density=0.05, format="csr", random_state=5)
    y = (rng.random(4_096) < 0.4).astype(float)
    runs, compiled = [], []
    for generic in (False, True):
        model = make_model("logistic", 300)
        if generic:
            monkeypatch.setattr(model, "curvature_power_iteration", lambda *a, **k: None)
        else:
            own = model.curvature_power_iteration

            def counted(*a, own=own, **k):
                compiled.append(own(*a, **k))
                return compiled[-1]

            monkeypatch.setattr(model, "curvature_power_iteration", counted)
        lr = NaturalGradientLearner(model, structure="diagonal", l2=1e-3, seed=0)
        caps = []
        for a in range(0, 4_096, 256):
            lr.step(X[a:a + 256], y[a:a + 256])
            caps.append(lr.state.step_cap)
        runs.append((lr.state.theta.copy(), caps))
    (fast, fast_caps), (slow, slow_caps) = runs
    assert fast_caps == pytest.approx(slow_caps, rel=1e-10)
    assert len(set(fast_caps)) > 2  # the cap was measured at several refreshes
    assert compiled and None not in compiled  # … by the compiled loop
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
