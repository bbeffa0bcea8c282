"""Progress of a Python ``fit`` through the ``logging`` module: the ``natgrad_stream.fit``
logger, passes at INFO, steps at DEBUG, silent unless the application configures logging.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.sklearn import NaturalGradientClassifier


@pytest.fixture(autouse=True)
def _logging_as_imported(package_logging_as_imported):
    """Every test here sees the package's loggers as a fresh import leaves them."""


def _data(n=3000, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ np.linspace(-1, 1, d)))).astype(float)
    return X, y


def _messages(caplog, level):
    return [r.getMessage() for r in caplog.records
            if r.name == "natgrad_stream.fit" and r.levelno == level]


def test_learner_fit_logs_each_pass_at_info(caplog):
    X, y = _data()
    with caplog.at_level(logging.INFO, logger="natgrad_stream"):
        learner = NaturalGradientLearner(make_model("logistic", 4)).fit((X, y))
    info = _messages(caplog, logging.INFO)
    passes = learner.result.epochs
    assert learner.result.converged and passes > 2
    assert info[0].startswith("fit started: model logistic (5 parameters), optimizer sgd")
    assert info[1].startswith("pass 1 (streaming): 3,000 samples")
    assert [m.split(" (")[0] for m in info[2:-1]] == [f"pass {k}" for k in
                                                       range(2, passes + 1)]
    assert "converged" in info[-2] and info[-1].startswith("fit done:")
    assert "converged" in info[-1] and "not converged" not in info[-1]
    assert not _messages(caplog, logging.DEBUG)  # steps only at DEBUG


def test_steps_at_debug(caplog):
    X, y = _data()
    with caplog.at_level(logging.DEBUG, logger="natgrad_stream"):
        learner = NaturalGradientLearner(make_model("logistic", 4), batch_size=500)
        learner.fit((X, y), epochs=1)
    steps = [m for m in _messages(caplog, logging.DEBUG) if m.startswith("step ")]
    assert len(steps) == learner.state.steps == 6
    assert steps[-1].startswith("step 6: 500 rows, sample 3,000, loss ")
    assert any(m.startswith("re-whitening at sample") for m in _messages(caplog,
                                                                         logging.DEBUG))


def test_estimator_logs_its_start_passes_and_end(caplog):
    X, y = _data()
    with caplog.at_level(logging.INFO, logger="natgrad_stream"):
        est = NaturalGradientClassifier().fit(X, y)
    info = _messages(caplog, logging.INFO)
    # one start and one end line, not the learner's per-call ones (it runs a pass a call)
    assert info[0].startswith("NaturalGradientClassifier: fitting 4 features, at most 50 "
                              "passes")
    assert info[-1].startswith(f"NaturalGradientClassifier: converged in {est.n_iter_} "
                               "passes")
    assert len(info) == est.n_iter_ + 2
    assert not [m for m in info if m.startswith(("fit started", "fit done"))]


@pytest.mark.parametrize("configure", [False, True])
def test_silent_by_default_visible_with_basic_config(configure):
    """Progress is silent unless the application configures logging (a converged fit
    prints nothing), and the pass lines show with ``logging.basicConfig(level=INFO)``.
    """
    code = ("import logging, numpy as np\n"
            + ("logging.basicConfig(level=logging.INFO)\n" if configure else "")
            + "from natgrad_stream.sklearn import NaturalGradientRegressor\n"
            "rng = np.random.default_rng(0); X = rng.standard_normal((500, 3))\n"
            "NaturalGradientRegressor().fit(X, X @ [1.0, 2.0, 3.0])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    if configure:
        assert lines[0].startswith("INFO:natgrad_stream.fit:NaturalGradientRegressor: "
                                   "fitting 3 features")
        assert any(ln.startswith("INFO:natgrad_stream.fit:pass 2 (scoring)") for ln in lines)
    else:
        assert proc.stderr == ""


def test_an_unconverged_fit_says_so_without_any_logging_configuration():
    """No NullHandler: with nothing configured, Python's last-resort handler prints the
    learner's warnings (WARNING and above), so a Python fit stopped by its cap before its
    rule held says so in one line on stderr, and nothing of its progress.
    """
    code = ("import numpy as np\n"
            "from natgrad_stream.learner import NaturalGradientLearner\n"
            "from natgrad_stream.models import make_model\n"
            "rng = np.random.default_rng(0); X = rng.standard_normal((3000, 3))\n"
            "y = (rng.random(3000) < 1 / (1 + np.exp(-X @ [1.0, -2.0, 0.5]))) * 1.0\n"
            "NaturalGradientLearner(make_model('logistic', 3)).fit((X, y), epochs=2)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("not converged: stopped by the pass cap")
