"""DS2's score curation as its public code runs it (``UCSC-REAL/DS2``, ``score_curation/docta``), in numpy.

Two published estimators, both built on k-NN *clusterability* (a record and its nearest neighbours in an
embedding space share one true label, and each observed label is an independent draw from row ``T[true]`` of a
transition matrix):

- HOC (Zhu, Song & Liu 2021, "Clusterability as an Alternative to Anchor Points When Learning with Noisy
  Labels"): the frequencies of (own label, 1st neighbour's label, 2nd neighbour's label) estimate the first-,
  second- and third-order consensus ``c1[a] = Σ_r p_r T[r, a]``, ``c2[a, b] = Σ_r p_r T[r, a] T[r, b]``,
  ``c3[a, b, c] = Σ_r p_r T[r, a] T[r, b] T[r, c]``; T and the clean prior p are fitted to them.
- SimiFeat (Zhu, Dong & Liu 2022, "Detecting Corrupted Labels Without Training a Model to Predict"): a
  label is suspect when the distance-weighted vote of its neighbours disagrees with it, ranked per class against
  a noise rate read from T.

Each round works on a random subsample of the rated rows and finds neighbours *inside that subsample*, as the
code does. The neighbour lists come from one k-NN search of the whole pool, filtered to the round's members:
the nearest members of a row's list are its nearest members overall, so this equals a search inside the
subsample whenever the list holds enough members; rows whose list runs short are searched again by brute force.
"""

from __future__ import annotations

import numpy as np

_EPS_LOG = 1e-8  # the code's log(p + 1e-8)


