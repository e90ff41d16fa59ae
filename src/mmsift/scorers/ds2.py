"""DS2: diversity-aware score curation (Pang et al. 2025, "Improving Data Efficiency via Curating LLM-Driven
Rating Systems", ICLR 2025, arXiv:2410.10877): correct noisy judge ratings with a
score-transition matrix estimated from k-NN agreement of embeddings, then prefer high corrected scores and
long-tail samples.
"""

from __future__ import annotations

import logging

import numpy as np

from mmsift.scorers.base import Scorer
from mmsift.scorers.mmssr import CAP_COLUMNS
from mmsift.store import Signals

log = logging.getLogger(__name__)

N_LEVELS = 6  # ratings 0..5


def rated_levels(signals: Signals, column: str | None, cap_columns=CAP_COLUMNS) -> np.ndarray:
    """Integer rating 0-5 per row, -1 where unrated. ``column=None``: the mean of the ``cap_columns`` the
    signals have (NaN ignored); otherwise that column. Values are rounded half up and clipped to 0-5."""
    if column is None:
        cols = [c for c in cap_columns if c in signals]
        if not cols:
            raise KeyError("ds2 needs judge ratings: no cap_* column in this run (run `mmsift judge` first) "
                           "or name a score column with column=...")
        m = np.column_stack([np.asarray(signals[c], dtype=np.float64) for c in cols])
        cnt = (~np.isnan(m)).sum(axis=1)
        x = np.where(cnt > 0, np.nansum(m, axis=1) / np.maximum(cnt, 1), np.nan)
    else:
        x = np.asarray(signals[column], dtype=np.float64)
    out = np.full(len(x), -1, dtype=np.int64)
    ok = np.isfinite(x)
    out[ok] = np.clip(np.floor(x[ok] + 0.5), 0, N_LEVELS - 1).astype(np.int64)
    return out


