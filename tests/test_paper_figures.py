"""scripts/paper_figures.py: what each panel of the paper's Figures 1 and 2 shows, checked
numerically against closed forms written from the paper (not from the project's code).
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from numpy.testing import assert_allclose

from natgrad_stream.geometry.whitening import whiten

# The paper's numbers (section 1.1/1.2), typed in independently of the code under test.
A = np.array([[3.0, 1.0 / 3.0], [1.0 / 3.0, 0.0]])
G = np.array([[9.0 + 1.0 / 9.0, 1.0], [1.0, 1.0 / 9.0]])
THETA_INIT = np.array([1.0, -1.0])


@pytest.fixture(scope="module")
def pf(load_script):
    return load_script("paper_figures")


@pytest.fixture(scope="module")
def problem(pf):
    return pf.PaperProblem()


@pytest.fixture(scope="module")
def paths(pf, problem):
    return pf.descent_paths(problem)


def _J(X, theta):
    """Mean negative log-likelihood of eq. 2, straight from eq. 1."""
    r = X - A @ theta
    return float(np.mean(0.5 * np.sum(r * r, axis=1)) + np.log(2 * np.pi))


def test_problem_is_the_papers_example(pf, problem):
    X = problem.X
    assert X.shape == (pf.N_SAMPLES, 2)
    assert_allclose(X.mean(axis=0), [0.0, 0.0], atol=1e-14)  # antithetic: x̄ = Aθ_true
    assert_allclose(np.cov(X, rowvar=False), np.eye(2), atol=0.08)
    assert_allclose(problem.G, G, rtol=1e-14)
    assert_allclose(problem.whitener.matrix, scipy.linalg.sqrtm(G).real, rtol=1e-12)
    assert_allclose(problem.theta_hat, np.linalg.solve(A, X.mean(axis=0)), atol=1e-13)
    assert_allclose(problem.theta_hat, [0.0, 0.0], atol=1e-13)
    for theta in ([0.3, -0.7], [-1.2, 0.4]):
        theta = np.array(theta)
        e = 1e-5 * np.eye(2)
        fd = [(_J(X, theta + e[k]) - _J(X, theta - e[k])) / 2e-5 for k in range(2)]
        assert_allclose(problem.gradient(theta), fd, rtol=1e-7)


def test_paths_match_closed_form_iterations(problem, paths):
    eta = paths["lr_steepest"]
    assert_allclose(eta, 1.0 / np.linalg.eigvalsh(G)[-1], rtol=1e-12)
    th = problem.theta_hat
    for t in (1, 10, 1000, len(paths["steepest"]) - 1):
        want = th + np.linalg.matrix_power(np.eye(2) - eta * G, t) @ (THETA_INIT - th)
        assert_allclose(paths["steepest"][t], want, atol=1e-10)
    t = np.arange(len(paths["natural"]))[:, None]
    want = th + (1.0 - paths["lr_natural"]) ** t * (THETA_INIT - th)
    assert_allclose(paths["natural"], want, atol=1e-13)


def test_figure1a_natural_is_straight_steepest_is_not(pf, problem, paths):
    th = problem.theta_hat
    dev_nat = pf.perpendicular_deviation(paths["natural"], THETA_INIT, th)
    dev_steep = pf.perpendicular_deviation(paths["steepest"], THETA_INIT, th)
    assert dev_nat.max() < 1e-12  # measured 3e-14
    assert dev_steep.max() > 0.5  # measured 0.69, after the first step
    dist_nat = np.linalg.norm(paths["natural"] - th, axis=1)
    dist_steep = np.linalg.norm(paths["steepest"] - th, axis=1)
    assert np.argmax(dist_nat < 1e-3) <= 12  # measured: 11 steps of η = 0.5
    assert dist_nat[-1] < 1e-8
    assert dist_steep[-1] > 0.1  # measured 0.25 still to go after 10,000 steps


def test_figure1b_kl_natural_far_faster(pf, problem, paths):
    kl = pf.kl_curves(paths, problem)
    # the plotted KL is the excess objective J(θ) − J(θ̂) = ½(θ − θ̂)ᵀG(θ − θ̂)
    for t in (0, 1, 5, 100):
        theta = paths["steepest"][t]
        d = theta - problem.theta_hat
        assert_allclose(kl["steepest"][t], 0.5 * d @ G @ d, rtol=1e-12)
        assert_allclose(kl["steepest"][t],
                        _J(problem.X, theta) - _J(problem.X, problem.theta_hat), rtol=1e-8,
                        atol=1e-12)
    assert_allclose(kl["natural"][0], 0.5 * (8 / 3) ** 2 + 0.5 * (1 / 3) ** 2, rtol=1e-12)
    n_nat = pf.steps_to_reach(kl["natural"], 1e-4)
    n_steep = pf.steps_to_reach(kl["steepest"], 1e-4)
    assert n_nat is not None and n_nat <= 10  # measured 8
    assert n_steep is not None and n_steep > 5000  # measured 7223
    assert np.all(np.diff(kl["natural"]) < 0) and np.all(np.diff(kl["steepest"]) < 0)


def test_figure1c_theta_field_points_away_from_optimum(pf, problem):
    f = pf.gradient_field(problem, whitened=False)
    P = f["points"]
    assert P.shape == (pf.GRID_POINTS, pf.GRID_POINTS, 2)
    want = -(P - problem.theta_hat) @ G.T
    assert_allclose(f["arrows"], want, atol=1e-12)
    ang = pf.angles_to_target(P, f["arrows"], f["target"])
    assert not np.any(np.isnan(ang))
    assert np.mean(ang > np.pi / 4) >= 0.4  # measured 0.50 of the 144 points beyond 45°
    assert ang.max() > np.deg2rad(80)  # measured 88.5°


def test_figure1d_phi_field_points_at_phi_true(pf, problem):
    f = pf.gradient_field(problem, whitened=True)
    assert_allclose(f["target"], [0.0, 0.0], atol=1e-13)  # φ_true = G^½θ_true = 0
    assert_allclose(f["start"], scipy.linalg.sqrtm(G).real @ THETA_INIT, rtol=1e-12)
    P = f["points"]
    assert_allclose(f["arrows"], -P, atol=1e-12)  # −∇φJ = −(φ − φ_true)
    ang = pf.angles_to_target(P, f["arrows"], np.zeros(2))
    assert np.nanmax(ang) < 1e-6  # measured 1.2e-14
    assert not np.any(np.isnan(ang))


def test_field_targets_the_fitted_optimum_on_ordinary_data(pf):
    X = pf.paper_data(400, seed=5, antithetic=False)
    pb = pf.PaperProblem(X)
    th = np.linalg.solve(A, X.mean(axis=0))
    assert_allclose(pb.theta_hat, th, atol=1e-12)
    assert np.linalg.norm(th) > 1e-3  # not θ_true: sampling error
    f = pf.gradient_field(pb, whitened=True, grid_points=6)
    assert_allclose(f["target"], scipy.linalg.sqrtm(G).real @ th, atol=1e-12)
    assert np.nanmax(pf.angles_to_target(f["points"], f["arrows"], f["target"])) < 1e-6


def test_figure2_whitening(pf):
    w = pf.whitening_sample()
    sigma = np.cov(w["x"], rowvar=False)
    assert_allclose(w["sigma"], sigma)
    assert np.abs(sigma - np.eye(2)).max() > 0.5  # measured: variances 3.25, 1.11; cov 1.77
    assert_allclose(np.cov(w["y"], rowvar=False), np.eye(2), atol=1e-10)
    inv_root = np.linalg.inv(scipy.linalg.sqrtm(sigma).real)
    assert_allclose(w["W"], inv_root, rtol=1e-10)
    assert_allclose(w["W"], w["W"].T, atol=1e-14)  # symmetric (zero-phase) whitening
    # whiten(M) factors M = WᵀW with W = M^½: so whiten(Σ).inverse is Σ^-½ as well, while
    # whiten(Σ).matrix = Σ^½ does not whiten.
    S = whiten(sigma, scale=False, damping=0.0, floor=0.0)
    assert_allclose(S.inverse, inv_root, rtol=1e-10)
    assert np.abs(np.cov(w["x"] @ S.matrix.T, rowvar=False) - np.eye(2)).max() > 1.0


def test_bad_input(pf, problem):
    with pytest.raises(ValueError, match="lr_steepest"):
        pf.descent_paths(problem, lr_steepest=-1.0)
    with pytest.raises(ValueError, match="theta_init"):
        pf.descent_paths(problem, theta_init=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="natural_steps"):
        pf.descent_paths(problem, natural_steps=0)
    with pytest.raises(TypeError, match="PaperProblem"):
        pf.gradient_field("data")
    with pytest.raises(ValueError, match="grid_points"):
        pf.gradient_field(problem, grid_points=1)
    with pytest.raises(ValueError, match="n_samples"):
        pf.paper_data(3)
    with pytest.raises(ValueError, match="covariance"):
        pf.whitening_sample(covariance=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="X must have shape"):
        pf.PaperProblem(np.zeros((10, 3)))


def test_render_writes_pngs(pf, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pf.main(["--out", str(tmp_path / "figs")])
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["figure1.png", "figure2.png"]
    for p in printed:
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
