"""Newton–CG preconditioned by the low-rank structure's sketch (issue 18): the
preconditioner against NumPy's dense solve, and conjugate gradients on wide raw features
(offsets far from zero, correlated) that the diagonal-and-intercept preconditioner leaves
ill-conditioned.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.data.datasets import FeatureModel
from natgrad_stream.geometry.lowrank import SketchedMetric, draw_test_matrix, scaled_factor
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.optim.newton_cg import (
    arrow_preconditioner,
    lowrank_preconditioner,
    newton_direction,
)
from natgrad_stream.training.events import Callback


def _wide_logistic(d, n, seed=5):
    """Raw features of ``make-data --task logistic`` and labels from a true model."""
    fm = FeatureModel(d, 1)
    rng = np.random.default_rng(seed)
    X = fm.sample(rng, n)
    z = (X - fm.offsets) @ (fm.coef_direction / fm.scales)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * z / z.std()))).astype(float)
    return X, y


def _hessian(X, y, theta):
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    p = 1 / (1 + np.exp(-(Xt @ theta)))
    return Xt.T @ ((p * (1 - p))[:, None] * Xt) / X.shape[0], Xt.T @ (p - y) / X.shape[0]


def _sketched(H, k):
    D = np.diag(H).copy()
    T = draw_test_matrix(D, k)
    return SketchedMetric(D, H @ T, T)


def test_preconditioner_equals_the_dense_solve_of_its_model():
    """``M⁻¹r`` for ``M = D^½(E + ε + ZZᵀ)D^½`` (the sketch's model) is NumPy's solve."""
    rng = np.random.default_rng(3)
    P, k = 40, 6
    A = rng.standard_normal((P, 12)) * np.logspace(0, -2, 12)
    s = np.logspace(-1.5, 1.5, P)
    H = (A @ A.T + np.diag(rng.uniform(0.1, 1.0, P))) * np.outer(s, s)
    G = _sketched(H, k)
    d, E, Z, _ = scaled_factor(G)
    eps = 1e-9 * float(np.mean(E + np.einsum("ij,ij->i", Z, Z)))
    M = np.sqrt(np.outer(d, d)) * (np.diag(E + eps) + Z @ Z.T)
    solve = lowrank_preconditioner(G, damping=1e-9, floor=1e-12)
    R = rng.standard_normal((P, 3))
    for r in R.T:
        assert_allclose(solve(r), np.linalg.solve(M, r), rtol=1e-8, atol=0)


def test_preconditioner_is_the_inverse_when_the_sketch_holds_every_direction():
    rng = np.random.default_rng(4)
    X, y = _wide_logistic(20, 400)
    H, _ = _hessian(X, y, np.zeros(21))
    solve = lowrank_preconditioner(_sketched(H, 21), damping=1e-12, floor=1e-14)
    # (H's condition is 1e8 and the Nyström core is shifted by 1e-13·‖Y‖: residuals of
    # a few 1e-6, where the diagonal alone leaves residuals of order 1)
    for r in rng.standard_normal((21, 3)).T:
        assert np.linalg.norm(H @ solve(r) - r) <= 1e-4 * np.linalg.norm(r)
        assert np.linalg.norm(H @ (r / np.diag(H)) - r) > 0.1 * np.linalg.norm(r)


def _optimum(X, y):
    theta = np.zeros(X.shape[1] + 1)
    for _ in range(30):
        H, g = _hessian(X, y, theta)
        theta = theta - np.linalg.solve(H, g)
    return theta


def _condition(H, solve):
    """The condition number of ``M⁻¹H`` (similar to SPD: real eigenvalues)."""
    ev = np.sort(np.linalg.eigvals(np.column_stack([solve(c) for c in H.T])).real)
    return ev[-1] / ev[0]


def test_lowrank_preconditioned_cg_solves_more_of_the_newton_step_in_fewer_products():
    """At d = 100 raw features on the way to the optimum: the diagonal-and-intercept
    preconditioner leaves condition 1e7 (the intercept's Schur complement is not positive,
    so it is the diagonal's), the rank-16 sketch's 1e4; CG to the forcing term then needs
    fewer products and solves more of the Newton decrement.
    """
    X, y = _wide_logistic(100, 1000)
    H, g = _hessian(X, y, 0.9 * _optimum(X, y))
    q_star = 0.5 * g @ np.linalg.solve(H, -g)  # the quadratic model's least value, < 0

    def solved(d):
        return (g @ d + 0.5 * d @ H @ d) / q_star

    old_pc = arrow_preconditioner(np.diag(H).copy(), H[:, -1], 100)
    new_pc = lowrank_preconditioner(_sketched(H, 16), damping=1e-9, floor=1e-10)
    assert _condition(H, new_pc) < 1e-2 * _condition(H, old_pc)
    old = newton_direction(g, old_pc, lambda v: H @ v, scale=1.0)
    new = newton_direction(g, new_pc, lambda v: H @ v, scale=1.0)
    assert new[2] and old[2]
    assert new[1] < old[1] and solved(new[0]) > max(0.9, solved(old[0]))


class _Events(Callback):
    def __init__(self):
        self.events = []

    def on_batch_end(self, learner, info, cursor):
        self.events.extend(info.events)


@pytest.mark.parametrize("rank", [16, 64])
def test_default_lowrank_fit_converges_in_few_passes_on_wide_raw_features(rank):
    """The default fit (newton-cg after the first pass) of d = 100 raw features: with the
    diagonal-and-intercept preconditioner it took 48 passes and 4,133 products at rank 16,
    32 and 2,779 at rank 64 (directions cut at the 100-product cap); preconditioned by
    the pass's sketch, 10 and 381, 9 and 82.
    """
    X, y = _wide_logistic(100, 1000)
    cb = _Events()
    lr = NaturalGradientLearner(make_model("logistic", 100), structure="lowrank", rank=rank)
    lr.fit((X, y), callbacks=[cb])
    products = [e["cg_products"] for e in cb.events if e.get("event") == "pass"
                and "cg_products" in e]
    assert lr.result.converged and lr.result.epochs <= 15
    assert sum(products) < 600 and max(products) < 100
    assert abs(lr.model.loss(X, y, lr.theta) - lr.result.train_loss) \
        <= 1e-12 * lr.result.train_loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_metric_matvec_in_row_blocks_equals_the_closed_form(monkeypatch, dtype):
    """The GLMs' dense ``G U`` converts rows to float64 a block at a time (no stacked
    float64 copy of the batch): blocks of 7 rows, weighted, against ``X̃ᵀ diag(c) X̃ U``.
    """
    from natgrad_stream.models import glm

    monkeypatch.setattr(glm, "MATVEC_BLOCK_BYTES", 7 * 8 * 12)
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((50, 12)) * 3 + 1).astype(dtype)
    y = (rng.random(50) < 0.4).astype(float)
    w = rng.uniform(0.5, 2.0, 50)
    model = make_model("logistic", 12)
    theta = rng.standard_normal(13) * 0.1
    U = rng.standard_normal((13, 3))
    Xt = np.hstack([X.astype(np.float64), np.ones((50, 1))])
    p = 1 / (1 + np.exp(-(Xt @ theta)))
    expect = Xt.T @ ((w * p * (1 - p))[:, None] * (Xt @ U)) / w.sum()
    assert_allclose(model.metric_matvec(X, y, w, theta, U, metric="model"), expect,
                    rtol=1e-12, atol=1e-14)


def test_later_passes_sketch_a_wider_rank_than_the_stream():
    """A later pass sketches the whole data's metric with ``REFINE_RANK_FACTOR·rank``
    columns (the stream's test matrix widened, the same for every pass): at d = 300 raw
    features, 3,000 rows, rank 64, the fit took 10 passes and 492 products with the
    stream's 64 columns (4 directions cut at the 100-product cap), 8 and 41 with 256.
    """
    from natgrad_stream._constants import REFINE_RANK_FACTOR
    from natgrad_stream.geometry.lowrank import widen_test_matrix

    X, y = _wide_logistic(300, 3000)
    cb = _Events()
    lr = NaturalGradientLearner(make_model("logistic", 300), structure="lowrank")
    lr.fit((X.astype(np.float32), y), callbacks=[cb])
    products = [e["cg_products"] for e in cb.events if e.get("event") == "pass"
                and "cg_products" in e]
    assert lr.result.converged and lr.result.epochs <= 9
    assert sum(products) < 100, products
    assert lr.state.whitener.basis.shape[1] == REFINE_RANK_FACTOR * lr.rank
    # widening keeps the stream's columns and is a function of them alone
    T = lr.state.fisher.test
    wide = widen_test_matrix(T, 256)
    assert_allclose(wide[:, :64], T, rtol=0, atol=0)
    assert_allclose(widen_test_matrix(T.copy(), 256), wide, rtol=0, atol=0)
    assert widen_test_matrix(T, 64) is T


def test_a_capped_conjugate_gradient_solve_doubles_the_next_cap(monkeypatch):
    """A direction that used every product allowed (each a pass over the data) was cut
    short: the next pass may take twice as many (up to ``CG_MAX_ITERATIONS_LIMIT``),
    so the solves reach the spectrum's tail instead of repeating their first iterations
    every pass (with a fixed cap of 4 products this fit had not converged after 60
    passes). The cap is part of the checkpointed state.
    """
    import natgrad_stream.training.learner as learner_module

    monkeypatch.setattr(learner_module, "CG_MAX_ITERATIONS", 4)
    X, y = _wide_logistic(100, 1000)
    cb = _Events()
    lr = NaturalGradientLearner(make_model("logistic", 100), structure="lowrank", rank=2)
    lr.fit((X, y), callbacks=[cb], epochs=60)
    passes = [e for e in cb.events if e.get("event") == "pass" and "cg_products" in e]
    caps = [e["cg_cap"] for e in passes]
    assert caps[0] == 4 and max(caps) > 4
    for a, b, e in zip(caps, caps[1:], passes, strict=False):
        assert b == (min(2 * a, learner_module.CG_MAX_ITERATIONS_LIMIT)
                     if e["cg_products"] >= a and e["cg_curvature_ok"] else a)
    assert lr.result.converged and lr.result.epochs < 30
    assert abs(lr.model.loss(X, y, lr.theta) - lr.result.train_loss) \
        <= 1e-12 * lr.result.train_loss
    back = NaturalGradientLearner.from_state_dict(lr.state_dict())
    assert back.state.cg_cap == lr.state.cg_cap == max(caps)
