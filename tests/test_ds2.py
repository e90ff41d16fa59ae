"""DS2's posterior mode (mmsift's earlier estimator: consensus transition matrix, posterior correction) and the
parts both modes share (rating levels, long-tail tie-break, unrated rows), against hand computations and on a
table with a known corruption. The default mode (HOC + SimiFeat, the authors' code) is in test_scorers_ds2.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.scorers import SCORERS
from mmsift.scorers.ds2 import DS2, rated_levels
from mmsift.select import select_run
from mmsift.store import Signals, from_arrays


def signals(emb, rating, column="score") -> Signals:
    n = len(rating)
    return Signals(ids=np.asarray([f"r{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.asarray(["all"] * n, dtype=object),
                   columns={"last": np.asarray(emb, dtype=np.float32), column: np.asarray(rating, dtype=float)})


def reference(emb, rating, k, alpha):
    """DS2's estimator transcribed with plain loops (cosine k-NN by brute force)."""
    emb = [np.asarray(e, float) / np.linalg.norm(e) for e in emb]
    n = len(emb)
    r = [-1 if math.isnan(x) else int(min(5, max(0, math.floor(x + 0.5)))) for x in rating]
    nbrs, dists = [], []
    for i in range(n):
        sims = sorted(((float(emb[i] @ emb[j]), -j, j) for j in range(n) if j != i), reverse=True)[:k]
        nbrs.append([j for _, _, j in sims])
        dists.append([1 - s for s, _, _ in sims])
    cons = []
    for i in range(n):
        votes = [sum(1 for j in nbrs[i] if r[j] == a) for a in range(6)]
        top = max(votes)
        tied = [a for a in range(6) if votes[a] == top]
        cons.append(-1 if top == 0 else (r[i] if r[i] in tied else tied[0]))
    cnt = [[0.0] * 6 for _ in range(6)]
    m = 0
    for i in range(n):
        if r[i] >= 0 and cons[i] >= 0:
            cnt[cons[i]][r[i]] += 1
            m += 1
    t = [[(cnt[a][b] + alpha) / (sum(cnt[a]) + 6 * alpha) for b in range(6)] for a in range(6)]
    prior = [(sum(cnt[a]) + alpha) / (m + 6 * alpha) for a in range(6)]
    corrected = []
    for i in range(n):
        w = []
        for a in range(6):
            p = prior[a] * (t[a][r[i]] if r[i] >= 0 else 1.0)
            for j in nbrs[i]:
                if r[j] >= 0:
                    p *= t[a][r[j]]
            w.append(p)
        corrected.append(sum(a * w[a] for a in range(6)) / sum(w))
    rarity = [sum(d) / len(d) for d in dists]
    return np.array(t), np.array(corrected), np.array(rarity), r


def test_matches_loop_transcription_on_tiny_table():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(14, 3))
    rating = [0, 1, 2, 3, 4, 5, 5, 4, 3.4, 2.6, float("nan"), 1, 0, 5]
    m = DS2(column="score", curation="posterior", k=3, alpha=0.5)
    s = m.score(signals(emb, rating))
    t, corrected, rarity, r = reference(emb, rating, 3, 0.5)
    np.testing.assert_allclose(m.transition_, t, rtol=1e-10)
    np.testing.assert_allclose(m.details_["ds2_corrected"], corrected, rtol=1e-8)
    np.testing.assert_allclose(m.details_["ds2_rarity"], rarity, rtol=1e-5)
    assert m.details_["ds2_rated"].tolist() == r
    # score = rounded corrected score, then rarity rank in [0, 1)
    np.testing.assert_array_equal(np.floor(s), np.floor(corrected + 0.5))
    order_in_level = np.argsort(rarity, kind="stable")
    assert np.all(np.diff((s - np.floor(s))[order_in_level]) > 0)


