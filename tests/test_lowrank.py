"""The diagonal-plus-low-rank structure (``structure="lowrank"``, issue 18): its Nyström
sketch against a NumPy reference and its error bound, the whitener against the full
structure's where the sketch is exact, the fits it takes part in (train_loss equals
evaluate for each later-pass method), and resume equals uninterrupted.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from natgrad_stream.checkpoint import load_checkpoint, save_checkpoint
from natgrad_stream.errors import OptionError
from natgrad_stream.geometry.fisher import RunningFisher
from natgrad_stream.geometry.lowrank import (
    LowRankWhitener,
    SketchedMetric,
    draw_test_matrix,
    nystrom,
    scaled_factor,
    whiten_lowrank,
)
from natgrad_stream.geometry.whitening import whiten
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from tests.test_cli import run_cli


def _psd(P, rank, rng, scales=None):
    A = rng.standard_normal((P, rank))
    G = A @ A.T
    if scales is not None:
        G = G * np.outer(scales, scales)
    return G


def _reference_nystrom(G, T):
    """``Y (TᵀY)⁺ Yᵀ`` straight from the definition (no shift, a pseudo-inverse)."""
    Y = G @ T
    return Y @ np.linalg.pinv(T.T @ Y, hermitian=True) @ Y.T


def test_nystrom_equals_the_reference_and_is_exact_on_rank_at_most_k():
    rng = np.random.default_rng(0)
    P, k = 40, 8
    T = draw_test_matrix(np.ones(P), k)
    for rank in (3, 8):  # rank ≤ k: the sketch holds G exactly
        G = _psd(P, rank, rng)
        U, lam = nystrom(G @ T, T)
        A = (U * lam) @ U.T
        # (the core TᵀY is singular below rank k: round-off of its condition, ~1e12)
        assert_allclose(A, G, atol=1e-8 * np.abs(G).max())
        assert_allclose(A, _reference_nystrom(G, T), atol=1e-8 * np.abs(G).max())
    G = _psd(P, 30, rng)  # rank > k: the reference, and Â ⪯ G
    U, lam = nystrom(G @ T, T)
    A = (U * lam) @ U.T
    assert_allclose(A, _reference_nystrom(G, T), atol=1e-9 * np.abs(G).max())
    assert np.linalg.eigvalsh(G - A).min() > -1e-9 * np.abs(G).max()


def test_scaled_model_is_exact_on_rank_at_most_k_whatever_the_scales():
    """Raw scales over six decades: the scaled model ``E + ZZᵀ`` is ``D^-½GD^-½`` itself
    (``E`` round-off) when G has rank ≤ k, the test matrix drawn from another diagonal.
    """
    rng = np.random.default_rng(6)
    P, k = 40, 8
    scales = np.logspace(-3, 3, P)
    G = _psd(P, 6, rng, scales)
    T = draw_test_matrix(np.diag(G) * rng.uniform(0.5, 2.0, P), k)
    d, E, Z, zero = scaled_factor(SketchedMetric(np.diag(G).copy(), G @ T, T))
    S = G / np.sqrt(np.outer(d, d))
    assert zero == 0 and np.abs(E).max() < 1e-9
    assert_allclose(Z @ Z.T, S, atol=1e-9)


def test_nystrom_error_bound():
    """Tropp et al. (2017): E‖G − Â‖_* ≤ (1 + r/(k − r − 1)) ‖G − [G]_r‖_*; over seeds the
    mean error is within the bound (a sketch of the wrong columns would not be).
    """
    rng = np.random.default_rng(1)
    P, k, r = 120, 24, 8
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    s = np.geomspace(1.0, 1e-4, P)
    G = (Q * s) @ Q.T
    tail = s[r:].sum()
    errors = []
    for seed in range(10):
        T = np.random.default_rng(seed).standard_normal((P, k))
        U, lam = nystrom(G @ T, T)
        errors.append(np.abs(np.linalg.eigvalsh(G - (U * lam) @ U.T)).sum())
    assert np.mean(errors) <= (1 + r / (k - r - 1)) * tail
    assert np.mean(errors) < 0.5 * s.sum()


def test_running_sketch_of_batches_equals_the_sketch_of_their_union():
    rng = np.random.default_rng(2)
    P, k = 10, 4
    G1, G2 = _psd(P, 3, rng), _psd(P, 5, rng)
    f = RunningFisher(P, structure="lowrank", half_life=None, rank=k)
    T = f.test_for(np.diag(G1))
    for Gb, w in ((G1, 3.0), (G2, 5.0)):
        f.add(SketchedMetric(np.diag(Gb).copy(), Gb @ T, T), weight=w, rows=int(w))
    est = f.estimate()
    assert_allclose(est.diagonal, np.diag(G1 + G2) / 8.0)
    assert_allclose(est.sketch, (G1 + G2) @ T / 8.0)
    back = RunningFisher.from_state(f.state_dict())
    assert_array_equal(back.estimate().sketch, est.sketch)
    assert_array_equal(back.test, T)
    with pytest.raises(ValueError, match="its own test matrix"):
        f.add(SketchedMetric(np.diag(G1).copy(), G1 @ T, T.copy()), weight=1.0, rows=1)


def _sketched(G, k):
    T = draw_test_matrix(np.diag(G), k)
    return SketchedMetric(np.diag(G).copy(), G @ T, T)


@pytest.mark.parametrize("k", [12, 16])
def test_whitener_equals_the_full_structures_when_the_sketch_is_exact(k):
    """K ≥ P: Nyström is exact, the residual diagonal is round-off, and W is the full
    structure's symmetric root ``(Ĝ + εI)^½ D^½``.
    """
    rng = np.random.default_rng(3)
    P = 12
    G = _psd(P, 40, rng, np.logspace(-2, 2, P))
    full = whiten(G, damping=1e-6, floor=0.0)
    low = whiten_lowrank(_sketched(G, k), damping=1e-6, floor=0.0)
    assert_allclose(low.matrix, full.matrix, rtol=1e-6, atol=1e-9 * np.abs(full.matrix).max())
    g = rng.standard_normal(P)
    assert_allclose(low.natural_gradient(g), full.natural_gradient(g), rtol=1e-6)


def test_whitener_factors_the_diagonal_plus_low_rank_model_exactly():
    """Whatever the sketch, ``WᵀW = D^½(E + ε + ZZᵀ)D^½`` whose diagonal is the metric's
    (plus damping), and the maps are consistent: θ → φ → θ, and ``W⁻ᵀ`` is ``(W⁻¹)ᵀ``.
    """
    rng = np.random.default_rng(4)
    P, k = 30, 5
    scales = np.logspace(-3, 3, P)
    G = _psd(P, 60, rng, scales) + np.diag(scales**2)
    W = whiten_lowrank(_sketched(G, k), damping=1e-9, floor=0.0)
    M = W.matrix
    assert_allclose(np.diag(M.T @ M), np.diag(G) * (1 + 1e-9), rtol=1e-9)
    theta = rng.standard_normal(P)
    # θ → φ → θ in the coordinates W scales (its column norms a, over six decades here):
    # W = K diag(a) with K well conditioned, so the round trip's error there is a few
    # units of round-off times cond(K), whatever the scales (elementwise in θ it is not:
    # a coordinate of small a takes the round-off of the large ones, 1e-10 of itself on
    # some CPUs)
    a = np.linalg.norm(M, axis=0)
    err = np.linalg.norm(a * (W.theta(W.phi(theta)) - theta)) / np.linalg.norm(a * theta)
    assert err <= 64 * np.finfo(float).eps * np.linalg.cond(M / a)
    g = rng.standard_normal(P)
    assert_allclose(W.grad_phi(g), W.inverse.T @ g, rtol=1e-9)
    # with the diagonal alone (rank 0) it is the diagonal structure's whitener
    zero = SketchedMetric(np.diag(G).copy(), np.zeros((P, 0)), np.zeros((P, 0)))
    assert_allclose(whiten_lowrank(zero, damping=1e-9, floor=0.0).matrix,
                    np.diag(whiten(np.diag(G), damping=1e-9, floor=0.0).matrix), rtol=1e-12)
    back = LowRankWhitener.from_state(W.state_dict())
    assert_array_equal(back.phi(theta), W.phi(theta))
    # blocks of vectors (the drift's probes), and the drift of the metric it factors
    V = rng.standard_normal((P, 4))
    assert_allclose(W.theta(V), W.inverse @ V, rtol=1e-9, atol=1e-12 * np.abs(W.inverse).max())
    assert_allclose(W.grad_phi(V), W.inverse.T @ V, rtol=1e-9, atol=1e-9)
    assert W.drift(_sketched(G, k), rng, probes=4) < 1e-6
    assert W.drift(_sketched(4.0 * G, k), rng, probes=4) > 1.0


def test_first_whitener_equals_the_full_structures_on_a_batch_of_rank_at_most_k():
    """A learner's first refresh on one batch: with rank ≥ P the low-rank structure's
    natural gradient is the full structure's (enough rows that neither shrinks).
    """
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 6)) * np.logspace(-1, 1, 6) + 1.0
    y = (rng.random(400) < 0.4).astype(float)
    out = []
    for kw in (dict(structure="full"), dict(structure="lowrank", rank=7)):
        lr = NaturalGradientLearner(make_model("logistic", 6), batch_size=400, **kw)
        lr.step(X, y)
        out.append(lr.whitener.natural_gradient(np.arange(1.0, 8.0)))
    assert_allclose(out[1], out[0], rtol=1e-6)


@pytest.mark.parametrize("refine", ["newton-cg", "lbfgs"])
def test_default_fit_train_loss_equals_evaluate(small_zarr, tmp_path, capsys, refine):
    flags = ["--structure", "lowrank", "--rank", "2"]
    if refine != "newton-cg":  # (newton-cg is the default for the GLMs)
        flags += ["--refine", refine]
    code, summary, _ = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out",
                               tmp_path / "r", "--progress", "never", *flags)
    # (the L-BFGS hand-over whitens its rounds by the whole data's diagonal, as the
    # diagonal structure's does: on these data neither converges within the 50 passes)
    assert code == 0 and (summary["converged"] is True or refine == "lbfgs")
    code, scores, _ = run_cli(capsys, "evaluate", tmp_path / "r", small_zarr)
    assert abs(scores["log_loss"] - summary["train_loss"]) <= 1e-12 * summary["train_loss"]
    import json

    recorded = json.loads((tmp_path / "r" / "run.json").read_text())
    text = json.dumps(recorded)
    assert '"rank": 2' in text and '"structure": "lowrank"' in text
    assert f'"refine": "{refine}"' in text


@pytest.mark.parametrize("stop", [7 * 256, 12_000])
def test_resume_from_checkpoint_equals_uninterrupted(small_zarr, tmp_path, stop):
    kw = dict(structure="lowrank", rank=2, batch_size=256, seed=11)
    whole = NaturalGradientLearner(make_model("logistic", 3), **kw).fit(small_zarr, epochs=3)
    part = NaturalGradientLearner(make_model("logistic", 3), **kw)
    part.fit(small_zarr, epochs=3, max_samples=stop)
    assert part.result.interrupted
    save_checkpoint(tmp_path / "c.npz", part.state_dict())
    resumed = NaturalGradientLearner.from_state_dict(load_checkpoint(tmp_path / "c.npz"))
    resumed.fit(small_zarr, epochs=3)
    assert resumed.samples == whole.samples
    assert_array_equal(resumed.theta, whole.theta)
    assert resumed.rewhitens == whole.rewhitens
    assert resumed.result.train_loss == whole.result.train_loss


def test_lowrank_beats_the_diagonal_on_correlated_offset_features():
    """One pass on raw, correlated features far from zero: the diagonal ignores the
    intercept's coupling and the correlations; a rank-8 sketch holds most of them.
    """
    from natgrad_stream.data.datasets import FeatureModel

    d, n = 60, 6000
    fm = FeatureModel(d, 1)
    rng = np.random.default_rng(0)
    X = fm.sample(rng, n)
    z = (X - fm.offsets) @ (fm.coef_direction / fm.scales)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * z / z.std()))).astype(float)
    model = make_model("logistic", d)
    best = NaturalGradientLearner(model, structure="full").fit((X, y)).result.train_loss
    gaps = {}
    for st in ("diagonal", "lowrank"):
        lr = NaturalGradientLearner(model, structure=st, rank=8).fit((X, y), epochs=1)
        gaps[st] = model.loss(X, y, lr.theta) / best - 1
    assert gaps["lowrank"] < 0.5 * gaps["diagonal"]


def test_lowrank_refuses_robust_whitening_and_rank_zero():
    with pytest.raises(OptionError, match="eigh or ridge"):
        NaturalGradientLearner(make_model("logistic", 3), structure="lowrank",
                               whitening="robust")
    with pytest.raises(OptionError, match="rank must be >= 1"):
        NaturalGradientLearner(make_model("logistic", 3), structure="lowrank", rank=0)


def test_structure_auto_settles_on_lowrank_where_it_took_the_diagonal(monkeypatch):
    """The thresholds scaled down (full up to 10 parameters): a logistic model of P = 16 on
    too few dense rows for the full metric settles on lowrank, and fits as given it;
    sparse rows and a model without fast metric-vector products keep the diagonal.
    """
    from natgrad_stream.training import options as opts

    monkeypatch.setattr(opts, "AUTO_FULL_MAX_PARAMS", 10)
    monkeypatch.setattr(opts, "AUTO_FULL_HESSIAN_MAX_PARAMS", 40)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 15)) @ rng.standard_normal((15, 15)) + 3.0
    y = (rng.random(150) < 0.5) * 1.0
    auto = NaturalGradientLearner(make_model("logistic", 15), rank=4).fit((X, y), epochs=2)
    given = NaturalGradientLearner(make_model("logistic", 15), structure="lowrank",
                                   rank=4).fit((X, y), epochs=2)
    assert auto.structure == "lowrank" and auto.options()["structure"] == "lowrank"
    assert auto.effective_options["refine"] == "newton-cg"
    assert_array_equal(auto.theta, given.theta)
    assert opts.auto_structure_for_data(make_model("logistic", 15), 150, sparse=True) \
        == "diagonal"
    assert opts.auto_structure_for_data(make_model("ising", 6), 10**6, sparse=False) \
        == "diagonal"
