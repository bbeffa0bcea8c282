"""``forget``: exponential forgetting for drifting streams, the drift alarm, and the
divergence guard that drift no longer trips.

The streams here change their true coefficients halfway (rows 0..N from one model, N..2N
from another), committed with ``append_rows`` before the follow run starts, so the batches
are the same on every run.
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
import zarr

from natgrad_stream.checkpoint import load_checkpoint
from natgrad_stream.data import FollowSource, append_rows
from natgrad_stream.errors import NumericalError, OptionError
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

from .test_cli import run_cli

D, N = 5, 50_000
B1 = np.array([1.0, -1.0, 0.5, 0.0, 0.5])
B2 = np.array([-1.0, 1.0, 0.5, 1.0, -0.5])


def _store(path, X, y):
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("X", shape=(0, X.shape[1]), chunks=(8192, X.shape[1]), dtype="float64")
    g.create_array("y", shape=(0,), chunks=(8192,), dtype=y.dtype)
    append_rows(path, X=X, y=y)
    return path


@pytest.fixture(scope="module")
def logistic_shift(tmp_path_factory):
    """A logistic stream whose coefficients (and intercept) change at row N, and the
    maximum-likelihood fit of its second half (θ₂, its mean loss L₂ there).
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2 * N, D))
    z = np.r_[X[:N] @ B1 + 0.3, X[N:] @ B2 - 0.3]
    y = (rng.random(2 * N) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    path = _store(tmp_path_factory.mktemp("forget") / "live.zarr", X, y)
    theta = NaturalGradientLearner(make_model("logistic", D), tol=1e-12).fit(
        (X[N:], y[N:].astype(float))).theta  # (converged: Fisher scoring to round-off)
    return path, X[N:], y[N:].astype(float), theta


def _logistic_loss(X, y, theta):
    z = X @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _follow(path, **options):
    learner = NaturalGradientLearner(make_model("logistic", D), **options)
    learner.fit(FollowSource(path, poll_seconds=0.01, idle_timeout=0.2))
    return learner


def test_forgetting_tracks_the_second_half_optimum(logistic_shift, caplog,
                                                  package_logging_as_imported):
    """The issue's criterion: with --forget the follow run ends within 1% of the second
    half's optimum (measured: 0.02%); without it, biased toward the first half (23%).

    Tolerances: the forgetting estimate weighs rows by ``2^(−age/H)``, an effective
    ``Σw²/(Σw)² = ln 2/(2H)`` share of one row, so its coefficients' standard error is about
    ``√(ln 2/(2H)·[G⁻¹]_jj)`` ≈ 0.02 at H = 5000 (G ≈ 0.2·I here), and the first half's
    rows weigh ``2^(−N/H) = 2^(−10)``: 0.1 on the coefficients is 5 standard errors, and
    the excess loss ``≈ P·ln 2/(4H)/L₂`` ≈ 0.04%.
    """
    path, X2, y2, theta2 = logistic_shift
    best = _logistic_loss(X2, y2, theta2)
    with caplog.at_level(logging.WARNING, logger="natgrad_stream"):
        forgetting = _follow(path, forget=5000)
    drift = [r for r in caplog.records if getattr(r, "natgrad_event", None) == "drift"]
    assert len(drift) == 1  # one line for the one change
    assert "drift: the mean loss of the last 8 batches" in drift[0].getMessage()
    gap = _logistic_loss(X2, y2, forgetting.theta) / best - 1
    assert 0 <= gap < 0.01
    assert np.abs(forgetting.theta - theta2).max() < 0.1
    # the summary's running loss is the recent one: close to the second half's optimum
    assert forgetting.result.running_loss == pytest.approx(best, rel=0.05)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="natgrad_stream"):
        plain = _follow(path)
    assert not [r for r in caplog.records if getattr(r, "natgrad_event", None) == "drift"]
    assert _logistic_loss(X2, y2, plain.theta) / best - 1 > 0.1
    assert np.abs(plain.theta - theta2).max() > 0.5