@pytest.mark.parametrize("exact_max,dim", [(10**6, 16), (100, 96)])  # exact k-NN; IVF + PCA path
def test_recovers_known_corruption(exact_max, dim):
    rng = np.random.default_rng(0)
    per, n_lvl = 120, 6
    centers = rng.normal(size=(n_lvl, dim)) * 4
    true = np.repeat(np.arange(n_lvl), per)
    emb = centers[true] + rng.normal(size=(len(true), dim))
    # Known corruption: keep with 0.7, else move one level down or up (0.15 each, clipped into 0..5).
    u = rng.random(len(true))
    rated = np.where(u < 0.7, true, np.where(u < 0.85, true - 1, true + 1)).clip(0, 5)
    t_true = np.zeros((6, 6))
    for a in range(6):
        t_true[a, a] += 0.7
        t_true[a, max(a - 1, 0)] += 0.15
        t_true[a, min(a + 1, 5)] += 0.15
    m = DS2(column="score", curation="posterior", k=10, alpha=1.0, exact_max=exact_max)
    m.score(signals(emb, rated.astype(float)))
    assert ("approximate" in m.notes_[0]) == (exact_max < len(true))
    assert np.abs(m.transition_ - t_true).max() < 0.1
    fixed = np.floor(m.details_["ds2_corrected"] + 0.5)
    acc_raw, acc_fixed = (rated == true).mean(), (fixed == true).mean()
    assert acc_raw < 0.8 and acc_fixed > 0.97, (acc_raw, acc_fixed)  # expected raw: 0.7 + 2 * 0.15 / 6 = 0.75


@pytest.mark.parametrize("curation", ["simifeat", "posterior"])
def test_long_tail_breaks_ties_and_unrated_are_imputed(curation):
    # Two tight groups (rated 5 and 1), a point off group 1 rated 5, and an unrated point inside group 1.
    emb = np.array([[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01], [1, 0.01, 0.01],
                    [0, 1, 0], [0.01, 1, 0], [0, 1, 0.01], [1, 0.3, 0.3], [1, 0.005, 0.005]])
    rating = [5, 5, 5, 5, 1, 1, 1, 5, float("nan")]
    m = DS2(column="score", k=3, curation=curation)
    s = m.score(signals(emb, rating))
    top = np.argsort(-s, kind="stable")
    assert top[0] == 7  # the far-away 5 is the rarest of the 5s
    assert m.details_["ds2_rated"][8] == -1 and m.details_["ds2_corrected"][8] > 4


def test_default_column_is_mean_of_capabilities(tmp_path):
    n = 40
    rng = np.random.default_rng(1)
    cols = {"last": rng.normal(size=(n, 8)).astype(np.float32),
            "cap_humanities": np.r_[np.full(n - 1, 4.0), np.nan],
            "cap_stem_knowledge": np.r_[np.full(n - 2, 1.0), np.nan, np.nan]}
    sig = Signals(ids=np.arange(n).astype(str).astype(object), index=np.arange(n),
                  tasks=np.full(n, "all", dtype=object), columns=cols)
    lv = rated_levels(sig, None)
    assert lv[:n - 2].tolist() == [3] * (n - 2)  # mean 2.5 rounds half up
    assert lv[n - 2] == 4 and lv[n - 1] == -1
    assert SCORERS["ds2"] is DS2
    from_arrays(tmp_path / "run", ids=sig.ids, columns={"last": cols["last"], "myscore": np.arange(n) % 6})
    sel = select_run(str(tmp_path / "run"), "ds2", 10, params={"column": "myscore", "k": 5})
    assert len(sel.ids) == 10 and not np.isnan(sel.scores).any()
    for bad in ({"k": 0}, {"k": 1}, {"curation": "vote"}, {"sample_frac": 0.0}, {"rounds": 0}):
        with pytest.raises(ValueError):
            DS2(**bad)
    DS2(k=1, curation="posterior")  # the posterior needs one neighbour only
