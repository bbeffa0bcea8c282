"""Optimizers (generic checks over all of them) and re-whitening schedules."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.optim import OPTIMIZERS, make_optimizer, step_size
from natgrad_stream.schedule import RefreshSchedule, ScheduleState
from natgrad_stream.whitening import whiten


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_generic_contract(name):
    opt = make_optimizer(name)
    state = opt.init(3)
    phi = np.array([1.0, -2.0, 0.5])
    grad = np.array([0.1, 0.2, -0.3])
    phi0, grad0 = phi.copy(), grad.copy()
    new = opt.step(phi, grad, state, rows=10, samples=10)
    assert_allclose(phi, phi0)  # inputs unchanged
    assert_allclose(grad, grad0)
    assert np.all(np.isfinite(new)) and state["steps"] == 1
    # descent: the step has a negative inner product with the gradient
    assert (new - phi0) @ grad0 < 0
    # deterministic: same inputs, same output
    s2 = opt.init(3)
    assert_allclose(opt.step(phi0, grad0, s2, rows=10, samples=10), new)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_transport_with_identity_maps_is_a_no_op(name):
    opt = make_optimizer(name)
    state = opt.init(2)
    opt.step(np.zeros(2), np.array([1.0, 2.0]), state, rows=1, samples=1)
    before = {k: np.copy(v) for k, v in state.items()}
    opt.transport(state, np.eye(2), np.eye(2))
    for k in before:
        assert_allclose(state[k], before[k])


def test_momentum_velocity_transport_preserves_theta_motion():
    A = whiten(np.array([[4.0, 1.0], [1.0, 2.0]]))
    B = whiten(np.array([[1.0, 0.2], [0.2, 9.0]]))
    opt = make_optimizer("momentum")
    state = opt.init(2)
    opt.step(np.zeros(2), np.array([1.0, -1.0]), state, rows=1, samples=1)
    motion_theta = A.theta(state["velocity"])
    opt.transport(state, A.vector_map_to(B), A.covector_map_to(B))
    assert_allclose(B.theta(state["velocity"]), motion_theta, rtol=1e-10)


def test_step_size_schedules_are_in_samples():
    assert step_size(1.0, "harmonic", 100, 100) == 1.0
    # batch-size independent: per-sample rate 1/t
    assert step_size(1.0, "harmonic", 10, 1000) == pytest.approx(0.01)
    assert step_size(0.5, "sqrt", 25, 100) == pytest.approx(0.25)
    assert step_size(0.3, "constant", 1, 10) == 0.3


def test_sgd_harmonic_in_white_quadratic_is_the_running_mean():
    """With ∇φJ = φ − target_k and η_k = b/t, φ after k steps is the mean of the targets."""
    opt = make_optimizer("sgd")
    state = opt.init(1)
    rng = np.random.default_rng(0)
    targets = rng.standard_normal(50)
    phi = np.array([123.0])
    for k, t in enumerate(targets, 1):
        phi = opt.step(phi, phi - t, state, rows=4, samples=4 * k)
    assert_allclose(phi[0], targets.mean(), rtol=1e-12)


def test_bad_optimizer_options():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop")
    with pytest.raises(ValueError):
        make_optimizer("sgd", lr=-1)
    with pytest.raises(ValueError):
        make_optimizer("momentum", beta=1.0)


def test_every_and_geometric_schedules():
    s = RefreshSchedule.parse(100)
    assert s.clock_due(0)
    s.refreshed(10)
    assert not s.clock_due(109) and s.clock_due(110)
    g = RefreshSchedule.parse("geometric:2")
    g.refreshed(256)
    assert not g.clock_due(511) and g.clock_due(512)
    n = RefreshSchedule.parse("never")
    n.refreshed(1)
    assert not n.clock_due(10**12)


def test_drift_schedule_checks_every_k_batches():
    s = RefreshSchedule.parse("drift:0.2")
    s.check_every = 3
    assert [s.drift_check_due() for _ in range(6)] == [False, False, True] * 2
    assert s.drift_exceeded(0.3) and not s.drift_exceeded(0.1)


def test_auto_schedule_and_state_round_trip():
    s = RefreshSchedule.parse("auto")
    assert s.factor == 2.0 and s.drift is not None
    s.refreshed(1000)
    st = ScheduleState.from_dict(s.state.to_dict())
    assert st.next_time == 2000
    never = RefreshSchedule.parse("never")
    never.refreshed(5)
    assert math.isinf(ScheduleState.from_dict(never.state.to_dict()).next_time)


@pytest.mark.parametrize("spec", ["weekly", "every:x", "geometric:0.5", "drift:-1"])
def test_bad_schedule_specs(spec):
    with pytest.raises(ValueError):
        RefreshSchedule.parse(spec)
