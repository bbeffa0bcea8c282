"""``--average`` does what it says: ``params`` and ``evaluate`` report the Polyak average
of θ when the run kept one (they reported the last iterate before).
"""

import numpy as np
from numpy.testing import assert_allclose

from natgrad_stream.checkpoint import load_checkpoint
from natgrad_stream.evaluate import evaluate
from natgrad_stream.models import make_model

from .test_cli import run_cli


def test_average_is_what_params_and_evaluate_report(small_zarr, tmp_path, capsys):
    plain, averaged = tmp_path / "plain", tmp_path / "avg"
    assert run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", plain,
                   "--optimizer", "adam")[0] == 0
    assert run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", averaged,
                   "--optimizer", "adam", "--average")[0] == 0
    state = load_checkpoint(averaged / "checkpoint.npz")
    mean = state["average"]["theta_sum"] / state["average"]["weight"]
    last = load_checkpoint(plain / "checkpoint.npz")["theta"]
    assert np.array_equal(state["theta"], last)  # the same iterates: --average only reports
    assert not np.allclose(mean, last)
    params = run_cli(capsys, "params", averaged)[1]
    assert_allclose(np.r_[params["coef"], params["intercept"]], mean, rtol=1e-12)
    assert run_cli(capsys, "params", plain)[1] != params
    ev = run_cli(capsys, "evaluate", averaged, small_zarr, "--x", "X_test", "--y", "y_test")[1]
    expect = evaluate(make_model("logistic", 3), mean, small_zarr, x="X_test", y="y_test")
    assert ev == expect
