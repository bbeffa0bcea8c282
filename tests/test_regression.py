"""Results do not change under refactoring: the final θ of fixed-seed fits (each optimizer,
each structure, several models, the streaming learner and L-BFGS) equal, bit for bit, the
values recorded from the code before the learner was restructured
(``tests/_regression_cases.py``; recorded on x86_64 with this project's pinned NumPy/SciPy
stack).
"""

import json

import numpy as np
import pytest

from ._regression_cases import CASES, EXPECTED, run_case


@pytest.fixture(scope="module")
def expected():
    return json.loads(EXPECTED.read_text())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("regression")


@pytest.mark.parametrize("name", sorted(CASES))
def test_final_parameters_are_bit_identical_to_the_recorded_ones(name, expected, data_dir):
    got = run_case(name, data_dir)
    want = {k: np.array([float.fromhex(s) for s in v]) for k, v in expected[name].items()}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].tobytes() == value.tobytes(), (
            f"{name}: {key} differs (max |Δ| = {np.abs(got[key] - value).max():.3g})")
