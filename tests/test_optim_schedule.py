"""Optimizers (generic checks over all of them) and re-whitening schedules."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from natgrad_stream.geometry.schedule import RefreshSchedule, ScheduleState
from natgrad_stream.geometry.whitening import whiten
from natgrad_stream.optim.rules import OPTIMIZERS, make_optimizer, step_size


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_generic_contract(name):
    opt = make_optimizer(name)
    state = opt.init(3)
    phi = np.array([1.0, -2.0, 0.5])
    grad = np.array([0.1, 0.2, -0.3])
    phi0, grad0 = phi.copy(), grad.copy()
    state0 = {k: np.copy(v) for k, v in state.items()}
    new, new_state = opt.update(phi, grad, state, rows=10, samples=10)
    assert_allclose(phi, phi0)  # inputs unchanged, the state included (pure update)
    assert_allclose(grad, grad0)
    for k, v in state0.items():
        assert_array_equal(state[k], v)
    assert np.all(np.isfinite(new)) and new_state["steps"] == 1
    # descent: the step has a negative inner product with the gradient
    assert (new - phi0) @ grad0 < 0
    # deterministic: same inputs, same output
    again, _ = opt.update(phi0, grad0, opt.init(3), rows=10, samples=10)
    assert_array_equal(again, new)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_transport_with_identity_maps_is_a_no_op(name):
    opt = make_optimizer(name)
    _, state = opt.update(np.zeros(2), np.array([1.0, 2.0]), opt.init(2), rows=1, samples=1)
    before = {k: np.copy(v) for k, v in state.items()}
    moved = opt.transport(state, np.eye(2), np.eye(2))
    for k in before:
        assert_allclose(moved[k], before[k])
        assert_array_equal(state[k], before[k])  # pure: the input state is unchanged


def test_momentum_velocity_transport_preserves_theta_motion():
    A = whiten(np.array([[4.0, 1.0], [1.0, 2.0]]))
    B = whiten(np.array([[1.0, 0.2], [0.2, 9.0]]))
    opt = make_optimizer("momentum")
    _, state = opt.update(np.zeros(2), np.array([1.0, -1.0]), opt.init(2), rows=1, samples=1)
    motion_theta = A.theta(state["velocity"])
    state = opt.transport(state, A.vector_map_to(B), A.covector_map_to(B))
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
        phi, state = opt.update(phi, phi - t, state, rows=4, samples=4 * k)
    assert_allclose(phi[0], targets.mean(), rtol=1e-12)


def test_bad_optimizer_options():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop")
    with pytest.raises(ValueError):
        make_optimizer("sgd", lr=-1)
    with pytest.raises(ValueError):
        make_optimizer("momentum", beta=1.0)


def test_every_and_geometric_schedules():
    s, st = RefreshSchedule.parse(100), ScheduleState()
    assert s.clock_due(st, 0)
    s.refreshed(st, 10)
    assert not s.clock_due(st, 109) and s.clock_due(st, 110)
    g, gt = RefreshSchedule.parse("geometric:2"), ScheduleState()
    g.refreshed(gt, 256)
    assert not g.clock_due(gt, 511) and g.clock_due(gt, 512)
    n, nt = RefreshSchedule.parse("never"), ScheduleState()
    n.refreshed(nt, 1)
    assert not n.clock_due(nt, 10**12)


def test_drift_schedule_checks_every_k_batches():
    s, st = RefreshSchedule.parse("drift:0.2"), ScheduleState()
    s.check_every = 3
    assert [s.drift_check_due(st) for _ in range(6)] == [False, False, True] * 2
    assert s.drift_exceeded(0.3) and not s.drift_exceeded(0.1)


def test_auto_schedule_and_state_round_trip():
    s, state = RefreshSchedule.parse("auto"), ScheduleState()
    assert s.factor == 2.0 and s.drift is not None
    s.refreshed(state, 1000)
    st = ScheduleState.from_dict(state.to_dict())
    assert st.next_time == 2000
    never, nstate = RefreshSchedule.parse("never"), ScheduleState()
    never.refreshed(nstate, 5)
    assert math.isinf(ScheduleState.from_dict(nstate.to_dict()).next_time)
    assert RefreshSchedule.parse(s.config()).config() == s.config()


@pytest.mark.parametrize("spec", ["weekly", "every:x", "geometric:0.5", "drift:-1"])
def test_bad_schedule_specs(spec):
    with pytest.raises(ValueError):
        RefreshSchedule.parse(spec)
