"""mmSSR sampler: hand-worked tables, a loop-by-loop transcription of the paper's sampler, and the selector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.scorers import SCORERS, make_scorer
from mmsift.scorers.mmssr import CAP_COLUMNS, STYLE_COLUMNS, STYLES, MmSSR, style_bins, water_fill
from mmsift.select import select_rows, select_run
from mmsift.store import Signals, from_arrays

NAN = float("nan")
A, B, C = "optical_character_recognition", "scene_understanding", "causal_reasoning"


def make_signals(caps: dict[str, list[float]], styles: list[tuple[str, ...]], tasks: list[str]) -> Signals:
    n = len(tasks)
    cols = {f"cap_{c}": np.asarray(v, dtype=np.float64) for c, v in caps.items()}
    for s in STYLES:
        cols[f"style_{s}"] = np.asarray([1.0 if s in st else 0.0 for st in styles])
    return Signals(ids=np.asarray([f"r{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.asarray(tasks, dtype=object), columns=cols)


# The worked example of the docstring, solved by hand below.
TABLE = dict(
    caps={A: [5, 4, 3, 2, 0, NAN, 1, 5], B: [1, 0, 5, 4, 3, 2, NAN, 5]},
    styles=[("yes_no",), ("yes_no",), ("detailed_description",), ("detailed_description",), ("yes_no",),
            ("yes_no",), ("detailed_description",), ("yes_no",)],
    tasks=["s1", "s1", "s1", "s2", "s2", "s1", "s2", "s1"],
)


def test_water_fill_smallest_bin_first_carries_shortfall():
    # bins sorted by size: 1 (size 1) takes ceil(6/3)=2 -> 1, bin 2 takes ceil(5/2)=3, bin 0 takes the last 2.
    assert water_fill(np.array([5, 1, 3]), 6).tolist() == [2, 1, 3]
    # quota 2 over sizes [3, 0, 1, 2]: empty bin gets 0, bin 2 gets 1, bin 3 gets 1, the largest nothing.
    assert water_fill(np.array([3, 0, 1, 2]), 2).tolist() == [0, 0, 1, 1]
    assert water_fill(np.array([2, 2]), 10).tolist() == [2, 2]


def test_style_bins_are_style_combination_times_source():
    sig = make_signals(**TABLE)
    # (yes_no, s1)=0, (yes_no, s2)=1, (detailed, s1)=2, (detailed, s2)=3
    assert style_bins(sig).tolist() == [0, 0, 2, 3, 1, 0, 3, 0]


def test_choose_hand_worked_example():
    sig = make_signals(**TABLE)
    m = MmSSR(capabilities=[A, B])
    # A (quota 2): candidates 0,7,1 in bin 0, 2 in bin 2, 3,6 in bin 3; smallest non-empty bins first -> 2, 3.
    # B (quota 2): candidates 7,5,0 in bin 0, 4 in bin 1 -> 4 from bin 1, then the best of bin 0: 7.
    got = m.choose(sig, m.score(sig), 4)
    assert sorted(got.tolist()) == [2, 3, 4, 7]
    assert "mmssr: optical_character_recognition: 2 samples" in m.notes_


def test_threshold_and_short_budget_are_reported():
    sig = make_signals(**TABLE)
    m = MmSSR(capabilities=[A, B], thr=3)
    got = m.choose(sig, m.score(sig), 7)
    # Ratings > 3: A {0, 7, 1}, B {2, 7, 3}: five distinct samples, so five, not seven.
    assert sorted(got.tolist()) == [0, 1, 2, 3, 7]
    assert any("only 5 samples" in n for n in m.notes_)


def test_score_reduce_and_unrated():
    sig = make_signals(caps={A: [5, NAN, NAN], B: [1, 2, NAN]}, styles=[()] * 3, tasks=["t"] * 3)
    assert MmSSR(capabilities=[A, B]).score(sig).tolist() == [5.0, 2.0, -1.0]
    assert MmSSR(capabilities=[A, B], reduce="mean").score(sig).tolist() == [3.0, 2.0, -1.0]


def reference_choose(caps, styles, tasks, capabilities, thr, n_keep):
    """The sampler transcribed loop by loop from its description, independent of the vectorised code."""
    n = len(tasks)
    keys = sorted({(sum(1 << k for k, s in enumerate(STYLES) if s in styles[i]), tasks[i]) for i in range(n)})
    bin_of = [keys.index((sum(1 << k for k, s in enumerate(STYLES) if s in styles[i]), tasks[i])) for i in range(n)]

    def above(c, i):
        v = caps[c][i]
        return not math.isnan(v) and v > thr

    chosen: list[int] = []
    active = [c for c in capabilities if any(above(c, i) for i in range(n))]
    left = n_keep
    while left > 0 and active:
        nxt = []
        for pos, c in enumerate(active):
            if left <= 0:
                nxt.append(c)
                continue
            quota = -(-left // (len(active) - pos))
            cand = [i for i in range(n) if i not in chosen and above(c, i)]
            cand.sort(key=lambda i: (-caps[c][i], i))
            if not cand:
                continue
            groups = {b: [i for i in cand if bin_of[i] == b] for b in range(len(keys))}
            order = sorted(range(len(keys)), key=lambda b: (len(groups[b]), b))
            q = min(quota, len(cand))
            took = 0
            for p, b in enumerate(order):
                t = min(-(-q // (len(order) - p)), len(groups[b])) if q > 0 else 0
                chosen.extend(groups[b][:t])
                q -= t
                took += t
            left -= took
            if took < len(cand):
                nxt.append(c)
        active = nxt
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_choose_matches_reference_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    n = 120
    caps = {}
    for c in (A, B, C):
        v = rng.integers(0, 6, n).astype(float)
        v[rng.random(n) < 0.1] = np.nan
        caps[c] = v.tolist()
    # skew: one capability rarely rated high, so shortfalls carry on
    caps[C] = [x if (i % 7 == 0) else 0.0 for i, x in enumerate(caps[C])]
    styles = [tuple(s for s in STYLES[:4] if rng.random() < 0.3) for _ in range(n)]
    tasks = [f"src{rng.integers(0, 3)}" for _ in range(n)]
    sig = make_signals(caps=caps, styles=styles, tasks=tasks)
    for thr in (0, 2):
        for n_keep in (1, 7, 30, 90, 120):
            m = MmSSR(capabilities=[A, C, B], thr=thr)
            got = m.choose(sig, m.score(sig), n_keep)
            ref = reference_choose(caps, styles, tasks, [A, C, B], thr, n_keep)
            assert len(set(got.tolist())) == len(got)
            assert sorted(got.tolist()) == sorted(ref), (thr, n_keep)


def test_registered_and_selects_through_store(tmp_path):
    assert SCORERS["mmssr"] is MmSSR
    sig = make_signals(**TABLE)
    from_arrays(tmp_path / "run", ids=sig.ids, tasks=sig.tasks, columns=dict(sig.columns))
    with pytest.raises(Exception):
        # all 14 capabilities are required by default; this run only has two
        select_run(str(tmp_path / "run"), "mmssr", 4)
    sel = select_run(str(tmp_path / "run"), "mmssr", 4, params={"capabilities": [A, B]})
    assert sorted(sel.ids) == ["r2", "r3", "r4", "r7"]
    assert make_scorer("mmssr", {"capabilities": f"{A},{B}"}).capabilities == (A, B)


def test_all_capabilities_default_and_unknown_rejected():
    assert len(CAP_COLUMNS) == 14 and len(STYLE_COLUMNS) == 9
    assert MmSSR().requires == CAP_COLUMNS + STYLE_COLUMNS
    with pytest.raises(ValueError, match="unknown capabilities"):
        MmSSR(capabilities=["ocr"])


def test_selector_end_to_end_with_all_capabilities():
    rng = np.random.default_rng(0)
    n = 500
    caps = {c[4:]: rng.integers(0, 6, n).astype(float) for c in CAP_COLUMNS}
    styles = [tuple(s for s in STYLES if rng.random() < 0.2) for _ in range(n)]
    tasks = [f"src{i % 4}" for i in range(n)]
    sig = make_signals(caps=caps, styles=styles, tasks=tasks)
    sel = select_rows(sig, MmSSR(), 0.2)
    assert len(sel.rows) == 100 and len(set(sel.rows.tolist())) == 100
    # every source is represented: bins are spread smallest first
    assert set(sel.kept_per_task) == {"src0", "src1", "src2", "src3"}
