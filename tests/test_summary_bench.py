"""The summary benchmark (``scripts/summary_bench.py``) runs end to end on a small store and
reports rates, their ratio and peak memory for the two store sizes.
"""

import json

import pytest


@pytest.mark.slow  # two stores, a fit and two fresh processes: ~35 s on the shared machine
def test_summary_bench_runs_small(load_script, tmp_path):
    bench = load_script("summary_bench")
    out = tmp_path / "res" / "summary-bench"
    assert bench.main(["--rows", "70000", "--features", "3", "--repeats", "1", "--root",
                       str(tmp_path / "data"), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (r,) = report["results"]
    assert r["rows"] == 70000 and r["features"] == 3
    assert r["raw_read_rows_per_s"] > 0 and r["summary_rows_per_s"] > 0
    assert r["ratio"] == r["summary_rows_per_s"] / r["raw_read_rows_per_s"]
    assert r["peak_rss_rows"] == [65536, 70000] and min(r["peak_rss_bytes"]) > 0
    assert "| 70,000 × 3 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # a third store and two more fresh processes
def test_summary_bench_large_stores_are_measured_once(load_script, tmp_path):
    bench = load_script("summary_bench")
    out = tmp_path / "res" / "summary-bench"
    assert bench.main(["--rows", "70000", "--features", "3", "--repeats", "1", "--large",
                       "80000x3", "--root", str(tmp_path / "data"), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    small, large = report["results"]
    assert (large["rows"], large["features"], large["repeats"]) == (80000, 3, 1)
    assert len(large["summary_all"]) == 1 and large["load_after"] >= 0
    assert large["peak_rss_rows"] == [65536, 80000]
    md = out.with_suffix(".md").read_text()
    assert "| 70,000 × 3 |" in md and "| 80,000 × 3 |" in md
