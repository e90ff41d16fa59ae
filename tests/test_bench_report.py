"""Bench results table and command-line parsing."""

import csv
import json

import pytest
import typer

from mmsift.bench.command import _budgets
from mmsift.bench.report import add_scores, write_results


def _row(method, all_open, mc):
    return {"method": method, "budget": 1.0 if method == "full" else 0.3, "n_kept": 10, "all_open": all_open,
            "mc_clean": mc[0], "mc_perm": mc[1], "mc_sym": mc[2], "mc_both": mc[3], "auroc": float("nan")}


def test_scores_relative_to_full():
    rows = add_scores([_row("full", 0.6, (0.4, 0.4, 0.2, 0.2)), _row("x", 0.3, (0.3, 0.3, 0.3, 0.3))])
    assert rows[0]["score"] == pytest.approx(0.45) and rows[0]["rel_full"] == pytest.approx(100.0)
    assert rows[1]["score"] == pytest.approx(0.3) and rows[1]["rel_full"] == pytest.approx(100 * 0.3 / 0.45)


def test_write_results(tmp_path):
    meta = {"eval": {"chance": {"vqa": 0.3}}, "stage_seconds": {"probe": 1.5}, "skipped": {"mmssr": "needs x"},
            "pool": {"n_records": 10, "defects": {"none": 8, "noise": 2}}}
    res = write_results([_row("full", 0.6, (0.4, 0.4, 0.2, 0.2)), _row("x", 0.3, (0.3,) * 4)], meta, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.splitlines()[0].startswith("| method | budget | n |")
    assert "| x | 0.3 | 10 |" in md and "Skipped mmssr: needs x" in md and "–" in md
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["method"] for r in rows] == ["full", "x"]
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["pool"]["n_records"] == 10
    assert res["paths"]["csv"].endswith("results.csv")


def test_budget_option():
    assert _budgets("0.05, 0.15,0.3") == (0.05, 0.15, 0.3)
    assert _budgets("100") == (100,)
    with pytest.raises(typer.BadParameter):
        _budgets("lots")
