"""Learning on sparse rows: stability of the first pass, the default fit's optimum."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize

from natgrad_stream.geometry import shrinkage
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model


def _sparse_logistic(n=20_000, d=20_000, k=20, seed=0):
    """Rows of ``k`` standard-normal non-zeros among ``d`` features, labels from a known
    model (every feature is rare: about ``n·k/d`` rows each).
    """
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.choice(d, k, replace=False) for _ in range(n)])
    X = sp.csr_matrix((rng.standard_normal(n * k), cols, np.arange(0, n * k + 1, k)),
                      shape=(n, d))
    beta = rng.normal(0, 1.0, d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ beta) / np.sqrt(k)))).astype(float)
    return X, y


def _objective(X, y, l2):
    def f(t):
        z = X @ t[:-1] + t[-1]
        r = 1 / (1 + np.exp(-z)) - y
        val = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * t[:-1] @ t[:-1]
        g = np.concatenate([X.T @ r / len(y) + l2 * t[:-1], [r.mean()]])
        return val, g
    return f


def test_first_pass_on_rare_features_is_stable(monkeypatch):
    """Most features are absent from the first batches; without the diagonal's evidence
    prior their first natural steps divide by a metric of zero or one row (the step of
    3 exploded to non-finite parameters on 10⁵ features).
    """
    X, y = _sparse_logistic(n=20_000, d=100_000, k=20)  # a first batch sees 18% of them
    lr = NaturalGradientLearner(make_model("logistic", X.shape[1]), structure="diagonal")
    lr.fit((X, y), epochs=1)
    J = _objective(X, y, 0.0)
    assert np.isfinite(lr.theta).all()
    assert J(lr.theta)[0] < np.log(2)  # better than the start (J = log 2 at θ = 0)


def test_evidence_prior_is_one_average_row_per_coordinate():
    g = np.array([0.0, 0.0, 2e-4, 4e-4, 1e20, 0.5])  # the last is the intercept, left alone
    nu = shrinkage.add_evidence_prior(g, rows=100.0, density=0.01, coords=np.arange(5))
    # the median over the features seen: unseen ones and a huge column do not move it
    assert nu == pytest.approx(4e-4 / (100 * 0.01))
    np.testing.assert_allclose(g, [nu, nu, 2e-4 + nu, 4e-4 + nu, 1e20, 0.5])
    dense = np.array([1.0, 3.0])
    assert shrinkage.add_evidence_prior(dense, rows=1000.0, density=1.0,
                                        coords=np.arange(2)) == 0.0
    np.testing.assert_array_equal(dense, [1.0, 3.0])


def test_evidence_prior_on_a_slice_of_coordinates_equals_the_index_array():
    rng = np.random.default_rng(0)
    g = rng.random(20_001) * (rng.random(20_001) < 0.3)
    by_index, by_slice = g.copy(), g.copy()
    nu = shrinkage.add_evidence_prior(by_index, 50.0, 1e-3, np.arange(3, 20_000))
    assert shrinkage.add_evidence_prior(by_slice, 50.0, 1e-3, slice(3, 20_000)) == nu > 0
    np.testing.assert_array_equal(by_slice, by_index)


def test_default_fit_reaches_the_penalized_optimum_on_sparse_rows():
    X, y = _sparse_logistic(n=8_000, d=3_000, k=10, seed=1)
    l2 = 1e-3
    lr = NaturalGradientLearner(make_model("logistic", X.shape[1]), l2=l2)
    assert lr.structure == "diagonal"  # P > 2,048: auto
    lr.fit((X, y))
    f = _objective(X, y, l2)
    ref = minimize(f, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20_000})
    assert f(lr.theta)[0] <= ref.fun * (1 + 1e-6)
    assert lr.result.converged


def test_newton_cg_interrupted_mid_direction_resumes_exactly(monkeypatch):
    """A stop requested during the conjugate-gradient passes leaves the state as at the
    pass's start; the resumed fit equals the uninterrupted one.
    """
    import natgrad_stream.training.learner as L

    X, y = _sparse_logistic(n=6_000, d=2_500, k=8, seed=3)

    def fresh():
        return NaturalGradientLearner(make_model("logistic", X.shape[1]), l2=1e-3)

    whole = fresh().fit((X, y), epochs=4)
    calls = {"n": 0}
    real = L.metric_vector_pass

    def stopping(lr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            lr.request_stop()
        return real(lr, *a, **k)

    monkeypatch.setattr(L, "metric_vector_pass", stopping)
    part = fresh().fit((X, y), epochs=4)
    assert part.result.interrupted
    monkeypatch.setattr(L, "metric_vector_pass", real)
    part.fit((X, y), epochs=4)
    np.testing.assert_array_equal(part.theta, whole.theta)
    assert part.state.samples == whole.state.samples


def test_sparse_store_fit_resumed_from_a_checkpoint_equals_uninterrupted(tmp_path, capsys):
    """A sparse store's run stopped mid-pass (--max-samples), resumed from its checkpoint
    by the command line, ends where the uninterrupted run does (within one machine).
    """
    import json

    from natgrad_stream.app.cli import main

    store = tmp_path / "sp.zarr"
    assert main(["make-data", str(store), "--task", "logistic", "--rows", "6000",
                 "--features", "3000", "--density", "0.003", "--chunk-rows", "1000",
                 "--overwrite"]) == 0
    common = ["--model", "logistic", "--l2", "1e-3", "--epochs", "3", "--progress", "never"]
    assert main(["fit", str(store), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["fit", str(store), "--out", str(tmp_path / "b"), *common,
                 "--max-samples", "2500"]) == 0
    assert main(["fit", str(store), "--out", str(tmp_path / "b"), "--resume", *common]) == 0
    capsys.readouterr()
    params = []
    for run in ("a", "b"):
        assert main(["params", str(tmp_path / run)]) == 0
        params.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert params[0] == params[1]


def test_anndata_store_softmax_reports_its_categories(tmp_path, capsys):
    """`fit cells.zarr --x X --y obs/cell_type`: one class per category (also one no row
    holds), and `params` names them in class order.
    """
    import json

    import zarr

    from natgrad_stream.app.cli import main
    from natgrad_stream.data.sparse_writer import write_csr_matrix

    rng = np.random.default_rng(5)
    X = sp.random(1500, 60, density=0.1, format="csr", random_state=6, dtype=np.float32)
    codes = rng.integers(0, 3, 1500).astype(np.int8)
    store = zarr.open_group(tmp_path / "cells.zarr", mode="w", zarr_format=3)
    write_csr_matrix(store, "X", X)
    cat = store.create_group("obs").create_group(
        "cell_type", attributes={"encoding-type": "categorical", "encoding-version": "0.2.0"})
    cat.create_array("codes", shape=codes.shape, dtype="int8")[...] = codes
    cat.create_array("categories", shape=(4,), dtype=str)[...] = np.array(
        ["B cell", "T cell", "NK", "unseen"], dtype=object)
    assert main(["fit", str(tmp_path / "cells.zarr"), "--model", "softmax", "--x", "X",
                 "--y", "obs/cell_type", "--l2", "1e-2", "--epochs", "3", "--out",
                 str(tmp_path / "run"), "--progress", "never"]) == 0
    capsys.readouterr()
    assert main(["params", str(tmp_path / "run")]) == 0
    params = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert params["classes"] == ["B cell", "T cell", "NK", "unseen"]
    assert len(params["coef"]) == 4
