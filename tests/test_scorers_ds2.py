"""DS2's default curation, the authors' code (``UCSC-REAL/DS2``: HOC transition matrix, SimiFeat detection,
replacement of detected ratings with confidence >= 0.5), against loop re-implementations of the code's rules
written here, and on tables with a known transition matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.scorers._hoc import Neighbours, consensus_counts, consensus_model, hoc_objective, solve_hoc
from mmsift.scorers.ds2 import DS2, knn
from mmsift.store import Signals

K = 6


def signals(emb, rating) -> Signals:
    n = len(rating)
    return Signals(ids=np.asarray([f"r{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.asarray(["all"] * n, dtype=object),
                   columns={"last": np.asarray(emb, dtype=np.float32), "score": np.asarray(rating, dtype=float)})


def random_t(rng, lo=0.55, hi=0.75):
    """A transition matrix as the code's ``generate_T_from_diagonal`` builds one: diagonal in [lo, hi], the rest
    of each row a Dirichlet split."""
    t = np.zeros((K, K))
    for a in range(K):
        t[a, a] = rng.uniform(lo, hi)
        t[a, np.arange(K) != a] = rng.dirichlet(np.ones(K - 1)) * (1 - t[a, a])
    return t


def clustered_table(rng, per_level, t, dim=16, subclusters=32):
    """Features clustered by true level (``subclusters`` tight blobs per level), ratings drawn through ``t``."""
    centres = rng.normal(size=(K, subclusters, dim)) * 4
    true = np.repeat(np.arange(K), per_level)
    emb = centres[true, rng.integers(0, subclusters, len(true))] + rng.normal(size=(len(true), dim))
    rated = np.array([rng.choice(K, p=t[a]) for a in true])
    return emb, true, rated


def cosines(emb):
    """Pairwise cosine similarities by plain loops (from the float32 vectors the scorer reads)."""
    vs = []
    for e in np.asarray(emb, dtype=np.float32).astype(np.float64):
        s = math.sqrt(sum(x * x for x in e))
        vs.append([x / s for x in e])
    return [[sum(a * b for a, b in zip(u, v)) for v in vs] for u in vs]


def nearest(cos, i, members, m):
    return sorted((1.0 - cos[i][j], j) for j in members if j != i)[:m]


# ---- HOC ---------------------------------------------------------------------------------------------------
def test_consensus_model_matches_loops():
    rng = np.random.default_rng(0)
    t, p = random_t(rng), rng.dirichlet(np.ones(K))
    c1, c2, c3 = consensus_model(t, p)
    for a in range(K):
        assert c1[a] == pytest.approx(sum(p[r] * t[r][a] for r in range(K)), abs=1e-15)
        for b in range(K):
            assert c2[a, b] == pytest.approx(sum(p[r] * t[r][a] * t[r][b] for r in range(K)), abs=1e-15)
            for c in range(K):
                want = sum(p[r] * t[r][a] * t[r][b] * t[r][c] for r in range(K))
                assert c3[a, b, c] == pytest.approx(want, abs=1e-15)


def test_consensus_counts_match_loop_transcription():
    """The code's get_consensus_patterns + consensus_counts, per round on a fresh 90% subsample, written out:
    brute-force nearest two sampled rows of each sampled row, frequencies / sample size, averaged over rounds."""
    rng = np.random.default_rng(1)
    n, rounds = 60, 4
    emb = rng.normal(size=(n, 5))
    levels = rng.integers(0, K, n)
    levels[[3, 17]] = -1  # unrated rows take no part
    rated = np.flatnonzero(levels >= 0)
    ids, dist, _, vec = knn(emb, 3, exact_max=10**6, random_state=0)  # short lists: the fallback runs too
    nb = Neighbours(ids, dist, vec)
    got = consensus_counts(levels, nb, rated, rounds=rounds, frac=0.9, rng=np.random.default_rng(5), n_levels=K)
    assert nb.n_fallback > 0

    cos = cosines(emb)
    draw = np.random.default_rng(5)
    want = [np.zeros((K,) * j) for j in (1, 2, 3)]
    for _ in range(rounds):
        sample = [int(rated[j]) for j in draw.choice(len(rated), size=int(0.9 * len(rated)), replace=False)]
        for i in sample:
            (_, j1), (_, j2) = nearest(cos, i, sample, 2)
            a, b, c = levels[i], levels[j1], levels[j2]
            want[0][a] += 1 / len(sample) / rounds
            want[1][a, b] += 1 / len(sample) / rounds
            want[2][a, b, c] += 1 / len(sample) / rounds
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-12)


def test_hoc_gradient_matches_autograd_and_adam_matches_torch():
    """hoc_objective's hand-derived gradient against torch autograd of the code's loss, and the Adam fit against
    torch.optim.Adam run the way the code's calc_func runs it (update, then evaluate). Adam at lr 0.1 on this
    non-smooth loss is chaotic after ~100 steps: trajectories agree to 1e-9 for 60 steps, and the last iterates
    of the full 1501-step runs lie within 0.02 of each other (both near the optimum)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    t_true, p_true = random_t(rng), rng.dirichlet(3 * np.ones(K))
    est = [c + rng.normal(0, 0.0005, c.shape) for c in consensus_model(t_true, p_true)]
    est_t = [torch.tensor(e) for e in est]

    def loss_of(lt, lp):
        t, p = torch.softmax(lt, 1), torch.softmax(lp, 0)
        c = [p @ t, torch.einsum("r,ra,rb->ab", p, t, t), torch.einsum("r,ra,rb,rc->abc", p, t, t, t)]
        return sum(torch.linalg.norm(x - e) for x, e in zip(c, est_t))

    a, b = rng.normal(size=(K, K)), rng.normal(size=K)
    la, lb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ref = loss_of(la, lb)
    ref.backward()
    loss, ga, gb = hoc_objective(a, b, est)
    assert loss == pytest.approx(ref.item(), abs=1e-12)
    np.testing.assert_allclose(ga, la.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(gb, lb.grad.numpy(), atol=1e-12)

    p0 = 1 / K + 0.1 * rng.random(K)

    def torch_fit(steps):
        lt = torch.tensor(5 * np.eye(K) - 1, requires_grad=True)
        lp = torch.tensor(p0.copy(), requires_grad=True)
        opt = torch.optim.Adam([lt, lp], lr=0.1)
        for step in range(steps):
            if step:
                opt.zero_grad()
                cur.backward()
                opt.step()
            cur = loss_of(lt, lp)
        return torch.softmax(lt, 1).detach().numpy(), torch.softmax(lp, 0).detach().numpy()

    for steps, tol in ((60, 1e-9), (1501, 0.02)):
        t_mine, p_mine, _ = solve_hoc(est, p0=p0, steps=steps, lr=0.1)
        t_ref, p_ref = torch_fit(steps)
        assert np.abs(t_mine - t_ref).max() < tol and np.abs(p_mine - p_ref).max() < tol, steps
    assert np.abs(t_mine - t_true).max() < 0.03  # the fit of slightly noisy consensus lands near the truth


@pytest.mark.parametrize("per_level,bound", [(200, 0.12), (500, 0.08)])
def test_hoc_recovers_a_known_transition_matrix(per_level, bound):
    """Features clustered by true score, ratings corrupted through a known T: the HOC estimate (the scorer's
    ``transition_``) is close to T, and curation raises the share of ratings equal to the true score."""
    rng = np.random.default_rng(0)
    t = random_t(rng)
    emb, true, rated = clustered_table(rng, per_level, t)
    m = DS2(column="score")
    m.score(signals(emb, rated))
    assert np.abs(m.transition_ - t).max() < bound
    assert np.allclose(m.transition_.sum(axis=1), 1) and np.allclose(m.prior_.sum(), 1)
    curated = m.details_["ds2_corrected"]
    assert (curated == true).mean() > (rated == true).mean() + 0.15
    # only detected ratings change, and every change moves to another level
    changed = curated != rated
    assert (m.details_["ds2_noisy"][changed] > 0.5).all()
    assert (m.details_["ds2_confidence"][changed] >= 0.5).all()


# ---- SimiFeat and the replacement rule ------------------------------------------------------------------------
def percentile(xs, q):
    """numpy's default ('linear') percentile, written out."""
    xs = sorted(xs)
    pos = q / 100 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def curated_by_loops(levels, cos, t, p_clean, *, rounds, epochs, frac, k, confidence, seed):
    """The code's simi_feat_batch (rank method) over ``epochs`` subsamples, DetectLabel.simifeat's summary and
    subset_generation.score_curating, for the given T and clean prior. Random draws in the scorer's order:
    the HOC rounds' subsamples and the prior's starting logits first (skipped here), then one per epoch."""
    rated = [i for i in range(len(levels)) if levels[i] >= 0]
    size = int(frac * len(rated))
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        rng.choice(len(rated), size=size, replace=False)
    rng.random(K)
    p_noisy = [sum(1 for i in rated if levels[i] == a) / len(rated) for a in range(K)]
    rate = []
    for a in range(K):
        r = 1 - min(t[a][a] * p_clean[a] / p_noisy[a], 1.0) if p_noisy[a] > 0 else None
        rate.append(None if r is None else 0.95 if r >= 1 else 0.05 if r <= 0 else r)
    flagged = {i: 0 for i in rated}
    sampled = {i: 0 for i in rated}
    suggested = {i: [0] * K for i in rated}
    for _ in range(epochs):
        sample = [rated[j] for j in rng.choice(len(rated), size=size, replace=False)]
        score, pred = {}, {}
        for i in sample:
            others = nearest(cos, i, sample, k)
            hits = [(2 * others[0][0] - others[1][0], i)] + others
            cnt = [0.0] * K
            for d, j in hits:
                cnt[levels[j]] += 1 - d
            norm = math.sqrt(sum(c * c for c in cnt))
            prob = cnt[levels[i]] / norm
            score[i] = -math.log(prob + 1e-8) if prob + 1e-8 > 0 else float("nan")
            pred[i] = max(range(K), key=lambda a: (cnt[a], -a))
        for a in range(K):
            rows = [i for i in sample if levels[i] == a]
            if not rows:
                continue
            thr = percentile([score[i] for i in rows], 100 * (1 - rate[a]))
            for i in rows:
                if score[i] >= thr:
                    flagged[i] += 1
                    suggested[i][pred[i]] += 1
        for i in sample:
            sampled[i] += 1
    replaced = {}
    for i in rated:
        noisy = (flagged[i] + 1) / (sampled[i] + 2)
        if round(noisy) != 1:  # the code's np.round: 0.5 rounds to 0
            continue
        total = sum(suggested[i])
        share = [(suggested[i][a] + 1) / (total + K) for a in range(K)]
        share[levels[i]] = -1
        best = max(range(K), key=lambda a: (share[a], -a))
        if share[best] * noisy >= confidence:
            replaced[i] = best
    return replaced


@pytest.mark.parametrize("confidence", [0.5, 0.3])
def test_replaced_set_matches_loop_transcription(confidence):
    rng = np.random.default_rng(4)
    t = random_t(rng, 0.5, 0.7)
    emb, _, rated = clustered_table(rng, 30, t, dim=8, subclusters=6)
    rating = rated.astype(float)
    rating[[5, 77]] = np.nan  # unrated rows: left out of curation, imputed afterwards
    kw = dict(rounds=5, epochs=9, sample_frac=0.9, k=9)
    m = DS2(column="score", confidence=confidence, random_state=11, **kw)
    m.score(signals(emb, rating))
    levels = m.details_["ds2_rated"].astype(int)
    curated = m.details_["ds2_corrected"].astype(int)
    want = curated_by_loops(levels.tolist(), cosines(emb), m.transition_.tolist(), m.prior_.tolist(),
                            rounds=5, epochs=9, frac=0.9, k=9, confidence=confidence, seed=11)
    got = {i: int(curated[i]) for i in np.flatnonzero((levels >= 0) & (curated != levels))}
    assert got == want
    assert len(want) > 5  # the corruption is heavy enough that the rule actually fires


def test_unrated_rows_take_their_rated_neighbours_vote():
    emb = np.array([[1, 0, 0], [1, 0.02, 0], [1, 0, 0.02], [1, 0.02, 0.02], [1, 0.01, 0.01],
                    [0, 1, 0], [0.02, 1, 0], [0, 1, 0.02], [0.02, 1, 0.02], [0.01, 1, 0.01],
                    [1, 0.015, 0.005], [0.005, 1, 0.015]])
    rating = [4, 4, 4, 4, 4, 1, 1, 1, 1, 1, float("nan"), float("nan")]
    m = DS2(column="score", k=3)
    s = m.score(signals(emb, rating))
    assert m.details_["ds2_corrected"][10] == 4 and m.details_["ds2_corrected"][11] == 1
    assert np.floor(s[10]) == 4 and np.isnan(m.details_["ds2_confidence"][10])
    assert any("2 unrated" in n for n in m.notes_)


def test_too_few_rated_rows_keep_their_ratings():
    emb = np.eye(4)
    m = DS2(column="score", k=2)
    s = m.score(signals(emb, [3, 1, float("nan"), float("nan")]))  # a 90% subsample of 2 rows has 1 row
    assert np.floor(s).tolist()[:2] == [3, 1] and np.isfinite(s).all()
    assert any("too few" in n for n in m.notes_)
