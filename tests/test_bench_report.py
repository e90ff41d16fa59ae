"""Bench statistics (intervals, paired verdicts), calibration subsets, the results table and CLI parsing."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import typer

from mmsift.cli.bench import _budgets
from mmsift.bench.report import summarise, write_results
from mmsift.bench.runner import Run
from mmsift.bench.stats import cell_interval, paired_difference, point_score

COLS = ("shape", "color")


def _correct(shape_hits, color_hits, n=10):
    return {"shape": np.arange(n) < shape_hits, "color": np.arange(n) < color_hits}


def test_point_score_and_degenerate_intervals_by_hand():
    # shape 6/10, colour 2/10 -> score 0.4; an all-correct cell has the point interval [1, 1]
    run = _correct(6, 2)
    assert point_score(run, COLS) == pytest.approx(0.4)
    perfect = [_correct(10, 10)] * 3
    iv = cell_interval(perfect, COLS, n_boot=200)
    assert (iv.mean, iv.low, iv.high) == (1.0, 1.0, 1.0)
    # a - b where a is always right and b always wrong: +1 whatever is resampled, verdict better
    d = paired_difference(perfect, [_correct(0, 0)] * 3, COLS, n_boot=200)
    assert (d.mean, d.low, d.high, d.verdict()) == (1.0, 1.0, 1.0, "better")
    same = paired_difference([run] * 2, [run] * 2, COLS, n_boot=200)
    assert (same.low, same.high, same.verdict()) == (0.0, 0.0, "undecided")
    with pytest.raises(ValueError, match="same seed pairs"):
        paired_difference([run], [run, run], COLS)


def test_intervals_cover_the_mean_and_widen_with_seed_noise():
    rng = np.random.default_rng(0)
    items = 300
    steady = [{c: rng.random(items) < 0.7 for c in COLS} for _ in range(3)]
    noisy = [{c: rng.random(items) < p for c in COLS} for p in (0.5, 0.7, 0.9)]
    a, b = cell_interval(steady, COLS, seed=1), cell_interval(noisy, COLS, seed=1)
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert (b.high - b.low) > 2 * (a.high - a.low)
    # A gap of 0.2 over 300 items per column and 3 seed pairs is decided; a gap of 0 is not.
    worse = [{c: rng.random(items) < 0.5 for c in COLS} for _ in range(3)]
    assert paired_difference(steady, worse, COLS).verdict() == "better"
    assert paired_difference(worse, steady, COLS).verdict() == "worse"


def test_calibration_subsets_by_hand():
    from mmsift.bench.calibration import calibration_subset, full_clean

    # 10 records: task a = 0..5, task b = 6..9; bad ones: 1 (wrong answer), 2 (duplicate), 7 (noise)
    defects = ["none", "wrong_answer", "duplicate", "none", "none", "none", "none", "noise", "none", "none"]
    truth = [{"defect": d} for d in defects]
    tasks = ["a"] * 6 + ["b"] * 4
    assert full_clean(truth).tolist() == [0, 3, 4, 5, 6, 8, 9]
    kept = calibration_subset("oracle", truth, tasks, 5, seed=0)
    # 5 of 10 in task shares 6:4 -> 3 from a, 2 from b, none bad
    assert len(kept) == 5 and not set(kept) & {1, 2, 7}
    assert sum(k < 6 for k in kept) == 3
    anti = calibration_subset("anti-oracle", truth, tasks, 5, seed=0)
    assert {1, 2, 7} <= set(anti.tolist()) and sum(k < 6 for k in anti) == 3
    # Oracle at a budget above the clean share: capped by the clean records of each task, rest elsewhere.
    assert set(calibration_subset("oracle", truth, tasks, 1.0, seed=0).tolist()) == set(full_clean(truth).tolist())
    with pytest.raises(ValueError, match="unknown calibration"):
        calibration_subset("nope", truth, tasks, 5, seed=0)


def _runs():
    runs = []
    for s in (0, 1):
        for label, budget, hits in [("full", 1.0, 6), ("full-clean", 1.0, 9), ("random", 0.3, 5),
                                    ("oracle", 0.3, 8), ("post:selfcheck", 0.02, 8), ("post:random", 0.02, 6)]:
            r = Run(label, budget, s, np.arange(3))
            r.correct = _correct(hits, hits)
            r.row = {"method": label, "budget": budget, "seed": s, "n_kept": 3, "shape": hits / 10,
                     "color": hits / 10, "corrupt_kept": 0.5, "auroc": float("nan"), "train_s": 1.0}
            runs.append(r)
    return runs


def test_summarise_and_write(tmp_path):
    cfg = SimpleNamespace(preset=SimpleNamespace(score_columns=COLS), n_boot=200, seed=0, seeds=(0, 1))
    meta = {"eval": {"chance": {"shape": 1 / 3, "color": 0.125}}, "skipped": {"mmssr": "needs x"},
            "pool": {"n_records": 10, "defects": {"none": 8, "noise": 2}}}
    runs = _runs()
    rows = summarise(runs, cfg, meta)
    by = {r["method"]: r for r in rows}
    assert by["oracle"]["score"] == pytest.approx(0.8) and by["oracle"]["runs"] == 2
    assert by["oracle"]["vs_random"] == pytest.approx(0.3) and "vs_random" not in by["random"]
    assert "vs_random" not in by["full"] and by["full-clean"]["pct_full_clean"] == pytest.approx(100)
    # Post-training: compared with post:random; gap closed = (0.8 - 0.6) / (0.9 - 0.6)
    assert by["post:selfcheck"]["vs_random"] == pytest.approx(0.2)
    assert by["post:selfcheck"]["gap_closed"] == pytest.approx(2 / 3)
    assert [x["budget"] for x in meta["sensitivity"]] == [0.3] and meta["sensitivity"][0]["mean"] == pytest.approx(0.3)
    assert meta["learnable"]["shape"]["full_clean"] == pytest.approx(0.9)
    res = write_results(rows, runs, meta, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[0].startswith("| method | budget | n | runs | score | 95% interval |")
    assert "sensitivity: oracle - random at 0.3 = +0.300" in md and "Skipped mmssr: needs x" in md
    assert [r["method"] for r in csv.DictReader(open(tmp_path / "runs.csv"))][:2] == ["full", "full-clean"]
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["pool"]["n_records"] == 10
    items = np.load(tmp_path / "items.npz")
    assert items["oracle|0.3|1|shape"].sum() == 8 and res["paths"]["items"].endswith("items.npz")


def test_sensitivity_says_when_the_bench_cannot_judge():
    from mmsift.bench.report import sensitivity

    # One line per budget with both cells: blind at 0.05 (same answers), clear at 0.3 (oracle 8/10, random 5/10).
    cells = {("oracle", 0.05): None, ("random", 0.05): None, ("oracle", 0.3): None, ("random", 0.3): None}
    same = [_correct(5, 5)] * 2
    out = sensitivity(cells, {("oracle", 0.05): same, ("random", 0.05): same,
                              ("oracle", 0.3): [_correct(8, 8)] * 2, ("random", 0.3): same}, COLS,
                      SimpleNamespace(n_boot=100, seed=0))
    assert [x["budget"] for x in out] == [0.05, 0.3]
    assert not out[0]["can_judge"] and "cannot judge methods" in out[0]["text"]
    assert out[1]["can_judge"] and out[1]["mean"] == pytest.approx(0.3)


def test_budget_option():
    assert _budgets("0.05, 0.15,0.3") == (0.05, 0.15, 0.3)
    assert _budgets("100") == (100,)
    with pytest.raises(typer.BadParameter):
        _budgets("lots")
