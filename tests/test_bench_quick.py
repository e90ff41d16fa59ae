"""The benchmark end to end at a tiny size (pool -> probe -> select -> train -> evaluate -> table)."""

import json
import math

import pytest


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path):
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.bench.train import Recipe

    cfg = BenchConfig(out=str(tmp_path / "bench"), budgets=(0.3,), methods=["random", "selfcheck", "length",
                                                                              "oracle", "anti-oracle"],
                      seeds=(0, 1), sensitivity_seeds=(2,), n_images=24, n_ocr=8, eval_per_type=6, eval_mc=6, eval_ocr=6,
                      warmup_epochs=1, recipe=Recipe(epochs=1, min_steps=3, max_steps=4, batch_size=8),
                      post_fraction=0.05, n_boot=100)
    result = run_bench(cfg)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert set(rows) == {("full", 1.0), ("full-clean", 1.0), ("oracle", 0.3), ("anti-oracle", 0.3),
                         ("random", 0.3), ("selfcheck", 0.3), ("length", 0.3), ("post:selfcheck", 0.05),
                         ("post:random", 0.05)}
    n = result["meta"]["pool"]["n_records"]
    for (method, budget), r in rows.items():
        assert r["runs"] == 2 and r["score_low"] <= r["score"] <= r["score_high"]
        if budget == 0.3:
            assert r["n_kept"] == round(0.3 * n)
        if method in ("oracle", "selfcheck", "length", "anti-oracle"):
            assert r["verdict"] in ("better", "worse", "undecided")
            assert r["vs_random_low"] <= r["vs_random"] <= r["vs_random_high"]
    assert rows[("oracle", 0.3)]["corrupt_kept"] == 0.0 and rows[("full", 1.0)]["corrupt_kept"] == 1.0
    # yes/no and MC (outside the score) are evaluated on the reference rows only
    assert "yesno" in rows[("full", 1.0)] and "mc_clean" in rows[("full", 1.0)] and "yesno" not in rows[("oracle", 0.3)]
    assert rows[("full-clean", 1.0)]["corrupt_kept"] == 0.0 and math.isfinite(rows[("selfcheck", 0.3)]["auroc"])
    assert "gap_closed" in rows[("post:selfcheck", 0.05)] or "pct_full_clean" in rows[("post:selfcheck", 0.05)]
    # The sensitivity line also uses the extra seed pair (oracle and random only); the cells do not.
    assert "sensitivity: oracle - random at 0.3" in result["markdown"] and "3 seed pairs" in result["markdown"]
    assert result["meta"]["warmup"]["image_shuffle"]["n_records"] > 0
    assert len(result["runs"]) == 2 * 7 + 2 + 2 * 2
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["meta"]["sensitivity"]["budget"] == 0.3
    # The subsets written for each run are the records that were trained on, truth field included.
    subset = json.loads((tmp_path / "bench" / "subsets" / "random_0.3_seed1.json").read_text())
    assert len(subset) == rows[("random", 0.3)]["n_kept"] and all("bench" in r for r in subset)
