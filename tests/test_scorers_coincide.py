"""COINCIDE against a loop transcription (T, D, softmax shares, greedy MMD picks) on a hand-made table."""

import math

import numpy as np
import pytest

from mmsift.scorers import make_scorer
from mmsift.select import select_rows
from mmsift.store import Signals

# three obvious groups in the concatenated (img, txt) space
IMG = [[1, 0], [1, 0.1], [0.9, 0.2], [1, -0.1], [0.95, 0.05],
       [0, 1], [0.1, 1], [-0.1, 1],
       [-1, 0], [-1, -0.2]]
TXT = [[1, 0], [1, 0.05], [1, 0.3], [0.9, -0.2], [1, 0.1],
       [0, 1], [0.2, 1], [0, 0.9],
       [0, -1], [0.1, -1]]
CLUSTERS = [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9]]


def _signals():
    n = len(IMG)
    return Signals(ids=np.array([f"c{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(["all"] * n, dtype=object),
                   columns={"attn_img": np.array(IMG, np.float16), "attn_txt": np.array(TXT, np.float16)})


def _features():
    out = []
    for a, b in zip(IMG, TXT):
        v = [float(np.float16(t)) for t in a + b]
        s = math.sqrt(sum(t * t for t in v))
        out.append([t / s for t in v])
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _k(a, b, bw=1.0):
    return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b)) / (2 * bw * bw))


def _unit(v):
    s = math.sqrt(sum(t * t for t in v))
    return [t / s for t in v]


def _expected_shares(temperature=0.1, cap=0.9, transfer_on="text"):
    """The authors' code: T on the text half of the centroids (cosine, pairs above ``cap`` and the centroid itself
    left out), D = mean kernel over all member pairs *including* each member with itself."""
    x = _features()
    cents = []
    for members in CLUSTERS:
        cents.append(_unit([sum(x[i][d] for i in members) / len(members) for d in range(4)]))
    part = [_unit(c[2:]) if transfer_on == "text" else c for c in cents]
    t, d = [], []
    for c, members in enumerate(CLUSTERS):
        sims = [_dot(part[c], part[o]) for o in range(len(CLUSTERS)) if o != c]
        kept = [s for s in sims if s <= cap]
        t.append(sum(kept) / len(kept) if kept else 0.0)
        pairs = [_k(x[i], x[j]) for i in members for j in members]
        d.append(sum(pairs) / len(pairs))
    logits = [ti / di / temperature for ti, di in zip(t, d)]
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits], t, d


def _mmd2(chosen, members, x):
    s = sum(_k(x[a], x[b]) for a in chosen for b in chosen) / len(chosen) ** 2
    cross = sum(_k(x[a], x[b]) for a in chosen for b in members) / (len(chosen) * len(members))
    return s - 2 * cross


def _greedy_mmd(members, q):
    x = _features()
    chosen = []
    for _ in range(q):
        best = min((i for i in members if i not in chosen), key=lambda i: (_mmd2(chosen + [i], members, x), i))
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("transfer_on", ["text", "all"])
def test_scores_are_shares_per_member(transfer_on):
    scorer = make_scorer("coincide", {"n_clusters": 3, "transfer_on": transfer_on})
    got = scorer.score(_signals())
    w, t, d = _expected_shares(transfer_on=transfer_on)
    expected = [0.0] * len(IMG)
    for c, members in enumerate(CLUSTERS):
        for i in members:
            expected[i] = w[c] / len(members)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(scorer.details_["T"][[0, 5, 8]], t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scorer.details_["D"][[0, 5, 8]], d, rtol=1e-5)


def test_density_includes_each_member_with_itself():
    # a 2-member cluster {8, 9}: D = (1 + 1 + 2 k(x8, x9)) / 4, not k(x8, x9) (the old off-diagonal mean)
    x = _features()
    k89 = _k(x[8], x[9])
    scorer = make_scorer("coincide", {"n_clusters": 3})
    scorer.score(_signals())
    assert scorer.details_["D"][8] == pytest.approx((2 + 2 * k89) / 4, rel=1e-5)
    assert abs(scorer.details_["D"][8] - k89) > 1e-3


@pytest.mark.parametrize("budget", [3, 5, 7])
def test_choose_follows_shares_and_greedy_mmd(budget):
    w, _, _ = _expected_shares()
    # largest-remainder split of the budget, capped at cluster sizes (hand-checked for these shares)
    from mmsift.budget import apportion

    quotas = apportion(w, budget, caps=[len(c) for c in CLUSTERS])
    sel = set(select_rows(_signals(), make_scorer("coincide", {"n_clusters": 3}), budget).rows.tolist())
    for c, members in enumerate(CLUSTERS):
        got = sel & set(members)
        if len(members) == 2 and quotas[c] == 1:
            # both members of a pair are equally central (an exact tie that float32 rounding decides)
            assert len(got) == 1
        else:
            assert got == set(_greedy_mmd(members, int(quotas[c])))


def test_herding_first_pick_is_the_most_central_member():
    x = _features()
    members = CLUSTERS[0]
    central = max(members, key=lambda i: sum(_k(x[i], x[j]) for j in members))
    assert _greedy_mmd(members, 1) == [central]
    sel = select_rows(_signals(), make_scorer("coincide", {"n_clusters": 1}), 1)
    everyone = list(range(len(IMG)))
    assert sel.rows.tolist() == [max(everyone, key=lambda i: sum(_k(x[i], x[j]) for j in everyone))]


def test_features_choice_reads_the_named_signals():
    assert make_scorer("coincide").requires == ("attn_img", "attn_txt")
    sig = _signals()
    sig.columns = {"img_mean": sig.columns["attn_img"], "txt_mean": sig.columns["attn_txt"]}
    hidden = make_scorer("coincide", {"n_clusters": 3, "features": "hidden"})
    np.testing.assert_allclose(hidden.score(sig), make_scorer("coincide", {"n_clusters": 3}).score(_signals()))
    with pytest.raises(ValueError, match="features"):
        make_scorer("coincide", {"features": "pixels"})
