"""The benchmark end to end at a tiny size (pool -> probe -> select -> train -> evaluate -> table)."""

import json
import math

import numpy as np
import pytest


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path):
    from mmsift.bench.preset import PresetConfig
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.train.target import TargetRecipe

    cfg = BenchConfig(out=str(tmp_path / "bench"), budgets=(0.3,), methods=["random", "selfcheck", "length",
                                                                              "oracle", "anti-oracle"],
                      seeds=(0, 1), sensitivity_seeds=(2,),
                      preset=PresetConfig(n_images=24, n_ocr=8, eval_per_type=6, eval_mc=6, eval_ocr=6),
                      warmup_epochs=1, recipe=TargetRecipe(epochs=1, min_steps=3, max_steps=4, batch_size=8),
                      post_fraction=0.05, n_boot=100, workers=2)
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
    assert [x["budget"] for x in saved["meta"]["sensitivity"]] == [0.3]
    # The subsets written for each run are the records that were trained on, truth field included.
    subset = json.loads((tmp_path / "bench" / "subsets" / "random_0.3_seed1.json").read_text())
    assert len(subset) == rows[("random", 0.3)]["n_kept"] and all("bench" in r for r in subset)


@pytest.mark.slow
def test_the_table_does_not_depend_on_the_number_of_workers(tmp_path):
    """Jobs are seeded and single-threaded: two worker processes give the same per-item results as one."""
    from mmsift.bench.preset import PresetConfig
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.train.target import TargetRecipe

    def run(workers):
        cfg = BenchConfig(out=str(tmp_path / f"w{workers}"), budgets=(0.3,), methods=["random", "length"],
                          calibration=("oracle",), seeds=(0,), sensitivity_seeds=(1,),
                          preset=PresetConfig(n_images=16, n_ocr=4, eval_per_type=4, eval_mc=4, eval_ocr=4),
                          warmup_epochs=1, warmup_min_steps=2,
                          recipe=TargetRecipe(epochs=1, min_steps=2, max_steps=3, batch_size=8), post_fraction=0.1,
                          n_boot=50, workers=workers)
        return run_bench(cfg)

    one, two = run(1), run(2)
    assert len(one["runs"]) == len(two["runs"]) == 6  # full, full-clean, random, length, post x 2
    timing = ("train_s", "eval_s")
    for a, b in zip(one["runs"], two["runs"]):  # compared as JSON: NaN (no AUROC) equals NaN there
        same = [json.dumps({k: v for k, v in r.items() if k not in timing}, sort_keys=True) for r in (a, b)]
        assert same[0] == same[1]
    items_one, items_two = np.load(one["paths"]["items"]), np.load(two["paths"]["items"])
    assert sorted(items_one.files) == sorted(items_two.files)
    for key in items_one.files:
        assert np.array_equal(items_one[key], items_two[key]), key