def test_a_forgetting_pass_over_a_stored_stream_reads_it_in_order(logistic_shift, caplog,
                                                                package_logging_as_imported):
    """``fit data --forget H`` (one pass, not follow mode) forgets in the rows' stored
    order, as a follow run would: it tracks the second half, where a shuffled chunk order
    forgot whichever chunks came first (coefficients off by 1 and more).
    """
    path, X2, y2, theta2 = logistic_shift
    best = _logistic_loss(X2, y2, theta2)
    with caplog.at_level(logging.WARNING, logger="natgrad_stream"):
        learner = NaturalGradientLearner(make_model("logistic", D), forget=5000).fit(path)
    assert np.abs(learner.theta - theta2).max() < 0.1
    assert 0 <= _logistic_loss(X2, y2, learner.theta) / best - 1 < 0.01
    assert len([r for r in caplog.records if getattr(r, "natgrad_event", None) == "drift"]) == 1


def test_the_step_clock_and_the_metric_forget_with_the_half_life(logistic_shift):
    path, *_ = logistic_shift
    learner = _follow(path, forget=5000)
    s = learner.state
    # the clock of the step schedule tends to b / (1 − 2^(−b/H)) ≈ H/ln 2 + b/2 rows
    # (harmonic steps of about b·ln 2/H)
    b = learner.batch_size
    assert s.forget_rows == pytest.approx(b / (1 - 0.5 ** (b / 5000)), rel=0.01)
    assert s.forget_rows == pytest.approx(5000 / math.log(2) + b / 2, rel=0.01)
    assert s.samples == 2 * N
    assert s.fisher.current_half_life() == 5000  # 'auto' would be 25,000 by now
    assert learner.state_dict()["fisher"]["limit"] == 5000.0


def _linear_shift(path):
    """A linear stream whose coefficients change at row N and whose targets jump by 20:
    the squared loss at the first half's fit rises ×130 above the loss at the start, far
    over the divergence guard's threshold (10× above it).
    """
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2 * N, D))
    y = np.r_[X[:N] @ B1, X[N:] @ B2 + 20.0] + 0.5 * rng.standard_normal(2 * N)
    return _store(path, X, y), X[N:], y[N:]


def test_drift_does_not_trip_the_divergence_guard_when_forgetting(tmp_path):
    """The issue's symptom: rows whose distribution shifts were taken for a divergence
    ('diverging … rolled back', and after three cuts the run failed); with forgetting the
    run follows the shift and ends at the second half's least-squares fit.
    """
    path, X2, y2 = _linear_shift(tmp_path / "lin.zarr")
    A = np.c_[X2, np.ones(len(X2))]
    theta2 = np.linalg.lstsq(A, y2, rcond=None)[0]

    def fit(**options):
        learner = NaturalGradientLearner(make_model("linear", D), **options)
        learner.fit(FollowSource(path, poll_seconds=0.01, idle_timeout=0.2))
        return learner

    with pytest.raises(NumericalError, match="diverging"), \
            pytest.warns(RuntimeWarning, match="rolled back"):
        fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no rollback warning
        learner = fit(forget=5000)
    assert np.abs(learner.theta - theta2).max() < 0.05
    gap = np.mean((A @ learner.theta - y2) ** 2) / np.mean((A @ theta2 - y2) ** 2) - 1
    assert 0 <= gap < 0.01


