"""Running metric: mergeable sums, sample-clock EMA, bias correction, round trips."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.geometry.fisher import RunningFisher
from natgrad_stream.models import make_model


def _batches(k=5, n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n + i, d)), (rng.random(n + i) < 0.5).astype(float))
            for i in range(k)]


@pytest.mark.parametrize("structure", ["full", "diagonal"])
@pytest.mark.parametrize("metric", ["model", "empirical"])
def test_k_batches_equal_their_concatenation(structure, metric):
    model = make_model("logistic", 3)
    theta = np.array([0.3, -0.2, 0.1, 0.05])
    batches = _batches()
    ws = model.new_workspace(structure)
    streamed = RunningFisher(4, structure=structure, half_life=None)
    for X, y in batches:
        _, wsum = model.accumulate(X, y, None, theta, metric=metric, structure=structure, ws=ws)
        streamed.add(ws.fisher, weight=wsum, rows=len(y))
    X = np.vstack([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    whole = RunningFisher(4, structure=structure, half_life=None)
    _, wsum = model.accumulate(X, y, None, theta, metric=metric, structure=structure, ws=ws)
    whole.add(ws.fisher, weight=wsum, rows=len(y))
    assert_allclose(streamed.estimate(), whole.estimate(), rtol=1e-12)
    assert streamed.samples == whole.samples


def test_merge_of_workers_equals_single_stream():
    a = RunningFisher(2, half_life=None)
    b = RunningFisher(2, half_life=None)
    a.add(np.eye(2) * 3, weight=3, rows=3)
    b.add(np.eye(2) * 5, weight=1, rows=1)
    m = a.merge(b)
    assert_allclose(m.estimate(), np.eye(2) * 2)
    assert m.samples == 4


def test_ema_clock_is_in_samples_not_batches():
    """Same rows in batches of 10 or of 50 give nearly the same estimate."""
    rng = np.random.default_rng(0)
    vals = rng.random(1000) + np.linspace(0, 5, 1000)  # drifting statistic
    ests = []
    for b in (10, 50):
        f = RunningFisher(1, structure="diagonal", half_life=100.0)
        for i in range(0, 1000, b):
            f.add(np.array([vals[i:i + b].sum()]), weight=b, rows=b)
        ests.append(f.estimate()[0])
    assert ests[0] == pytest.approx(ests[1], rel=0.01)


def test_bias_correction_no_zero_init_bias():
    f = RunningFisher(1, structure="diagonal", half_life=10.0)
    f.add(np.array([7.0 * 3]), weight=3, rows=3)
    assert f.estimate()[0] == pytest.approx(7.0)  # not shrunk towards the zero start


def test_auto_half_life_grows_with_samples():
    f = RunningFisher(10, half_life="auto")
    assert f.current_half_life() == 200
    f.samples = 10_000
    assert f.current_half_life() == 2500


def test_state_round_trip_and_validation():
    f = RunningFisher(2, half_life=50.0)
    f.add(np.eye(2), weight=1, rows=1)
    g = RunningFisher.from_state(f.state_dict())
    assert_allclose(g.estimate(), f.estimate())
    with pytest.raises(ValueError):
        f.add(np.eye(3), weight=1, rows=1)
    with pytest.raises(ValueError):
        RunningFisher(2).estimate()
    with pytest.raises(ValueError):
        RunningFisher(2, half_life=-1)
