"""The model panel (``scripts/model_panel.py``) on a few cheap rows in quick mode: the row
fields, and a convex default fit within 1e-6 of its reference.
"""

import json
import math

import pytest

FIELDS = ("model", "dataset", "n", "d", "measure", "value", "converged", "epochs", "seconds",
          "reference", "reference_value", "reference_seconds", "meets", "criterion")


@pytest.fixture(scope="module")
def panel(load_script):
    return load_script("model_panel")


@pytest.fixture(scope="module")
def rows(panel, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("panel")
    cases = [panel.synthetic_case("logistic", workdir, quick=True),
             *panel.all_cases(["gaussian-mean"], workdir, quick=True)]
    return [panel.run_case(c) for c in cases]


def test_rows_carry_the_measure_the_reference_and_the_verdict(rows):
    assert [(r["model"], r["dataset"]) for r in rows] == [
        ("logistic", "synthetic"), ("gaussian-mean", "synthetic, paper's A"),
        ("gaussian-mean", "synthetic, random A"), ("gaussian-mean", "iris sepal")]
    for r in rows:
        assert set(FIELDS) <= set(r)
        assert r["error"] is None and r["measure"] == "gap"
        assert r["seconds"] > 0 and r["reference_seconds"] >= 0
        assert r["epochs"] >= 1 and isinstance(r["converged"], bool)
        assert r["meets"] == (r["value"] <= 1e-6)
    assert rows[0]["n"] == 5_000 and rows[0]["d"] == 10
    assert rows[0]["reference"] == "statsmodels Logit"
    assert math.isfinite(rows[0]["loss_at_truth"])  # synthetic: the true θ is known


def test_convex_default_fits_meet_the_1e6_criterion(rows):
    for r in rows:
        assert r["converged"] and r["meets"], r
        assert abs(r["value"]) <= 1e-6


def test_the_report_has_one_table_line_per_row_and_json_is_valid(panel, rows):
    meta = {"date": "d", "machine": "m", "quick": True, "seconds": 1.0}
    md = panel.markdown(rows, meta)
    table = [line for line in md.splitlines() if line.startswith("| ") and "gap" in line]
    assert len(table) == len(rows)
    assert "Meets the criterion: 4/4" in md
    json.loads(json.dumps(panel.cp._finite(rows), default=panel.cp._json_default))


def test_merge_replaces_the_rerun_families_rows_and_keeps_the_others(panel, rows, tmp_path):
    """``--only F --merge``: F's rows replaced in place, the others kept with the commit
    that measured them, and the report says which rows were re-measured.
    """
    old_meta = {"date": "d0", "machine": "m", "quick": True, "seconds": 9.0, "commit": "aaa"}
    prefix = tmp_path / "panel"
    (tmp_path / "panel.json").write_text(json.dumps(
        panel.cp._finite({"meta": old_meta, "rows": rows}), default=panel.cp._json_default))
    fresh = [{**r, "value": -1.0} for r in rows if r["model"] == "gaussian-mean"]
    merged, meta = panel._merged(fresh, {"date": "d1", "seconds": 2.0, "commit": "bbb"},
                                 ["gaussian-mean"], prefix)
    assert [(r["model"], r["dataset"]) for r in merged] == [
        (r["model"], r["dataset"]) for r in rows]
    assert [r["value"] for r in merged[1:]] == [-1.0] * 3
    assert merged[0]["commit"] == "aaa" and merged[1]["commit"] == "bbb"
    assert meta["rows"] == 4 and meta["merged"]["commit"] == "bbb"
    assert "re-measured on d1 at commit bbb" in panel.markdown(merged, meta)
