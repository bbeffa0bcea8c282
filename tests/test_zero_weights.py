"""Zero sample weights are handled the same wherever they fall (issue 19: a batch of zero
total weight was refused or not depending on which chunk held the zero weights).

A batch whose weights sum to zero is skipped and counted (``skipped_zero_weight_batches``
in the summary); data whose weights all are zero are refused.
"""

import json

import numpy as np
import pytest

from natgrad_stream.app.cli import main
from natgrad_stream.data.metadata import write_missing_chunks
from natgrad_stream.errors import DataError
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import LogisticRegression

from .conftest import write_group

N, D = 1000, 3


def _store(path, X, y, w):
    write_group(path, X=X, y=y, w=w)  # 100-row chunks
    write_missing_chunks(path)  # zarr skips chunks of fill values (zeros) by default
    return path


def _data(zero_rows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    y = (X @ np.array([1.0, -2.0, 0.5]) + rng.logistic(size=N) > 0).astype(np.float64)
    w = np.ones(N)
    w[zero_rows] = 0.0
    return X, y, w


@pytest.mark.parametrize(("where", "skipped"), [(slice(0, 100), 1), (slice(400, 500), 1),
                                               (slice(900, 1000), 1), (slice(450, 550), 0)])
def test_zero_weights_anywhere_are_skipped_and_counted(tmp_path, capsys, where, skipped):
    X, y, w = _data(where)
    store = _store(tmp_path / "d.zarr", X, y, w)
    # one 100-row chunk per read and per batch: a zero-weight chunk is a zero-weight batch
    code = main(["fit", str(store), "--model", "logistic", "--w", "w", "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--batch-size", "100",
                 "--read-buffer-bytes", "1K", "--progress", "never"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary.get("skipped_zero_weight_batches", 0) == skipped
    assert summary["samples"] == N and np.isfinite(summary["running_loss"])


def test_a_skipped_batch_changes_nothing_but_the_counters():
    X, y, w = _data(slice(0, 100))
    lr = NaturalGradientLearner(LogisticRegression(D))
    lr.step(X[100:200], y[100:200], w[100:200])
    theta = lr.theta.copy()
    info = lr.step(X[:100], y[:100], w[:100])
    assert info.skipped and np.isnan(info.loss)
    assert np.array_equal(lr.theta, theta) and lr.state.steps == 1
    assert lr.state.skipped_zero_weight == 1 and lr.state.samples == 200
    restored = NaturalGradientLearner.from_state_dict(lr.state_dict())
    assert restored.state.skipped_zero_weight == 1


def test_data_of_zero_total_weight_is_refused(tmp_path, capsys):
    X, y, w = _data(slice(0, N))
    store = _store(tmp_path / "d.zarr", X, y, w)
    code = main(["fit", str(store), "--model", "logistic", "--w", "w", "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--progress", "never"])
    err = capsys.readouterr().err
    assert code == 2
    assert "array 'w': every sample weight of the pass is zero" in err
    with pytest.raises(DataError, match="every sample weight of the pass is zero"):
        NaturalGradientLearner(LogisticRegression(D)).fit((X, y, w), epochs=1)


def test_negative_total_weight_is_still_an_error():
    X, y, _ = _data(slice(0, 0))
    lr = NaturalGradientLearner(LogisticRegression(D))
    with pytest.raises(DataError, match="total sample weight -"):
        lr.step_sums(-1.0, -1.0, np.zeros(D + 1), None, 1)


def test_lbfgs_names_data_of_zero_weight():
    X, y, w = _data(slice(0, N))
    lr = NaturalGradientLearner(LogisticRegression(D), optimizer="lbfgs", lbfgs_rounds=1)
    with pytest.raises(DataError, match="array 'w': every sample weight of the data is zero"):
        lr.fit((X, y, w))


def test_evaluate_with_zero_weights_everywhere_names_the_array(tmp_path, capsys):
    """(fuzz: ``evaluate RUN DATA --w W`` with W all zeros raised ZeroDivisionError)."""
    X, y, w = _data(slice(0, 0))
    store = _store(tmp_path / "d.zarr", X, y, w)
    write_group(tmp_path / "e.zarr", X=X, y=y, w0=np.zeros(N))
    write_missing_chunks(tmp_path / "e.zarr")
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "logistic", "--out", str(run), "--epochs",
                 "1", "--progress", "never"]) == 0
    capsys.readouterr()
    code = main(["evaluate", str(run), str(tmp_path / "e.zarr"), "--w", "w0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "array 'w0': every sample weight is zero" in err and len(err.splitlines()) == 1


def test_fit_names_the_weights_array_it_was_given(tmp_path, capsys):
    """(fuzz: ``fit --w w0`` named the weights 'w' in its error)."""
    X, y, _ = _data(slice(0, 0))
    write_group(tmp_path / "d.zarr", X=X, y=y, w0=np.zeros(N))
    write_missing_chunks(tmp_path / "d.zarr")
    code = main(["fit", str(tmp_path / "d.zarr"), "--model", "logistic", "--w", "w0",
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--progress", "never"])
    err = capsys.readouterr().err
    assert code == 2 and "array 'w0'" in err and "array 'w'" not in err, err