def knn(emb: np.ndarray, k: int, *, exact_max: int, random_state: int, nprobe: int = 8
        ) -> tuple[np.ndarray, np.ndarray, str]:
    """The k nearest other rows by cosine similarity: (neighbour ids (N, k), cosine distances (N, k), note).

    Exact (faiss ``IndexFlatIP`` on L2-normalised float32) up to ``exact_max`` rows. Above that, approximate:
    vectors wider than 64 are PCA-projected to 64 dims and re-normalised, then an IVF index (nlist = 2 sqrt(N),
    ``nprobe`` lists searched) trained on a seeded sample of 40 nlist rows; the note says so. Distances are then
    those of the projected vectors. Missing neighbours (an IVF probe that found too few) have id -1, distance NaN.
    """
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    kk = min(k + 1, n)
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
        note = f"ds2: exact k-NN (k={k}) over {n} rows"
    else:
        rng = np.random.default_rng(random_state)
        nlist = int(2 * np.sqrt(n))
        train = x[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
        proj = ""
        if d > 64:
            pca = faiss.PCAMatrix(d, 64)
            pca.train(train)
            x = pca.apply(x)
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            train = pca.apply(train)
            d, proj = 64, ", PCA to 64 dims"
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(random_state)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        index.nprobe = int(nprobe)
        note = f"ds2: approximate k-NN (IVF nlist={nlist}, nprobe={nprobe}{proj}, k={k}) over {n} rows"
    index.add(x)
    sim, ids = index.search(x, kk)
    # Drop each row itself (it is normally its own first hit; with duplicates it may come later or not at all).
    is_self = ids == np.arange(n)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    sim = np.take_along_axis(sim, order, axis=1)[:, :k]
    dist = np.where(ids >= 0, 1.0 - sim.astype(np.float64), np.nan)
    return ids, dist, note


def consensus_labels(rated: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
    """k-NN consensus: the most frequent rating among a row's rated neighbours (ties: the row's own rating if it
    is among the tied, else the lowest); -1 when no neighbour is rated."""
    r_nb = np.where(nbrs >= 0, rated[np.maximum(nbrs, 0)], -1)
    votes = np.stack([(r_nb == a).sum(axis=1) for a in range(N_LEVELS)], axis=1)
    top = votes.max(axis=1)
    tied = votes == top[:, None]
    own_tied = (rated >= 0) & tied[np.arange(len(rated)), np.maximum(rated, 0)]
    cons = np.where(own_tied, rated, np.argmax(tied, axis=1))
    return np.where(top > 0, cons, -1)


def transition_matrix(rated: np.ndarray, consensus: np.ndarray, *, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``T[a, b] = (#{rated = b, consensus = a} + alpha) / (#{consensus = a} + 6 alpha)`` and the prior
    ``p[a] = (#{consensus = a} + alpha) / (#counted + 6 alpha)``, over rows that have both."""
    ok = (rated >= 0) & (consensus >= 0)
    counts = np.zeros((N_LEVELS, N_LEVELS))
    np.add.at(counts, (consensus[ok], rated[ok]), 1.0)
    t = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + N_LEVELS * alpha)
    prior = (counts.sum(axis=1) + alpha) / (ok.sum() + N_LEVELS * alpha)
    return t, prior


def posterior(rated: np.ndarray, nbrs: np.ndarray, t: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``P(true = a | own rating, neighbours' ratings) ∝ p[a] · T[a, r_i] · Π_j T[a, r_j]`` (unrated terms
    left out), computed in log space; shape (N, 6)."""
    logt = np.log(t)
    logp = np.tile(np.log(prior), (len(rated), 1))
    own = rated >= 0
    logp[own] += logt[:, rated[own]].T
    r_nb = np.where(nbrs >= 0, rated[np.maximum(nbrs, 0)], -1)
    for j in range(r_nb.shape[1]):
        col = r_nb[:, j]
        ok = col >= 0
        logp[ok] += logt[:, col[ok]].T
    logp -= logp.max(axis=1, keepdims=True)
    post = np.exp(logp)
    return post / post.sum(axis=1, keepdims=True)


class DS2(Scorer):
    """DS2 score curation on any judge rating column, then a long-tail tie-break.

    Reads ``last`` (embedding, from the probe) and the rating: ``column`` (any 0-5 score column, e.g.
    ``cap_stem_knowledge`` or ``scale_alignment``) or, by default, the mean of the ``cap_*`` columns of
    ``capabilities`` (default all 14, NaN ignored). Ratings are rounded half up to integer levels r_i in 0..5;
    NaN = unrated.

    Estimator (the k-NN clusterability assumption of DS2: a sample and its k nearest neighbours by cosine of
    ``last`` share one true score, and every rating is an independent noisy draw from row ``T[true]``):

    1. consensus c_i = the most frequent rating among i's k neighbours (ties: r_i if tied, else the lowest);
    2. ``T[a, b] = (#{c_i = a, r_i = b} + alpha) / (#{c_i = a} + 6 alpha)`` (rows of T: consensus, columns:
       rating), prior ``p[a] = (#{c_i = a} + alpha) / (n + 6 alpha)``;
    3. posterior ``P(true = a | r_i, r_N(i)) ∝ p[a] · T[a, r_i] · Π_{j in N(i)} T[a, r_j]``;
    4. corrected score ``s_i = Σ_a a · P(true = a | ...)`` (an unrated row is imputed from its neighbours);
    5. rarity ``ρ_i`` = mean cosine distance to the k neighbours (long tail = far from everything).

    ``score_i = round(s_i) + q_i`` where q_i in [0, 1) is ρ_i's rank among all rows divided by N, so the
    ranking is by rounded corrected score, then rarer first. Higher = keep. ``details_`` holds
    ``ds2_rated``, ``ds2_corrected`` and ``ds2_rarity``; ``transition_`` the estimated T.
    """

    name = "ds2"
    requires = ("last",) + CAP_COLUMNS
    paper = ("Pang et al. 2025, Improving Data Efficiency via Curating LLM-Driven Rating Systems (DS2), "
             "arXiv:2410.10877")
    summary = "judge ratings corrected by a k-NN score-transition matrix, long-tail tie-break"

    def __init__(self, *, column: str | None = None, capabilities=None, k: int = 10, alpha: float = 1.0,
                 exact_max: int = 50_000, nprobe: int = 8, random_state: int = 0):
        super().__init__(random_state=random_state)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 (it keeps every T entry positive), got {alpha}")
        self.column = column
        self.k = int(k)
        self.alpha = float(alpha)
        self.exact_max = int(exact_max)
        self.nprobe = int(nprobe)
        if isinstance(capabilities, str):
            capabilities = [c.strip() for c in capabilities.split(",") if c.strip()]
        self.cap_columns = CAP_COLUMNS if capabilities is None else tuple(f"cap_{c}" for c in capabilities)
        unknown = [c for c in self.cap_columns if c not in CAP_COLUMNS]
        if unknown or not self.cap_columns:
            raise ValueError(f"unknown capabilities {[c[4:] for c in unknown]}")
        self.requires = ("last", column) if column is not None else ("last",) + self.cap_columns
        self.transition_: np.ndarray | None = None

    def score(self, signals: Signals) -> np.ndarray:
        rated = rated_levels(signals, self.column, self.cap_columns)
        n = len(rated)
        if not (rated >= 0).any():
            raise ValueError("ds2: no sample has a usable rating")
        emb = np.asarray(signals["last"])
        k = min(self.k, n - 1)
        if k < 1:
            return rated.astype(np.float64)
        nbrs, dist, note = knn(emb, k, exact_max=self.exact_max, random_state=self.random_state,
                               nprobe=self.nprobe)
        cons = consensus_labels(rated, nbrs)
        t, prior = transition_matrix(rated, cons, alpha=self.alpha)
        post = posterior(rated, nbrs, t, prior)
        corrected = post @ np.arange(N_LEVELS, dtype=np.float64)
        found = np.isfinite(dist)
        # A row the (approximate) index found no neighbour for counts as maximally rare (cosine distance 2).
        mean_dist = np.where(found, dist, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)
        rarity = np.where(found.any(axis=1), mean_dist, 2.0)
        q = np.empty(n)
        q[np.argsort(rarity, kind="stable")] = np.arange(n) / n
        self.transition_ = t
        self.details_ = {"ds2_rated": rated.astype(np.float64), "ds2_corrected": corrected, "ds2_rarity": rarity}
        changed = int(((rated >= 0) & (np.floor(corrected + 0.5) != rated)).sum())
        self.notes_ += [note, f"ds2: {changed} of {int((rated >= 0).sum())} rated samples change level after "
                        f"correction; {int((rated < 0).sum())} unrated samples imputed from neighbours"]
        log.info("ds2 transition matrix (rows: consensus, cols: rating):\n%s", np.array2string(t, precision=3))
        return np.floor(corrected + 0.5) + q