# ---- neighbours inside a subsample ------------------------------------------------------------------------------
class Neighbours:
    """Nearest-neighbour lists of a pool (``ids`` (N, L), -1 = none; cosine ``dist`` (N, L), ascending, the row
    itself excluded) and the unit vectors they were searched on (for the brute-force fallback)."""

    def __init__(self, ids: np.ndarray, dist: np.ndarray, vectors: np.ndarray):
        self.ids, self.dist, self.vectors = ids, dist, vectors
        self.n_fallback = 0  # rows searched again because their list held too few members

    def within(self, rows: np.ndarray, member: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` nearest rows with ``member`` set (other than the row itself) of each row in ``rows``:
        (pool positions (len(rows), m), cosine distances (len(rows), m)), nearest first."""
        ids = self.ids[rows]
        ok = ids >= 0
        ok[ok] = member[ids[ok]]
        count = np.cumsum(ok, axis=1)
        take = ok & (count <= m)
        full = count[:, -1] >= m if ids.shape[1] else np.zeros(len(rows), dtype=bool)
        out_i = np.empty((len(rows), m), dtype=np.int64)
        out_d = np.empty((len(rows), m))
        r, c = np.nonzero(take[full])  # row-major: each full row's m hits in list (distance) order
        out_i[full] = ids[full][r, c].reshape(-1, m)
        out_d[full] = self.dist[rows][full][r, c].reshape(-1, m)
        short = np.flatnonzero(~full)
        if len(short):
            self.n_fallback += len(short)
            out_i[short], out_d[short] = self._brute(rows[short], member, m)
        return out_i, out_d

    def _brute(self, rows: np.ndarray, member: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        v = self.vectors
        step = max(1, 2**24 // max(len(v), 1))  # about 64 MiB of similarities at a time
        out_i = np.empty((len(rows), m), dtype=np.int64)
        out_d = np.empty((len(rows), m))
        for s in range(0, len(rows), step):
            q = rows[s:s + step]
            sims = (v[q] @ v.T).astype(np.float64)
            sims[:, ~member] = -np.inf
            sims[np.arange(len(q)), q] = -np.inf
            order = np.argsort(-sims, axis=1, kind="stable")[:, :m]
            out_i[s:s + step] = order
            out_d[s:s + step] = 1.0 - np.take_along_axis(sims, order, axis=1)
        return out_i, out_d


def draw(rng: np.random.Generator, rated: np.ndarray, frac: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One round's subsample: ``int(frac * len(rated))`` of the rated pool positions, without replacement
    (``rng.choice(len(rated), size, replace=False)``), and its membership mask over the pool."""
    sample = rated[rng.choice(len(rated), size=int(frac * len(rated)), replace=False)]
    member = np.zeros(n, dtype=bool)
    member[sample] = True
    return sample, member


# ---- HOC --------------------------------------------------------------------------------------------------------
def consensus_model(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-, second- and third-order consensus implied by transition matrix ``t`` (rows: true label) and
    clean prior ``p``."""
    return (p @ t, np.einsum("r,ra,rb->ab", p, t, t), np.einsum("r,ra,rb,rc->abc", p, t, t, t))


def consensus_counts(levels: np.ndarray, nbrs: Neighbours, rated: np.ndarray, *, rounds: int, frac: float,
                     rng: np.random.Generator, n_levels: int) -> list[np.ndarray]:
    """HOC's consensus estimate: per round, the frequencies of (own level, nearest member's level, 2nd nearest
    member's level) over a subsample, averaged over ``rounds``."""
    est = [np.zeros((n_levels,) * j) for j in (1, 2, 3)]
    for _ in range(rounds):
        sample, member = draw(rng, rated, frac, len(levels))
        nb, _ = nbrs.within(sample, member, 2)
        a, b, c = levels[sample], levels[nb[:, 0]], levels[nb[:, 1]]
        cnt = [np.zeros_like(e) for e in est]
        np.add.at(cnt[0], a, 1.0)
        np.add.at(cnt[1], (a, b), 1.0)
        np.add.at(cnt[2], (a, b, c), 1.0)
        for e, x in zip(est, cnt):
            e += x / len(sample)
    return [e / rounds for e in est]


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def hoc_objective(logit_t: np.ndarray, logit_p: np.ndarray, est) -> tuple[float, np.ndarray, np.ndarray]:
    """HOC's loss ``Σ_j ||c_j(T, p) - est_j||`` (Frobenius norms, not squared; T = row softmax of ``logit_t``,
    p = softmax of ``logit_p``) and its gradients with respect to the two logit arrays."""
    t, p = _softmax(logit_t, 1), _softmax(logit_p, 0)
    loss, g = 0.0, []
    for c, e in zip(consensus_model(t, p), est):
        diff = c - e
        norm = float(np.sqrt((diff * diff).sum()))
        loss += norm
        g.append(diff / norm if norm > 0 else np.zeros_like(diff))
    g1, g2, g3 = g
    grad_p = t @ g1 + np.einsum("ab,ra,rb->r", g2, t, t) + np.einsum("abc,ra,rb,rc->r", g3, t, t, t)
    grad_t = p[:, None] * (g1[None, :] + np.einsum("xb,rb->rx", g2, t) + np.einsum("bx,rb->rx", g2, t)
                           + np.einsum("xbc,rb,rc->rx", g3, t, t) + np.einsum("bxc,rb,rc->rx", g3, t, t)
                           + np.einsum("bcx,rb,rc->rx", g3, t, t))
    # back through the softmaxes
    grad_lt = t * (grad_t - (grad_t * t).sum(axis=1, keepdims=True))
    grad_lp = p * (grad_p - (grad_p * p).sum())
    return loss, grad_lt, grad_lp


def solve_hoc(est, *, p0: np.ndarray, steps: int, lr: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit (T, p) to the consensus estimate as the code does: Adam (betas 0.9/0.999, eps 1e-8) on the logits from
    ``logit_t = 5 I - 1`` and ``logit_p = p0``, ``steps`` loss evaluations with an update between consecutive
    ones. Returns the softmaxed parameters after the last update and their loss.

    The code means to return the iterate of lowest loss, but records it with ``T.detach()``, a view of the
    parameter that the optimiser keeps updating in place, so what it returns is the last iterate; so does this.
    """
    k = len(p0)
    params = [5.0 * np.eye(k) - 1.0, np.asarray(p0, dtype=np.float64).copy()]
    m1 = [np.zeros_like(x) for x in params]
    m2 = [np.zeros_like(x) for x in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    loss = np.inf
    for step in range(steps):
        loss, *grads = hoc_objective(params[0], params[1], est)
        if step == steps - 1:
            break
        n = step + 1
        for x, g, a, b in zip(params, grads, m1, m2):
            a *= beta1
            a += (1 - beta1) * g
            b *= beta2
            b += (1 - beta2) * g * g
            x -= lr / (1 - beta1**n) * a / (np.sqrt(b / (1 - beta2**n)) + eps)
    return _softmax(params[0], 1), _softmax(params[1], 0), float(loss)


# ---- SimiFeat ---------------------------------------------------------------------------------------------------
def noise_rates(t: np.ndarray, p_clean: np.ndarray, p_noisy: np.ndarray) -> np.ndarray:
    """Per rating level, the share of its ratings SimiFeat flags: ``1 - P(true = a | rated = a)`` with
    ``P(true = a | rated = a) = T[a, a] p_clean[a] / p_noisy[a]``, capped at 1; 0.95 when that is >= 1 and 0.05
    when it is <= 0 (the code's clipping). Levels nobody was given get NaN (never used)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.minimum(np.diag(t) * p_clean / p_noisy, 1.0)
    rate = 1.0 - keep
    rate = np.where(rate >= 1.0, 0.95, np.where(rate <= 0.0, 0.05, rate))
    return np.where(p_noisy > 0, rate, np.nan)


def simifeat(levels: np.ndarray, nbrs: Neighbours, rated: np.ndarray, rates: np.ndarray, *, epochs: int,
             frac: float, k: int, rng: np.random.Generator, n_levels: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimiFeat's ranking detector over ``epochs`` subsamples: (times flagged (N,), times sampled (N,),
    suggested-level counts (N, n_levels)).

    Per epoch, for each sampled row i with level r_i: hits = i itself and its k nearest members, with cosine
    distances v_1..v_k and v_0 = 2 v_1 - v_2 for i itself (the code's way of keeping a row's own vote from
    dominating); ``cnt[a] = Σ_j (1 - v_j) [r_j = a]``; ``prob = cnt / ||cnt||_2``; score_i = -log(prob[r_i] +
    1e-8). Within each level a, the sampled rows whose score is at or above the ``100 (1 - rates[a])``-th
    percentile (numpy's linear interpolation) are flagged, with the suggestion argmax_a cnt[a].
    """
    n = len(levels)
    flagged = np.zeros(n, dtype=np.int64)
    times = np.zeros(n, dtype=np.int64)
    suggest = np.zeros((n, n_levels))
    for _ in range(epochs):
        sample, member = draw(rng, rated, frac, n)
        nb, d = nbrs.within(sample, member, k)
        v0 = 2.0 * d[:, 0] - d[:, 1]
        weight = 1.0 - np.concatenate([v0[:, None], d], axis=1)
        own = levels[sample]
        lab = np.concatenate([own[:, None], levels[nb]], axis=1)
        cnt = np.stack([(weight * (lab == a)).sum(axis=1) for a in range(n_levels)], axis=1)
        prob = cnt / np.maximum(np.linalg.norm(cnt, axis=1, keepdims=True), 1e-12)
        with np.errstate(invalid="ignore"):
            score = -np.log(prob[np.arange(len(sample)), own] + _EPS_LOG)
        pred = np.argmax(cnt, axis=1)
        times[sample] += 1
        for a in range(n_levels):
            sel = own == a
            if not sel.any():
                continue
            thr = np.percentile(score[sel], 100.0 * (1.0 - rates[a]))
            with np.errstate(invalid="ignore"):
                hit = sel & (score >= thr)  # a NaN score (negative vote mass) is never flagged
            flagged[sample[hit]] += 1
            np.add.at(suggest, (sample[hit], pred[hit]), 1.0)
    return flagged, times, suggest


def curate(levels: np.ndarray, flagged: np.ndarray, times: np.ndarray, suggest: np.ndarray, *,
           confidence: float, n_levels: int) -> dict[str, np.ndarray]:
    """The code's report and ``subset_generation.py``'s replacement rule.

    noisy_i = (flagged_i + 1) / (sampled_i + 2); detected when round(noisy_i) = 1, i.e. noisy_i > 1/2
    (2 flagged_i > sampled_i); suggestion = argmax over the other levels of (suggest_i[a] + 1) /
    (Σ suggest_i + n_levels) (ties: the lowest level); confidence = that value x noisy_i. A detected rating is
    replaced by its suggestion when confidence >= ``confidence``; every other rating stays.
    """
    rows = np.arange(len(levels))
    noisy = (flagged + 1.0) / (times + 2.0)
    detected = (levels >= 0) & (2 * flagged > times)
    share = (suggest + 1.0) / (suggest.sum(axis=1, keepdims=True) + n_levels)
    share[rows, np.maximum(levels, 0)] = np.where(levels >= 0, -1.0, share[rows, np.maximum(levels, 0)])
    suggestion = np.argmax(share, axis=1)
    conf = share[rows, suggestion] * noisy
    replaced = detected & (conf >= confidence)
    return {"noisy": noisy, "detected": detected, "suggestion": suggestion, "confidence": conf,
            "replaced": replaced, "curated": np.where(replaced, suggestion, levels)}
