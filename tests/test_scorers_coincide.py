"""COINCIDE against a loop transcription of the authors' code (features, T, D, softmax shares, greedy MMD picks,
text-only placement, cluster count) on hand-made tables."""

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


def _signals(img=IMG, txt=TXT):
    n = len(img)
    return Signals(ids=np.array([f"c{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(["all"] * n, dtype=object),
                   columns={"attn_img": np.array(img, np.float16), "attn_txt": np.array(txt, np.float16)})


def _features(img=IMG, txt=TXT, text_only="image"):
    """The code's features: each part L2-normalised and divided by sqrt(2) (its per-layer, per-modality
    normalisation and 1/sqrt(2 x layers) scaling), a text-only record's text read as its image part.
    ``text_only="text"``: mmsift's earlier rule, the whole concatenated row L2-normalised."""
    out = []
    for a, b in zip(img, txt):
        a = [float(np.float16(t)) for t in a]
        b = [float(np.float16(t)) for t in b]
        if text_only == "text":
            out.append(_unit(a + b))
        elif not any(a):
            out.append([t / math.sqrt(2) for t in _unit(b)] + [0.0] * len(b))
        else:
            out.append([t / math.sqrt(2) for t in _unit(a) + _unit(b)])
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _k(a, b, bw=1.0):
    return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b)) / (2 * bw * bw))


def _unit(v):
    s = math.sqrt(sum(t * t for t in v))
    return [t / s for t in v]


def _expected_shares(temperature=0.1, cap=0.9, transfer_on="text", x=None, clusters=CLUSTERS):
    """The authors' code: T on the text half of the centroids (cosine, pairs above ``cap`` and the centroid itself
    left out), D = mean kernel over all member pairs *including* each member with itself."""
    x = _features() if x is None else x
    cents = []
    for members in clusters:
        cents.append(_unit([sum(x[i][d] for i in members) / len(members) for d in range(4)]))
    part = [_unit(c[2:]) if transfer_on == "text" else c for c in cents]
    t, d = [], []
    for c, members in enumerate(clusters):
        sims = [_dot(part[c], part[o]) for o in range(len(clusters)) if o != c]
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
@pytest.mark.parametrize("text_only", ["image", "text"])
def test_scores_are_shares_per_member(transfer_on, text_only):
    scorer = make_scorer("coincide", {"n_clusters": 3, "transfer_on": transfer_on, "text_only": text_only})
    got = scorer.score(_signals())
    w, t, d = _expected_shares(transfer_on=transfer_on, x=_features(text_only=text_only))
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


def test_text_only_records_fill_the_image_half_as_in_the_code():
    """Two text-only records (zero image part) whose text points along -x: with the code's placement their
    features are [text / sqrt(2); 0], closest to the third group (image -x); T, D and shares follow the loop
    transcription on those features and that partition."""
    img = IMG + [[0, 0], [0, 0]]
    txt = TXT + [[-1, 0.05], [-1, -0.05]]
    clusters = [CLUSTERS[0], CLUSTERS[1], CLUSTERS[2] + [10, 11]]
    scorer = make_scorer("coincide", {"n_clusters": 3})
    got = scorer.score(_signals(img, txt))
    labels = scorer.details_["cluster"]
    assert [sorted(np.flatnonzero(labels == labels[c[0]]).tolist()) for c in clusters] == clusters
    x = _features(img, txt)
    h = math.hypot(1, 0.05)
    assert x[10][:2] == pytest.approx([-1 / math.sqrt(2) / h, 0.05 / math.sqrt(2) / h], abs=1e-4)  # float16 input
    assert x[10][2:] == [0.0, 0.0]
    w, t, d = _expected_shares(x=x, clusters=clusters)
    for c, members in enumerate(clusters):
        np.testing.assert_allclose(got[members], w[c] / len(members), rtol=1e-5)
        assert scorer.details_["D"][members[0]] == pytest.approx(d[c], rel=1e-5)
        assert scorer.details_["T"][members[0]] == pytest.approx(t[c], rel=1e-5, abs=1e-7)
    assert any("2 text-only" in n for n in scorer.notes_)
    # mmsift's earlier placement keeps them in the text half: unit rows [0; text]
    old = make_scorer("coincide", {"n_clusters": 3, "text_only": "text"})
    old.score(_signals(img, txt))
    assert not any("text-only" in n for n in old.notes_)
    with pytest.raises(ValueError, match="text_only"):
        make_scorer("coincide", {"text_only": "both"})


def test_default_cluster_count_and_iterations_follow_the_code(monkeypatch):
    """K = round(N / 70) (the code: 10 000 clusters on 665k, 2 500 on ~186k) and 50 Lloyd iterations."""
    import mmsift.scorers.coincide as mod

    seen = []

    def spy(x, k, **kw):
        seen.append((k, kw["niter"]))
        return real(x, k, **kw)

    real = mod.kmeans
    monkeypatch.setattr(mod, "kmeans", spy)
    rng = np.random.default_rng(0)
    for n in (35, 700, 1000):
        img = rng.normal(size=(n, 4))
        make_scorer("coincide").score(_signals(img.tolist(), rng.normal(size=(n, 4)).tolist()))
    make_scorer("coincide", {"n_clusters": 7, "niter": 10}).score(_signals())
    make_scorer("coincide", {"cluster_size": 20}).score(_signals(img.tolist(), img.tolist()))
    assert seen == [(1, 50), (10, 50), (14, 50), (7, 10), (50, 50)]
