"""Token cleaning's ranking and masks on tables small enough to check by hand (pure numpy, no model)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mmsift.charspans import covered, merge_spans, subtract_spans, turn_positions
from mmsift.data.records import Record, Turn
from mmsift.store import TokenTable
from mmsift.token_select import (AlignedTokens, align_runs, check_masks, global_keep, part_counts, rank_tokens,
                                 read_sidecar, sidecar_path, token_scores, write_sidecar)


def test_scores_and_global_threshold_by_hand():
    base = [2.0, 1.0, 3.0, 0.5, 2.5, 1.5]
    ref = [1.0, 1.2, 0.5, 0.5, 2.0, 0.5]
    s = token_scores(base, ref)
    np.testing.assert_allclose(s, [1.0, -0.2, 2.5, 0.0, 0.5, 1.0])
    # keep 0.5 of 6 -> 3 tokens: 2.5 (#2), then the tie at 1.0 (#0 and #5) both fit
    assert np.flatnonzero(global_keep(s, 0.5)).tolist() == [0, 2, 5]
    # keep 0.34 -> floor(2.04) = 2: the tie at 1.0 goes to the earlier token
    assert np.flatnonzero(global_keep(s, 0.34)).tolist() == [0, 2]
    # only eligible tokens are ranked and counted: #2 out, 5 left, keep 0.6 -> 3: #0, #5 (1.0), #4 (0.5)
    eligible = np.array([1, 1, 0, 1, 1, 1], bool)
    assert np.flatnonzero(global_keep(s, 0.6, eligible=eligible)).tolist() == [0, 4, 5]
    assert global_keep(s, 1.0).all()
    assert not global_keep(s, 0.1).any()  # floor(0.6) = 0


def test_part_counts_keep_the_total():
    # 0.6 of 7, 4, 9 = 4.2, 2.4, 5.4 -> floors 4, 2, 5 (11); the total floor(0.6 * 20) = 12 takes one more from
    # the largest remainder (0.4, a tie between parts 2 and 3: the earlier)
    assert part_counts([7, 4, 9], 0.6) == [4, 3, 5]
    assert part_counts([1, 1, 1], 0.6) == [1, 0, 0] and part_counts([0, 5], 1.0) == [0, 5]
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert np.flatnonzero(global_keep(s, 0.5, count=3)).tolist() == [0, 1, 2]


def test_nan_ranks_last_and_bad_keep():
    s = np.array([np.nan, 0.1, -5.0])
    assert np.flatnonzero(global_keep(s, 0.67)).tolist() == [1, 2]
    assert global_keep(s, 1.0).all()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="keep must be a share"):
            global_keep(s, bad)


def _authors_global_top_k(losses_per_sample, prop):
    """The authors' rule (generate_token_label.py, global level), written again: every (score, sample, position)
    of the response tokens sorted by score, highest first (a stable sort), the first int(n * prop) kept."""
    tokens = [(v, i, j) for i, row in enumerate(losses_per_sample) for j, v in enumerate(row)]
    top = sorted(tokens, key=lambda t: t[0], reverse=True)[: int(len(tokens) * prop)]
    return {(i, j) for _, i, j in top}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_keep_equals_the_authors_rule(seed):
    rng = np.random.default_rng(seed)
    rows = [np.round(rng.normal(size=rng.integers(1, 30)), 1) for _ in range(40)]  # rounding makes many ties
    flat = np.concatenate(rows)
    for prop in (0.2, 0.6, 0.9):
        kept = global_keep(flat, prop)
        pos = [(i, j) for i, row in enumerate(rows) for j in range(len(row))]
        assert {pos[t] for t in np.flatnonzero(kept)} == _authors_global_top_k(rows, prop)


def test_spans_algebra():
    assert merge_spans([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]) == [(0, 3), (5, 9)]
    assert subtract_spans([(0, 10), (12, 15)], [(2, 4), (9, 13)]) == [(0, 2), (4, 9), (13, 15)]
    assert subtract_spans([(0, 3)], []) == [(0, 3)]
    # placements: turn 1's chars 0..5 at 10..15, turn 3's chars 2..6 (2 leading spaces dropped) at 30..34
    placements = {1: (10, 0, 5), 3: (30, 2, 6)}
    turn, start, end = turn_positions([(8, 12), (12, 15), (15, 18), (29, 31), (0, 0), (31, 40)], placements)
    assert turn.tolist() == [1, 1, -1, 3, -1, 3]
    assert list(zip(start.tolist(), end.tolist())) == [(0, 2), (2, 5), (-1, -1), (2, 3), (-1, -1), (3, 6)]
    masked = {1: [(0, 3)], 3: [(3, 6)]}
    assert covered(start, end, turn, masked).tolist() == [True, False, False, False, False, True]


def _aligned():
    # record a: turn 1 "Hello world" -> "Hello"(0,5) " world"(5,11) + end marker; record b: turn 1 "Yes" + marker.
    return AlignedTokens(ids=["a", "b"], offsets=np.array([0, 3, 5]),
                         turn=np.array([1, 1, -1, 1, -1]), start=np.array([0, 5, -1, 0, -1]),
                         end=np.array([5, 11, -1, 3, -1]),
                         base=np.array([3.0, 2.0, 9.0, 1.0, 9.0]), ref=np.array([1.0, 1.9, 0.0, 0.2, 0.0]))


def test_rank_tokens_entries_by_hand():
    # scores: Hello 2.0, " world" 0.1, Yes 0.8; the end markers (score 9) are not ranked
    c = rank_tokens(_aligned(), 0.67)  # floor(0.67 * 3) = 2: Hello and Yes
    assert (c.n_ranked, c.n_kept, c.n_template) == (3, 2, 2)
    assert c.threshold == pytest.approx(0.8)
    assert c.entries == [
        {"id": "a", "n_tokens": 2, "n_masked": 1, "turns": [{"turn": 1, "masked": [[5, 11]]}]},
        {"id": "b", "n_tokens": 1, "n_masked": 0, "turns": [{"turn": 1, "masked": []}]},
    ]
    c = rank_tokens(_aligned(), 0.34)  # one token: Hello; the one-word answer is masked whole
    assert c.entries[1]["turns"] == [{"turn": 1, "masked": [[0, 3]]}] and c.entries[1]["n_masked"] == 1


def test_a_character_shared_by_a_kept_token_stays_trained():
    # two byte-level tokens covering the same character 4 (the two bytes of one letter), one kept, one masked
    a = AlignedTokens(ids=["x"], offsets=np.array([0, 3]), turn=np.array([1, 1, 1]), start=np.array([0, 4, 4]),
                      end=np.array([4, 5, 5]), base=np.array([5.0, 0.0, 5.0]), ref=np.zeros(3))
    e = rank_tokens(a, 0.67).entries[0]  # kept: #0 and #2; #1 masked, but its character is also #2's
    assert e["turns"] == [{"turn": 1, "masked": []}] and e["n_masked"] == 1


def test_align_runs_matches_ids_and_refuses_other_tokenizations():
    base = TokenTable(row=[0, 0, 1, 2], turn=[1, 1, 1, 1], start=[0, 2, 0, 0], end=[2, 4, 3, 1],
                      loss=[1.0, 2.0, 3.0, 4.0])
    # the reference run holds the same records in another order, and "c" without tokens
    ref = TokenTable(row=[0, 1, 1], turn=[1, 1, 1], start=[0, 0, 2], end=[3, 2, 4], loss=[0.5, 0.5, 1.5])
    got = align_runs(["a", "b", "c"], base, ["b", "a", "c", "d"], ref, ["b", "a", "c", "zz"])
    assert got.ids == ["b", "a"] and got.offsets.tolist() == [0, 1, 3]
    np.testing.assert_allclose(got.base, [3.0, 1.0, 2.0])
    np.testing.assert_allclose(got.ref, [0.5, 0.5, 1.5])
    assert set(got.missing) == {"c", "zz"} and "no per-token losses" in got.missing["c"]
    other = TokenTable(row=[0, 1, 1], turn=[1, 1, 1], start=[0, 0, 1], end=[3, 1, 4], loss=[0.5, 0.5, 1.5])
    with pytest.raises(ValueError, match="record 'a' is tokenized differently"):
        align_runs(["a", "b", "c"], base, ["b", "a", "c"], other, ["b", "a"])
    with pytest.raises(ValueError, match="appears twice"):
        align_runs(["a", "a", "c"], base, ["b", "a", "c"], ref, ["a"])


def test_sidecar_round_trip_and_errors(tmp_path):
    entries = [{"id": "a", "n_tokens": 2, "n_masked": 1, "turns": [{"turn": 1, "masked": [[5, 11], [0, 2]]}]},
               {"id": "b", "n_tokens": 0, "n_masked": 0, "turns": [], "unscored": "not probed"}]
    path = write_sidecar(sidecar_path(tmp_path / "subset.json"), entries)
    assert path.name == "subset.tokens.jsonl"
    assert read_sidecar(path) == {"a": {1: [(0, 2), (5, 11)]}, "b": {}}
    for line, message in [('{"id": "a"}\n{"id": "a"}', "line 2: id 'a' appears twice"),
                          ("not json", "line 1: not JSON"),
                          ('{"id": 3}', "string 'id'"),
                          ('{"id": "a", "turns": [{"turn": 1, "masked": [[4, 2]]}]}', "0 <= start < end"),
                          ('{"id": "a", "turns": [{"turn": -1, "masked": []}]}', "integer 'turn' >= 0")]:
        bad = tmp_path / "bad.tokens.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=re.escape(message)):
            read_sidecar(bad)
    rec = Record(id="a", index=0, images=[], turns=[Turn("user", "hi"), Turn("assistant", "Hello world")], raw={})
    check_masks({"a": {1: [(0, 11)]}}, [rec])
    with pytest.raises(ValueError, match="record 'a': the token mask names turn 0"):
        check_masks({"a": {0: [(0, 1)]}}, [rec])
    with pytest.raises(ValueError, match="goes past the turn's 11 characters"):
        check_masks({"a": {1: [(3, 12)]}}, [rec])
    assert json.loads(path.read_text().splitlines()[1])["unscored"] == "not probed"
