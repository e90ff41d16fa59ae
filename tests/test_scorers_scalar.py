"""Score-only baselines (el2n, perplexity, loss, ifd, selfcheck) and mmsift.metrics.auroc against hand-computed
values on tiny tables."""

import math

import numpy as np
import pytest

from mmsift.metrics import auroc
from mmsift.scorers import make_scorer
from mmsift.select import select_rows
from mmsift.store import Signals

LOSS = [2.0, 0.5, 1.0, 3.0, 1.0, float("nan"), 0.1]
NOQ = [1.5, 1.0, 1.0, 2.0, 0.4, 1.0, 0.3]
EL2N = [0.9, 0.2, 0.5, 0.95, 0.5, 0.1, float("inf")]
REF = [2.5, 0.4, 1.5, 2.0, 1.0, 1.0, 0.2]


def _signals(**cols):
    n = len(next(iter(cols.values())))
    return Signals(ids=np.array([f"r{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(["all"] * n, dtype=object),
                   columns={k: np.asarray(v, dtype=np.float64) for k, v in cols.items()})


def _median(values):
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def _expected_mode(values, mode):
    finite = [v for v in values if math.isfinite(v)]
    med = _median(finite)
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(-math.inf)
        elif mode == "low":
            out.append(-v)
        elif mode == "high":
            out.append(v)
        else:
            out.append(-abs(v - med))
    return out


def test_el2n_both_directions():
    sig = _signals(el2n=EL2N)
    hard = make_scorer("el2n").score(sig)
    expected = [v if math.isfinite(v) else -math.inf for v in EL2N]
    np.testing.assert_allclose(hard, expected)
    easy = make_scorer("el2n", {"hardest": False})
    s = easy.score(sig)
    np.testing.assert_allclose(s, [-v if math.isfinite(v) else -math.inf for v in EL2N])
    assert "1 records excluded" in easy.notes_[0] and "r6" in easy.notes_[0]


@pytest.mark.parametrize("mode", ["low", "high", "mid"])
def test_perplexity_modes(mode):
    # low/high rank exp(loss); mid ranks the distance to the median in loss space
    ppl = [math.exp(v) if math.isfinite(v) else math.nan for v in LOSS]
    got = make_scorer("perplexity", {"mode": mode}).score(_signals(loss=LOSS))
    np.testing.assert_allclose(got, _expected_mode(LOSS if mode == "mid" else ppl, mode))


@pytest.mark.parametrize("mode", ["low", "high", "mid"])
def test_loss_modes(mode):
    got = make_scorer("loss", {"mode": mode}).score(_signals(loss=LOSS))
    np.testing.assert_allclose(got, _expected_mode(LOSS, mode))


def test_perplexity_mid_keeps_the_middle_in_loss_space():
    # median loss 1.0; loss-space distances 1.0, 0.0, 0.8 keep r1 and r2. In perplexity space (the old rule) the
    # distances are |1 - e| = 1.72, 0 and |e^1.8 - e| = 3.33, which kept r1 and r0 instead.
    sig = _signals(loss=[0.0, 1.0, 1.8])
    assert select_rows(sig, make_scorer("perplexity", {"mode": "mid"}), 2).ids == ["r1", "r2"]
    assert select_rows(sig, make_scorer("loss", {"mode": "mid"}), 2).ids == ["r1", "r2"]


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="mode"):
        make_scorer("loss", {"mode": "median"})


@pytest.mark.parametrize("drop", [False, True])
def test_ifd(drop):
    sig = _signals(loss=LOSS, loss_noq=NOQ)
    scorer = make_scorer("ifd", {"drop_above_one": drop})
    got = scorer.score(sig)
    expected = []
    for loss, noq in zip(LOSS, NOQ):
        if not (math.isfinite(loss) and math.isfinite(noq)):
            expected.append(-math.inf)
            continue
        ifd = loss / noq  # ratio of mean cross-entropies, as Cherry LLM's code divides mean losses
        expected.append(-math.inf if drop and ifd > 1 else ifd)
    np.testing.assert_allclose(got, expected)
    if drop:
        assert any("IFD > 1" in n for n in scorer.notes_)


def _cherry_reference(loss, noq, rate):
    """Cherry LLM's data_by_IFD.py rule, written out: ratio mean_loss(A|Q) / mean_loss(A), ratios above 1 skipped,
    the list sorted ascending and the last ``int(len * rate)`` kept."""
    rates = sorted((a / b, i) for i, (a, b) in enumerate(zip(loss, noq)) if a / b <= 1)
    k = int(len(rates) * rate)
    return sorted(i for _, i in rates[len(rates) - k:])


def test_ifd_default_follows_cherry_llm():
    # r0-r2 have IFD > 1 (the largest exp(loss - loss_noq) too); the old default (exp of the difference, nothing
    # dropped) kept r0, r1 and r2, all of which Cherry discards.
    loss = [3.0, 2.5, 2.2, 0.9, 0.8, 0.32, 0.62, 0.44, 0.2, 0.1]
    noq = [1.0, 1.0, 1.5, 1.0, 2.0, 0.35, 0.7, 0.5, 1.0, 0.9]
    sig = _signals(loss=loss, loss_noq=noq)
    # --sample_rate 0.3: 30% of the 7 rows left after dropping ratios > 1, int(2.1) = 2 rows
    want = _cherry_reference(loss, noq, 0.3)
    assert want == [3, 5]
    got = select_rows(sig, make_scorer("ifd"), 0.3)
    assert [int(i[1:]) for i in got.ids] == want
    assert any("kept 2" in n for n in got.notes)
    # budget_of="pool": the budget counts rows (the script's --sample_number 3)
    pool = select_rows(sig, make_scorer("ifd", {"budget_of": "pool"}), 3)
    assert [int(i[1:]) for i in pool.ids] == [3, 5, 6]
    old = np.exp(np.array(loss) - np.array(noq))
    assert set(np.argsort(-old, kind="stable")[:3].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.7, 1.0])
