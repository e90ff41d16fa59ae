"""DataTailor against a direct loop transcription of its formulas on a hand-made 11-row table."""

import math

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage

from mmsift.scorers import make_scorer
from mmsift.scorers._cluster import weighted_ward
from mmsift.scorers.datatailor import uniqueness
from mmsift.select import select_rows
from mmsift.store import Signals

LAST = [[0.0, 0.0], [0.2, 0.1], [0.1, 0.3], [5.0, 5.0], [5.3, 4.8], [4.9, 5.4], [5.1, 5.1],   # task a
        [1.0, -1.0], [1.2, -0.8], [-3.0, 2.0], [-3.1, 2.2]]                                    # task b
TASKS = ["a"] * 7 + ["b"] * 4
INFO = [1.2, 0.7, 1.5, 0.9, 1.1, 2.0, 0.4, 1.0, 1.3, 0.6, 0.8]
TAU = [0.5, 0.6, 0.4, 0.7, 0.5, 0.3, 0.8, 0.9, 0.8, 0.7, 0.95]
ROUNDS = [1, 1, 3, 1, 2, 1, 1, 1, 4, 1, 1]


def _signals(last=LAST, info=INFO):
    n = len(last)
    return Signals(ids=np.array([f"s{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(TASKS[:n], dtype=object),
                   columns={"sv_entropy": np.array(info, float), "sv_tau": np.array(TAU[:n], float),
                            "n_rounds": np.array(ROUNDS[:n], float), "last": np.array(last, np.float16)})


def _rank01(values):
    n = len(values)
    out = []
    for v in values:
        below = sum(1 for w in values if w < v)
        equal = sum(1 for w in values if w == v)
        out.append((below + (equal - 1) / 2) / n)
    return out


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _expected(theta=0.1):
    last = [[float(np.float16(v)) for v in row] for row in LAST]
    scores = [0.0] * len(last)
    for task in sorted(set(TASKS)):
        rows = [i for i, t in enumerate(TASKS) if t == task]
        pts = [last[i] for i in rows]
        z = linkage(np.array(pts), method="ward")
        labels = list(fcluster(z, t=theta * z[:, 2].max(), criterion="distance"))
        clusters = sorted(set(labels))
        u, r = {}, {}
        means = {}
        for c in clusters:
            members = [rows[k] for k in range(len(rows)) if labels[k] == c]
            dbar = sum(_dist(last[j], last[k]) for j in members for k in members) / len(members)
            for i in members:
                num = sum(_dist(last[i], last[j]) * INFO[j] for j in members)
                u[i] = num / dbar if dbar > 0 else 0.0
            means[c] = [sum(last[i][d] for i in members) / len(members) for d in range(2)]
        a = {}
        for c in clusters:
            others = [c2 for c2 in clusters if c2 != c]
            a[c] = sum(math.exp(_cos(means[c], means[o])) for o in others) / len(others) if others else 1.0
        mean_a = sum(a.values()) / len(a)
        for k, i in enumerate(rows):
            r[i] = a[labels[k]] / mean_a * INFO[i]
        ri, ru, rr = _rank01([INFO[i] for i in rows]), _rank01([u[i] for i in rows]), _rank01([r[i] for i in rows])
        for k, i in enumerate(rows):
            scores[i] = (ROUNDS[i] * ri[k] + ru[k] + rr[k]) / (ROUNDS[i] + 2)
    return scores


def test_scores_match_loop_transcription():
    scorer = make_scorer("datatailor")
    got = scorer.score(_signals())
    np.testing.assert_allclose(got, _expected(), rtol=1e-9, atol=1e-12)
    assert set(scorer.details_) >= {"I", "U", "R", "domain"}
    # task a has two well separated groups, task b two: four domains in all
    assert scorer.details_["domain"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1]


def test_micro_cluster_path_with_one_point_per_micro_cluster_equals_exact_ward():
    exact = make_scorer("datatailor").score(_signals())
    micro = make_scorer("datatailor", {"max_exact": 2, "n_micro": 50})
    np.testing.assert_allclose(micro.score(_signals()), exact, rtol=1e-9)
    assert any("micro-clusters" in n for n in micro.notes_)


def test_weighted_ward_equals_ward_on_repeated_points():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((8, 3))
    reps = np.array([1, 3, 2, 1, 4, 1, 2, 2])
    z_rep = linkage(np.repeat(pts, reps, axis=0), method="ward")
    z_w = weighted_ward(pts, reps)
    # the 7 merges of the weighted tree are the top 7 merges of the tree on repeated points
    np.testing.assert_allclose(np.sort(z_w[:, 2]), np.sort(z_rep[:, 2])[-7:], rtol=1e-9)


def test_quotas_follow_size_times_mean_tau_squared():
    sig = _signals()
    scorer = make_scorer("datatailor")
    scores = scorer.score(sig)
    wa = 7 * (sum(TAU[:7]) / 7) ** 2
    wb = 4 * (sum(TAU[7:]) / 4) ** 2
    q = scorer.quotas(sig, scores, 5)
    share_a = 5 * wa / (wa + wb)
    assert q["a"] + q["b"] == 5 and q["a"] in (math.floor(share_a), math.ceil(share_a))
    sel = select_rows(sig, scorer, 5)
    assert sel.kept_per_task == {k: v for k, v in q.items() if v}


def test_sampled_uniqueness_tracks_exact_on_a_large_cluster():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 8)).astype(np.float32) * rng.uniform(0.5, 2.0, (3000, 1)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 3000)
    exact, s1 = uniqueness(x, w, max_exact=5000, rng=np.random.default_rng(0))
    approx, s2 = uniqueness(x, w, max_exact=500, rng=np.random.default_rng(0))
    assert not s1 and s2
    assert np.corrcoef(exact, approx)[0, 1] > 0.98
    assert abs(approx.mean() / exact.mean() - 1) < 0.05


def test_nonfinite_informativeness_is_excluded_and_reported():
    info = list(INFO)
    info[4] = float("nan")
    scorer = make_scorer("datatailor")
    s = scorer.score(_signals(info=info))
    assert s[4] == -np.inf and np.isfinite(np.delete(s, 4)).all()
    assert "s4" in scorer.notes_[-1]


def test_bad_theta():
    with pytest.raises(ValueError, match="theta"):
        make_scorer("datatailor", {"theta": 1.5})


def test_micro_cluster_domains_agree_with_exact_ward_on_blobs():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((6, 16)) * 6
    group = rng.integers(0, 6, 2400)
    last = centres[group] + rng.standard_normal((2400, 16))
    n = len(last)
    sig = Signals(ids=np.array([f"b{i}" for i in range(n)], dtype=object), index=np.arange(n),
                  tasks=np.array(["t"] * n, dtype=object),
                  columns={"sv_entropy": rng.uniform(1, 3, n), "sv_tau": rng.uniform(0.1, 0.5, n),
                           "n_rounds": np.ones(n), "last": last.astype(np.float16)})
    exact = make_scorer("datatailor")
    exact.score(sig)
    micro = make_scorer("datatailor", {"max_exact": 1000, "n_micro": 200})
    micro.score(sig)
    assert any("micro-clusters" in note for note in micro.notes_)
    assert adjusted_rand_score(exact.details_["domain"], micro.details_["domain"]) > 0.9
    assert adjusted_rand_score(group, micro.details_["domain"]) > 0.9
