"""A quick seeded subset of ``scripts/fuzz.py`` (fault injection through the command line):
no traceback, no hang and no silent wrong answer outside the findings still open.
"""

import json

import pytest

#: Fault kinds (``category.kind``, or ``category.kind@step`` for one step of it) that still
#: fail (traceback, hang or silent wrong answer) on this code, with the issue-19 finding
#: whose fix removes them. Delete an entry when its fix lands: the test then asserts it.
KNOWN: dict = {}  # every finding of issue 19 is fixed; a new one goes here with its number
#: Outcomes the test refuses outside KNOWN (``unclear`` and ``refused`` are reported only).
FAILING = ("traceback", "hang", "silent_wrong", "harness_error")


def _known(failure: dict) -> bool:
    kind = failure["kind"]
    return kind in KNOWN or kind.split("@")[0] in KNOWN


@pytest.mark.slow
def test_quick_fuzz_subset(load_script, tmp_path):
    fuzz = load_script("fuzz")
    args = fuzz.parse_args(["--seed", "16", "--cases", "30", "--jobs", "2", "--timeout", "15",
                            "--workdir", str(tmp_path)])
    summary = fuzz.run(args)
    assert summary["cases"] == 30
    assert set(summary["per_category"]) == set(fuzz.CATEGORIES)
    new = [f for f in summary["failures"] if f["outcome"] in FAILING and not _known(f)]
    assert not new, json.dumps(new, indent=1)