def test_ifd_rate_is_of_the_rows_left(rate):
    """On a 40-row pool where 10 ratios exceed 1, the kept rows are data_by_IFD.py's for --sample_rate ``rate``
    (the budget ``rate`` resolves to a whole number of the 40 rows)."""
    rng = np.random.default_rng(3)
    loss = np.round(rng.uniform(0.2, 2.0, 40), 3).tolist()
    noq = np.round(rng.uniform(0.5, 2.5, 40), 3).tolist()
    got = select_rows(_signals(loss=loss, loss_noq=noq), make_scorer("ifd"), rate)
    want = _cherry_reference(loss, noq, rate)
    assert sum(a / b > 1 for a, b in zip(loss, noq)) == 10
    assert [int(i[1:]) for i in got.ids] == want


def test_ifd_budget_beyond_the_rows_left_keeps_them_all():
    """Budget 0.9 of 40 = 36 rows, more than the 30 left: the selector caps it at 30 before IFD sees it, so IFD
    keeps all 30 (the script would keep int(0.9 x 30) = 27); the notes say so."""
    rng = np.random.default_rng(3)
    loss = np.round(rng.uniform(0.2, 2.0, 40), 3).tolist()
    noq = np.round(rng.uniform(0.5, 2.5, 40), 3).tolist()
    got = select_rows(_signals(loss=loss, loss_noq=noq), make_scorer("ifd"), 0.9)
    assert len(got.ids) == 30 == len(_cherry_reference(loss, noq, 1.0))
    assert any("reached the 30 rows left" in n for n in got.notes)
    with pytest.raises(ValueError, match="budget_of"):
        make_scorer("ifd", {"budget_of": "all"})


def test_ifd_nonpositive_noq_is_excluded():
    scorer = make_scorer("ifd")
    got = scorer.score(_signals(loss=[0.5, 0.5], loss_noq=[0.0, 1.0]))
    np.testing.assert_allclose(got, [-math.inf, 0.5])
    assert "r0" in scorer.notes_[0]


@pytest.mark.parametrize("use_ref", [False, True])
def test_selfcheck(use_ref):
    sig = _signals(loss=LOSS, loss_ref=REF)
    got = make_scorer("selfcheck", {"use_reference": use_ref}).score(sig)
    expected = []
    for loss, ref in zip(LOSS, REF):
        v = loss - ref if use_ref else loss
        expected.append(-v if math.isfinite(v) else -math.inf)
    np.testing.assert_allclose(got, expected)


def test_selfcheck_without_reference_column_uses_loss():
    got = make_scorer("selfcheck").score(_signals(loss=[1.0, 2.0, 0.5]))
    np.testing.assert_allclose(got, [-1.0, -2.0, -0.5])


def test_selection_keeps_best_and_skips_excluded():
    sel = select_rows(_signals(loss=LOSS), make_scorer("loss", {"mode": "low"}), 3)
    assert sel.ids == ["r1", "r2", "r6"]
    # ties (r2 and r4 both have loss 1.0): the earlier record wins
    sel = select_rows(_signals(loss=LOSS), make_scorer("loss", {"mode": "low"}), 4)
    assert set(sel.ids) == {"r6", "r1", "r2", "r4"}
    sel = select_rows(_signals(loss=LOSS), make_scorer("loss", {"mode": "high"}), 6)
    assert "r5" not in sel.ids


def _auroc_by_pairs(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def test_auroc_matches_pair_count_and_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    assert auroc(scores, labels) == pytest.approx(_auroc_by_pairs(scores, labels))
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc([-np.inf, 1.0, 2.0], [0, 1, 1]) == 1.0


def test_auroc_errors():
    with pytest.raises(ValueError, match="both classes"):
        auroc([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 2.0], [0, 1])


def test_selfcheck_budget_is_the_cleanest_share_of_every_task():
    # task a: losses 0.1 .. 1.0; task b (harder in itself): 2.0 .. 2.9. A 20% budget is the cleanest 2 of each
    # task (r0, r1 and r10, r11); one global ranking (the old behaviour, per_task=False) took r0-r3, all from a.
    loss = [0.1 * (i + 1) for i in range(10)] + [2.0 + 0.1 * i for i in range(10)]
    sig = _signals(loss=loss)
    sig.tasks = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    sel = select_rows(sig, make_scorer("selfcheck"), 0.2)
    assert sel.ids == ["r0", "r1", "r10", "r11"] and sel.kept_per_task == {"a": 2, "b": 2}
    assert select_rows(sig, make_scorer("selfcheck", {"per_task": False}), 0.2).ids == ["r0", "r1", "r2", "r3"]
    assert select_rows(sig, make_scorer("selfcheck"), 0.1).ids == ["r0", "r10"]  # 10% of each task
