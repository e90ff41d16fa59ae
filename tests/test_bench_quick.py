"""The quick benchmark end to end (pool -> probe -> select -> train -> evaluate -> table)."""

import json
import math

import pytest


@pytest.mark.slow
def test_quick_bench(tmp_path):
    from mmsift.bench.runner import QUICK_METHODS, BenchConfig, run_bench

    result = run_bench(BenchConfig.quick_config(str(tmp_path / "bench")))
    rows = result["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == [("full", 1.0)] + [(m, 0.3) for m in QUICK_METHODS]
    full = rows[0]
    assert full["rel_full"] == 100.0 and full["corrupt_kept"] == 1.0
    n = result["meta"]["pool"]["n_records"]
    for r in rows[1:]:
        assert r["n_kept"] == round(0.3 * n)
        assert 0.0 <= r["corrupt_kept"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0
        for k in ("vqa", "shape", "color", "yesno", "ocr", "mc_clean", "mc_perm", "mc_sym", "mc_both"):
            assert 0.0 <= r[k] <= 1.0
        assert math.isfinite(r["rel_full"])
    for kind in ("markdown", "csv", "json"):
        assert (tmp_path / "bench" / f"results.{kind.replace('markdown', 'md')}").is_file()
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["rows"][0]["method"] == "full"
    assert "| full | 1 |" in result["markdown"]
    # The subsets written for each run are the records that were trained on, truth field included.
    subset = json.loads((tmp_path / "bench" / "subsets" / "random_0.3.json").read_text())
    assert len(subset) == rows[1]["n_kept"] and all("bench" in r for r in subset)
