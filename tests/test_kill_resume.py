"""kill -9 at random moments, then ``fit --resume``: bit-identical parameters (the short
version of ``scripts/kill_resume.py``, which runs 20 trials per optimizer).
"""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def kill_resume(load_script):
    return load_script("kill_resume")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("kill")


@pytest.mark.parametrize("name", ["sgd", "adam", "lbfgs"])
def test_killed_and_resumed_runs_equal_the_uninterrupted_one(name, kill_resume, root):
    data = kill_resume.make_data(root)["logistic"]
    ref, seconds = kill_resume.reference(name, data, root)
    theta, kills = kill_resume.trial(name, data, root, seconds, np.random.default_rng(7),
                                     at_checkpoints=2)
    assert kills == 2
    assert theta.tobytes() == ref.tobytes()