def test_a_real_divergence_is_still_caught_when_forgetting():
    """Windows above the guard's threshold are tolerated for 3 half-lives (a drift settles
    within them), not for ever: a step size 10⁶ too large still fails, rolled back.
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 3)) * [1.0, 30.0, 0.1] + [0.0, 5.0, 0.0]
    y = (rng.random(40_000) < 1 / (1 + np.exp(-X @ [1.0, 0.05, 2.0]))).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 3), lr=1e6, batch_size=500,
                                     forget=5000)
    with pytest.raises(NumericalError, match="longer than 3 half-lives of forgetting"), \
            pytest.warns(RuntimeWarning, match="rolled back"):
        learner.fit((X, y), epochs=1)
    assert _logistic_loss(X, y, learner.theta) < 10 * 0.7  # a good window's end


def test_forget_refuses_whole_data_passes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 2))
    y = (X[:, 0] > 0).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 2), forget=1000)
    with pytest.raises(OptionError, match="forget applies to streaming steps"):
        learner.fit((X, y), epochs=3)
    learner.fit((X, y))  # unset epochs: one streaming pass
    assert learner.result.epochs == 1 and learner.state.samples == 3000
    NaturalGradientLearner(make_model("logistic", 2), forget=1000,
                           refine="stream").fit((X, y), epochs=2)
    with pytest.raises(OptionError, match="forget"):
        NaturalGradientLearner(make_model("logistic", 2), optimizer="lbfgs", forget=1000)


def test_a_forgetting_pass_advises_no_resume_it_would_refuse(caplog,
                                                           package_logging_as_imported):
    """One streaming pass is what a forgetting fit over a file is (more whole-data passes
    are refused): no note may advise ``--resume --epochs 2``, which that refusal meets.
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 2))
    y = (rng.random(3000) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 2), forget=1000)
    with caplog.at_level(logging.WARNING, logger="natgrad_stream"):
        learner.fit((X, y))
    advice = [r.getMessage() for r in caplog.records if "--resume" in r.getMessage()]
    assert not advice, advice
    with pytest.raises(OptionError, match="forget applies to streaming steps"):
        learner.fit((X, y), epochs=2)  # what that advice would have done


def test_cli_follow_with_forget_resumes_exactly(logistic_shift, tmp_path, capsys):
    """``fit --follow --forget``: one drift line on stderr and a ``drift`` record in
    metrics.jsonl, no rollback; stopped part-way (``--max-samples``, which lands after the
    change) and resumed, it ends with the uninterrupted run's parameters, bit for bit.
    """
    path, X2, y2, theta2 = logistic_shift
    common = ("--follow", "--poll-seconds", 0.01, "--idle-timeout", 0.5, "--progress",
              "never")
    whole = tmp_path / "whole"
    code, summary, err = run_cli(capsys, "fit", path, "--model", "logistic", "--out", whole,
                                 "--forget", 5000, *common)
    assert code == 0, err
    assert summary["samples"] == 2 * N
    lines = [ln for ln in err.splitlines() if ": warning: drift:" in ln]
    assert len(lines) == 1 and "rolled back" not in err
    records = [json.loads(ln) for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    (drift,) = [r for r in records if r["event"] == "drift"]
    assert N < drift["samples"] < N + 16_384 and drift["forget"] == 5000
    assert not [r for r in records if r["event"] == "rollback"]
    assert json.loads((whole / "run.json").read_text())["fit_options"]["forget"] == 5000

    cut = tmp_path / "cut"
    code, first, err = run_cli(capsys, "fit", path, "--model", "logistic", "--out", cut,
                               "--forget", 5000, "--max-samples", 70_000, *common)
    assert code == 0 and first["interrupted"] and first["samples"] < 2 * N
    code, resumed, err = run_cli(capsys, "fit", path, "--out", cut, "--resume",
                                 "--idle-timeout", 0.5, "--progress", "never")
    assert code == 0, err
    a = load_checkpoint(whole / "checkpoint.npz")
    b = load_checkpoint(cut / "checkpoint.npz")
    np.testing.assert_array_equal(a["theta"], b["theta"])
    assert a["forget"] == b["forget"]
    assert resumed["running_loss"] == summary["running_loss"]
    code, _, err = run_cli(capsys, "fit", path, "--out", cut, "--resume", "--forget", 1000,
                           "--progress", "never")
    assert code == 2 and "forget" in err
