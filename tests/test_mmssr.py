"""mmSSR sampler: hand-worked tables, a loop-by-loop transcription of the authors' sampler, and the selector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.scorers import SCORERS, make_scorer
from mmsift.scorers.mmssr import CAP_COLUMNS, STYLE_COLUMNS, STYLES, MmSSR, style_matrix
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


def test_style_matrix_is_one_column_per_style():
    sig = make_signals(**TABLE)
    m = style_matrix(sig)
    assert m.shape == (8, 9)
    assert m[:, STYLES.index("yes_no")].tolist() == [True, True, False, False, True, True, False, True]


def test_choose_hand_worked_example():
    sig = make_signals(**TABLE)
    m = MmSSR(capabilities=[A, B])
    # Round 1, every capability gets max(4 // 2, 1) = 2.
    # A: candidates 0,7 (5), 1 (4), 2 (3), 3 (2), 6 (1); bins (detailed, s1)={2}, (detailed, s2)={3, 6},
    #    (yes_no, s1)={0, 7, 1}; 3 bins -> max(2 // 3, 1) = 1 each, smallest first: 2, then 3 -> quota reached.
    # B: candidates 7 (5), 4 (3), 5 (2), 0 (1); bins (yes_no, s2)={4}, (yes_no, s1)={7, 5, 0}: 4, then 7.
    got = m.choose(sig, m.score(sig), 4)
    assert sorted(got.tolist()) == [2, 3, 4, 7]
    assert "mmssr: optical_character_recognition: 2 samples" in m.notes_


MULTI = dict(caps={A: [5, 4, 3, 2, 1, 5]},
             styles=[("yes_no", "detailed_description"), ("yes_no",), ("detailed_description",),
                     ("yes_no", "detailed_description"), (), ()],
             tasks=["s"] * 6)


def test_bins_are_single_style_with_multi_bin_membership_and_unlabelled_left_out():
    sig = make_signals(**MULTI)
    m = MmSSR(capabilities=[A])
    # bins yes_no={0, 1, 3}, detailed={0, 2, 3} (r4, r5 have no style: in no bin, r5 despite its rating 5).
    # Budget 2: one per bin; yes_no takes r0, detailed skips r0 (taken) and takes r2. The old (style set x source)
    # bins {yes_no}={1} and {detailed}={2} were the smallest and gave r1, r2 instead.
    assert sorted(m.choose(sig, m.score(sig), 2).tolist()) == [0, 2]
    assert any("2 samples have no style label" in n for n in m.notes_)
    # Budget 5: 2 per bin gives r0, r1 and r2, r3; nothing labelled is left, so four, not five.
    m = MmSSR(capabilities=[A])
    assert sorted(m.choose(sig, m.score(sig), 5).tolist()) == [0, 1, 2, 3]
    assert any("only 4 style-labelled samples" in n for n in m.notes_)


def test_threshold_and_short_budget_are_reported():
    sig = make_signals(**TABLE)
    m = MmSSR(capabilities=[A, B], thr=3)
    got = m.choose(sig, m.score(sig), 7)
    # Ratings > 3: A {0, 7, 1}, B {2, 7, 3}: five distinct samples, so five, not seven.
    assert sorted(got.tolist()) == [0, 1, 2, 3, 7]
    assert any("only 5 style-labelled samples" in n for n in m.notes_)


def test_score_reduce_and_unrated():
    sig = make_signals(caps={A: [5, NAN, NAN], B: [1, 2, NAN]}, styles=[()] * 3, tasks=["t"] * 3)
    assert MmSSR(capabilities=[A, B]).score(sig).tolist() == [5.0, 2.0, -1.0]
    assert MmSSR(capabilities=[A, B], reduce="mean").score(sig).tolist() == [3.0, 2.0, -1.0]


def reference_choose(caps, styles, tasks, capabilities, thr, n_keep):
    """The authors' select() and capability loop (llava/select/mmssr.py) transcribed with plain lists: bins are
    "style+source" strings, a row in one bin per style; mmsift's documented tie rules (capability order kept,
    equal-size bins in style then source order, rating order inside a bin) replace the code's unstable orders."""
    n = len(tasks)
    sources = sorted(set(tasks))

    def select(sorted_rows, num_select):
        bins = {}
        for k, st in enumerate(STYLES):
            for t in sources:
                members = [i for i in sorted_rows if st in styles[i] and tasks[i] == t]
                if members:
                    bins[(k, sources.index(t))] = members
        if not bins:
            return []
        order = sorted(bins, key=lambda key: (len(bins[key]), key))
        per = max(num_select // len(bins), 1)
        selected, debt = [], 0
        for key in order:
            if len(selected) >= num_select:
                break
            filtered = [i for i in bins[key] if i not in selected]
            cur = min(per + debt, len(filtered))
            debt = max(per + debt - len(filtered), 0)
            selected.extend(filtered[:cur])
        return selected

    chosen: list[int] = []
    active = list(capabilities)
    while len(chosen) < n_keep and active:
        every = max((n_keep - len(chosen)) // len(active), 1)
        drop = []
        for c in active:
            rows = [i for i in range(n) if i not in chosen and not math.isnan(caps[c][i]) and caps[c][i] > thr]
            rows.sort(key=lambda i: (-caps[c][i], i))
            new = select(rows, min(every, n_keep - len(chosen)))
            if not new:
                drop.append(c)
            chosen.extend(new)
            if len(chosen) >= n_keep:
                break
        active = [c for c in active if c not in drop]
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
