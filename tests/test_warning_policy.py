"""The suite's warning policy (``pyproject.toml``'s ``filterwarnings``): a warning raised in
the package or its tests fails the suite; another package's deprecation does not, so that a
fresh machine with newer dependencies passes (the warning is listed in the summary).
"""

import warnings

import pytest


def test_a_dependencys_deprecation_is_shown_not_fatal():
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("old API", category, "dep.py", 1, module="somedep.api")
        assert len(caught) == 1


@pytest.mark.parametrize("module", ["natgrad_stream.learner", "tests.test_x"])
def test_warnings_raised_in_the_package_or_its_tests_fail(module):
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit("overflow", RuntimeWarning, "f.py", 1, module=module)
