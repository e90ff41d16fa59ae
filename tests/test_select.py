"""The selector and budget helpers: budgets, quotas, ties, determinism, dedup, errors."""

import numpy as np
import pytest

from mmsift.budget import apportion, parse_budget, resolve_budget
from mmsift.scorers import SCORERS, make_scorer
from mmsift.scorers.base import Scorer
from mmsift.select import select_rows, select_run
from mmsift.store import Signals, StoreError, from_arrays


def _signals(n_tokens, tasks=None):
    n = len(n_tokens)
    return Signals(
        ids=np.array([f"r{i}" for i in range(n)], dtype=object),
        index=np.arange(n),
        tasks=np.array(tasks or ["all"] * n, dtype=object),
        columns={"n_tokens": np.asarray(n_tokens, dtype=np.float64)},
    )


def test_resolve_budget_fraction_and_count():
    assert resolve_budget(0.15, 100) == 15
    assert resolve_budget(1.0, 7) == 7
    assert resolve_budget(0.01, 10) == 1  # never zero from a positive fraction
    assert resolve_budget(5000, 100) == 100
    assert resolve_budget(3, 100) == 3
    for bad in (0.0, 1.5, -1, 0):
        with pytest.raises(ValueError):
            resolve_budget(bad, 10)


def test_parse_budget():
    assert parse_budget("0.15") == 0.15 and isinstance(parse_budget("0.15"), float)
    assert parse_budget("5000") == 5000 and isinstance(parse_budget("5000"), int)
    assert parse_budget("1.0") == 1.0 and isinstance(parse_budget("1.0"), float)
    with pytest.raises(ValueError, match="neither"):
        parse_budget("half")


def test_apportion_proportional_capped_and_exact_total():
    assert apportion([1, 1, 1], 10).tolist() == [4, 3, 3]  # remainder to the earlier group
    assert apportion([5, 1], 10, caps=[3, 100]).tolist() == [3, 7]  # cap overflow moves to the others
    assert apportion([1, 2], 100, caps=[5, 5]).tolist() == [5, 5]  # total limited by caps
    assert apportion([0, 0], 3).tolist() == [2, 1]  # all-zero weights: split evenly
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.random(7)
        caps = rng.integers(0, 20, 7)
        total = int(rng.integers(0, 80))
        got = apportion(w, total, caps=caps)
        assert got.sum() == min(total, caps.sum()) and np.all(got <= caps) and np.all(got >= 0)


def test_top_k_ties_go_to_pool_order():
    sel = select_rows(_signals([5, 9, 9, 9, 1]), make_scorer("length"), 2)
    assert sel.ids == ["r1", "r2"]
    sel = select_rows(_signals([5, 9, 9, 9, 1]), make_scorer("length", {"longest": False}), 2)
    assert sel.ids == ["r0", "r4"]  # output is in pool order


def test_random_is_seeded_and_uniform_without_replacement():
    s = _signals(np.zeros(1000))
    a = select_rows(s, make_scorer("random", random_state=3), 0.1).ids
    b = select_rows(s, make_scorer("random", random_state=3), 0.1).ids
    c = select_rows(s, make_scorer("random", random_state=4), 0.1).ids
    assert a == b and a != c and len(set(a)) == 100


def test_balance_tasks_keeps_task_shares():
    s = _signals(list(range(10)), tasks=["a"] * 8 + ["b"] * 2)
    sel = select_rows(s, make_scorer("length"), 5, balance_tasks=True)
    assert sel.kept_per_task == {"a": 4, "b": 1}
    assert sel.ids == ["r4", "r5", "r6", "r7", "r9"]


class _Quota(Scorer):
    name = "quota_test"
    requires = ("n_tokens",)

    def score(self, signals):
        return np.asarray(signals["n_tokens"], dtype=float)

    def quotas(self, signals, scores, n_keep):
        self.notes_.append("quota note")
        return {"a": n_keep - 1, "b": 1}


class _Dedup(Scorer):
    name = "dedup_test"

    def score(self, signals):
        return np.zeros(len(signals))

    def keep_mask(self, signals):
        return np.asarray(signals["n_tokens"]) % 2 == 0


def test_method_quotas_and_dedup_step():
    s = _signals(list(range(10)), tasks=["a"] * 5 + ["b"] * 5)
    sel = select_rows(s, _Quota(), 3)
    assert sel.ids == ["r3", "r4", "r9"]
    assert sel.notes == ["quota note"]  # notes written while choosing reach the report
    sel = select_rows(s, make_scorer("length"), 3, dedup=_Dedup())
    assert sel.ids == ["r4", "r6", "r8"] and sel.dropped_by_dedup == 5


def test_dedup_keeps_the_methods_quotas():
    # quotas {"a": 2, "b": 1} are applied to the rows dedup kept (even n_tokens): a -> r2, r4; b -> r8. The old
    # selector skipped quotas() under --dedup and took the global top 3 (r4, r6, r8: task a got 1, not 2).
    s = _signals(list(range(10)), tasks=["a"] * 5 + ["b"] * 5)
    sel = select_rows(s, _Quota(), 3, dedup=_Dedup())
    assert sel.ids == ["r2", "r4", "r8"]
    assert sel.kept_per_task == {"a": 2, "b": 1}


