"""SCALE: combined score and rarity by hand, the robustness reserve, and the selector end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.scorers import SCORERS
from mmsift.scorers.scale import COLUMNS, TASK_COLUMN, Scale, task_rarity
from mmsift.select import select_rows
from mmsift.store import Signals

NAN = float("nan")


def sig(rows, tasks, judged_tasks=None):
    """rows: (alignment, clarity, coherence, image_clarity) per sample; judged tasks default to ``tasks``."""
    arr = np.asarray(rows, dtype=float)
    n = len(rows)
    cols = {c: arr[:, k] for k, c in enumerate(COLUMNS)}
    cols[TASK_COLUMN] = np.asarray(tasks if judged_tasks is None else judged_tasks, dtype=object)
    return Signals(ids=np.asarray([f"r{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.asarray(tasks, dtype=object), columns=cols)


def test_rarity_by_hand():
    r = task_rarity(np.array(["a"] * 6 + ["b"] * 3 + ["c"]))
    # N=10, n_min=1: a: 5 log(10/6)/log(10), b: 5 log(10/3)/log(10), c: 5
    assert r[0] == pytest.approx(5 * math.log(10 / 6) / math.log(10))
    assert r[6] == pytest.approx(5 * math.log(10 / 3) / math.log(10))
    assert r[9] == pytest.approx(5.0)
    assert np.isnan(task_rarity(np.array(["x", "x"]))).all()


def test_combined_score_by_hand():
    s = sig([(5, 4, 3, 2), (1, NAN, 5, NAN), (NAN, NAN, NAN, NAN)], ["a", "a", "b"])
    got = Scale().score(s)
    ra = 5 * math.log(3 / 2) / math.log(3 / 1)
    assert got[0] == pytest.approx((2 * 5 + 4 + 3 + 2 + ra) / 6)
    assert got[1] == pytest.approx((2 * 1 + 5 + ra) / 4)  # missing components left out
    assert got[2] == -1.0  # never rated
    single = sig([(5, 4, 3, 2)], ["a"])
    assert Scale().score(single)[0] == pytest.approx((10 + 4 + 3 + 2) / 5)  # one task: no rarity term


def test_reserve_keeps_aligned_low_quality():
    rows = [(5, 5, 5, 5)] * 8 + [(5, 5, 5, 1), (4, 1, 4, 4), (1, 1, 1, 1), (3, 5, 5, 1)]
    s = sig(rows, ["t"] * len(rows))
    m = Scale(reserve=0.2)
    scores = m.score(s)
    # budget 10: reserve round(0.2*10)=2 -> rows 8 (alignment 5) and 9 (alignment 4); row 11 is not aligned
    got = m.choose(s, scores, 10)
    assert set(got[:2].tolist()) == {8, 9} and len(set(got.tolist())) == 10
    assert 10 not in got and 11 not in got
    plain = Scale(reserve=0.0)
    got0 = plain.choose(s, plain.score(s), 8)
    assert sorted(got0.tolist()) == list(range(8))
    assert m.robust_mask(s).tolist() == [False] * 8 + [True, True, False, False]


def test_registered_and_selects():
    assert SCORERS["scale"] is Scale
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, size=(200, 4)).astype(float)
    rows[rng.random((200, 4)) < 0.05] = np.nan
    s = sig(rows, [f"t{i % 3}" for i in range(200)])
    m = Scale()
    sel = select_rows(s, m, 0.25)
    assert len(sel.rows) == 50 and any("low-quality-but-useful" in n for n in m.notes_)
    assert set(sel.rows[m.robust_mask(s)[sel.rows]].tolist()) >= set(m.choose(s, sel.scores, 50)[:5].tolist())


def test_rarity_from_judged_task_falls_back_to_source():
    rows = [(3, 3, 3, 3)] * 4
    s = sig(rows, ["src"] * 4, judged_tasks=["ocr", "ocr", None, "counting"])
    m = Scale()
    m.score(s)
    # judged: ocr x2, src x1 (fallback), counting x1 -> N=4, n_min=1
    expect = [5 * math.log(4 / 2) / math.log(4)] * 2 + [5.0, 5.0]
    np.testing.assert_allclose(m.details_["scale_rarity"], expect)
    src = Scale(task_from="source")
    assert TASK_COLUMN not in src.requires and TASK_COLUMN in m.requires
    src.score(s)
    assert np.isnan(src.details_["scale_rarity"]).all()  # one source: no rarity