class _Choose(Scorer):
    """Chooses the last ``n_keep`` rows of the table it is given and records what it saw."""

    name = "choose_test"
    requires = ("n_tokens",)

    def score(self, signals):
        return np.zeros(len(signals))

    def choose(self, signals, scores, n_keep):
        self.seen = list(signals.ids)
        return np.arange(len(signals) - n_keep, len(signals))


def test_dedup_keeps_the_methods_choose():
    s = _signals(list(range(10)))
    scorer = _Choose()
    sel = select_rows(s, scorer, 2, dedup=_Dedup())
    assert scorer.seen == ["r0", "r2", "r4", "r6", "r8"]  # choose() ran on the deduplicated rows
    assert sel.ids == ["r6", "r8"]  # its positions were mapped back to the full table


def test_datatailor_task_budgets_survive_a_dedup_that_removes_nothing():
    from tests.test_scorers_datatailor import _signals as dt_signals

    sig = dt_signals()
    plain = select_rows(sig, make_scorer("datatailor"), 5)
    deduped = select_rows(sig, make_scorer("datatailor"), 5,
                          dedup=make_scorer("semdedup", {"eps": 0.0, "n_clusters": 2}))
    assert deduped.dropped_by_dedup == 0
    assert deduped.kept_per_task == plain.kept_per_task and deduped.ids == plain.ids


class _Nan(Scorer):
    name = "nan_test"

    def score(self, signals):
        return np.full(len(signals), np.nan)


def test_nan_scores_and_missing_signals_are_clear_errors():
    with pytest.raises(ValueError, match="NaN scores.*r0"):
        select_rows(_signals([1, 2]), _Nan(), 1)
    s = _signals([1, 2])
    s.columns.pop("n_tokens")
    with pytest.raises(KeyError, match="needs signals \\['n_tokens'\\]"):
        select_rows(s, make_scorer("length"), 1)


def test_unknown_method_and_bad_params():
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        make_scorer("nope")
    with pytest.raises(ValueError, match="bad parameters for method 'length'.*its parameters: longest"):
        make_scorer("length", {"shortest": True})


def test_select_run_reads_only_needed_signals_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    from_arrays(tmp_path / "run", ids=[f"x{i}" for i in range(50)],
                columns={"n_tokens": rng.integers(1, 100, 50), "last": rng.random((50, 8))})
    a = select_run(str(tmp_path / "run"), "length", 0.2)
    b = select_run(str(tmp_path / "run"), "length", 0.2)
    assert a.ids == b.ids and len(a.ids) == 10
    with pytest.raises(StoreError, match="not a finished mmsift run"):
        select_run(str(tmp_path / "nothing"), "length", 0.2)


def test_registry_names_match_classes():
    for name, cls in SCORERS.items():
        assert cls.name == name


class _Excludes(Scorer):
    name = "excludes_test"
    requires = ("n_tokens",)

    def score(self, signals):
        s = np.asarray(signals["n_tokens"], dtype=float)
        return np.where(s > 6, -np.inf, s)


def test_excluded_rows_are_never_chosen_even_when_budget_is_larger():
    sel = select_rows(_signals(list(range(10))), _Excludes(), 9)
    assert sel.ids == [f"r{i}" for i in range(7)]
    assert any("more than the 7 selectable samples" in n for n in sel.notes)


def test_selfcheck_reads_loss_ref_from_the_run_or_a_reference_run(tmp_path):
    ids = [f"x{i}" for i in range(6)]
    loss = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 0.5])
    before = np.array([0.5, 2.5, 3.5, 0.1, 2.6, 0.4])  # fine-tuning lowered x1, x2 and x4 the most
    from_arrays(tmp_path / "after", ids=ids, columns={"loss": loss})
    from_arrays(tmp_path / "before", ids=ids[::-1], columns={"loss": before[::-1]})  # other row order
    from_arrays(tmp_path / "both", ids=ids, columns={"loss": loss, "loss_ref": before})
    plain = select_run(str(tmp_path / "after"), "selfcheck", 3)
    assert plain.ids == ["x0", "x3", "x5"]  # lowest loss
    ref = select_run(str(tmp_path / "after"), "selfcheck", 3, reference_run=str(tmp_path / "before"))
    stored = select_run(str(tmp_path / "both"), "selfcheck", 3)
    assert ref.ids == stored.ids == ["x1", "x2", "x4"]  # most negative loss - loss_ref
    np.testing.assert_allclose(ref.scores, -(loss - before))
    from_arrays(tmp_path / "short", ids=ids[:4], columns={"loss": before[:4]})
    with pytest.raises(ValueError, match="lacks 2 of this run's records"):
        select_run(str(tmp_path / "after"), "selfcheck", 3, reference_run=str(tmp_path / "short"))
