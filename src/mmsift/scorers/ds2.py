"""DS2: diversity-aware score curation (Pang et al. 2025, "Improving Data Efficiency via Curating LLM-Driven
Rating Systems", ICLR 2025, arXiv:2410.10877): estimate a score-transition matrix from k-NN agreement of
embeddings (HOC), detect the ratings their neighbours disagree with (SimiFeat) and replace the confident ones,
then prefer high curated scores and long-tail samples. The estimators themselves are in ``_hoc.py``.
"""

from __future__ import annotations

import logging

import numpy as np

from mmsift.scorers._hoc import Neighbours, consensus_counts, curate, noise_rates, simifeat, solve_hoc
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
        ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """The k nearest other rows by cosine similarity: (neighbour ids (N, k), cosine distances (N, k), note, the
    unit float32 vectors searched (N, d')).

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
    return ids, dist, note, x


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


CURATIONS = ("simifeat", "posterior")


class DS2(Scorer):
    """DS2 score curation on any judge rating column, then a long-tail tie-break.

    Reads ``last`` (embedding, from the probe) and the rating: ``column`` (any 0-5 score column, e.g.
    ``cap_stem_knowledge`` or ``scale_alignment``) or, by default, the mean of the ``cap_*`` columns of
    ``capabilities`` (default all 14, NaN ignored). Ratings are rounded half up to integer levels r_i in 0..5;
    NaN = unrated. Neighbours: cosine of ``last``, the row itself excluded (exact faiss search up to
    ``exact_max`` rows, IVF with PCA to 64 dims above it).

    ``curation="simifeat"`` (default) follows the authors' code (``score_curation/`` and
    ``subset_generation.py`` of ``UCSC-REAL/DS2``), on the rated rows:

    1. HOC: in each of ``rounds`` (50) rounds draw ``int(sample_frac * R)`` of the R rated rows (0.9) and count
       the patterns (r_i, r of i's nearest sampled row, r of its 2nd nearest); the averaged frequencies estimate
       ``c1[a] = Σ_t p_t T[t, a]``, ``c2[a, b] = Σ_t p_t T[t, a] T[t, b]`` and ``c3[a, b, c] = Σ_t p_t T[t, a]
       T[t, b] T[t, c]``. T (rows: true level, columns: rating) and the clean prior p are the softmaxes of
       logits fitted by Adam (lr ``lr`` 0.1, ``steps`` 1501 evaluations, from ``5 I - 1`` and ``1/6 + U(0,
       0.1)``) to minimise ``Σ_j ||c_j(T, p) - ĉ_j||_F``; the last iterate is kept (the code's "best" record
       is a view of the live parameters, so the code returns the last iterate too).
    2. SimiFeat (rank variant): in each of ``epochs`` (51) new subsamples, every sampled row i votes with
       itself and its k nearest sampled rows (``k`` = 9: the code's 10 hits, i included), weight 1 - cosine
       distance (i's own weight uses 2 v_1 - v_2 in place of its zero distance); ``score_i = -log(cnt[r_i] /
       ||cnt||_2 + 1e-8)``. Within each level a, the rows at or above the percentile ``100 (1 - rate_a)`` of
       that score are flagged, ``rate_a = 1 - T[a, a] p[a] / p̃[a]`` (p̃: the share of ratings at a; clipped
       to 0.05..0.95), and the neighbours' argmax level is counted as a suggestion.
    3. A rating is *detected* when (times flagged + 1) / (times sampled + 2) > 1/2; its suggestion is the other
       level most often suggested ((count + 1) / (total + 6)), its confidence that share x the noisy frequency.
       Detected ratings with confidence >= ``confidence`` (0.5) are replaced by the suggestion; every other
       rating stays as the judge gave it.

    ``curation="posterior"`` is mmsift's earlier estimator, kept because it is deterministic and corrects
    every rating smoothly: consensus c_i = most frequent rating among i's k neighbours; ``T[a, b] = (#{c = a,
    r = b} + alpha) / (#{c = a} + 6 alpha)``; posterior ``P(a) ∝ p[a] T[a, r_i] Π_j T[a, r_j]``; level =
    round(Σ_a a P(a)) for every row (the earlier default was ``k=10`` with this mode).

    Unrated rows (either mode) take the level their k nearest rated rows vote for (weights 1 - distance; the
    posterior mode: the posterior mean) — the code has no unrated rows. Rarity ``ρ_i`` = mean cosine distance
    to the k nearest rows (the code's long-tail score is a monotone map of the same mean over its 10 hits, the
    row itself at distance 0 included, so it ranks identically).

    ``score_i = level_i + q_i``, q_i = rank of ρ_i / N in [0, 1): the curated level first, then rarer first, as
    ``subset_generation.py`` sorts. Higher = keep. ``transition_`` holds T, ``prior_`` p (simifeat mode);
    ``details_``: ``ds2_rated``, ``ds2_corrected`` (curated level; the posterior mean in posterior mode),
    ``ds2_rarity``, and in simifeat mode ``ds2_noisy`` (the noisy frequency) and ``ds2_confidence`` (NaN for
    unrated rows).

    Deviations from the code, and why: its loader holds every record twice (``load_embedding(duplicate=True)``),
    so a record's nearest "neighbour" in HOC and SimiFeat is mostly its own copy; mmsift holds each record once,
    as the HOC and SimiFeat papers assume. Its subsamples are capped at 50 000 rows (GPU memory), which thins
    the neighbourhoods of pools above 55 556 rows; mmsift samples ``sample_frac`` of any pool. Neighbours inside
    a subsample come from one pool-wide search filtered to the subsample's members (identical to searching the
    subsample; rows whose list runs short are searched again by brute force, counted in ``notes_``). Distances
    in float64 rather than the code's float16. Random draws: one ``numpy.random.default_rng(random_state)``,
    in this order: the HOC rounds' subsamples, the prior's starting logits, the SimiFeat epochs' subsamples.
    Papers: Pang et al. 2025, "Improving Data Efficiency via Curating LLM-Driven Rating Systems" (DS2, ICLR
    2025, arXiv:2410.10877); HOC: Zhu, Song & Liu, ICML 2021; SimiFeat: Zhu, Dong & Liu, ICML 2022.
    """

    name = "ds2"
    requires = ("last",) + CAP_COLUMNS
    paper = ("Pang et al. 2025, Improving Data Efficiency via Curating LLM-Driven Rating Systems (DS2), "
             "arXiv:2410.10877")
    summary = "judge ratings curated by HOC transition matrix + SimiFeat detection, long-tail tie-break"

    def __init__(self, *, column: str | None = None, capabilities=None, curation: str = "simifeat", k: int = 9,
                 rounds: int = 50, epochs: int = 51, sample_frac: float = 0.9, steps: int = 1501,
                 lr: float = 0.1, confidence: float = 0.5, alpha: float = 1.0, exact_max: int = 50_000,
                 nprobe: int = 8, random_state: int = 0):
        super().__init__(random_state=random_state)
        if curation not in CURATIONS:
            raise ValueError(f"curation must be one of {CURATIONS}, got {curation!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if curation == "simifeat" and k < 2:
            raise ValueError(f"curation='simifeat' needs k >= 2 (a row's own weight uses its 2 nearest), got {k}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 (it keeps every T entry positive), got {alpha}")
        if not 0.0 < sample_frac <= 1.0:
            raise ValueError(f"sample_frac must be in (0, 1], got {sample_frac}")
        if rounds < 1 or epochs < 1 or steps < 1 or lr <= 0:
            raise ValueError("rounds, epochs and steps must be >= 1 and lr > 0")
        self.column = column
        self.curation = curation
        self.k = int(k)
        self.rounds, self.epochs, self.steps = int(rounds), int(epochs), int(steps)
        self.sample_frac, self.lr, self.confidence = float(sample_frac), float(lr), float(confidence)
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
        self.prior_: np.ndarray | None = None

    def _list_length(self, n: int, n_rated: int, k: int) -> int:
        """Neighbours to fetch per row: enough that a subsample of the rated rows almost always leaves k of them
        in the list (about twice the expected need, at most 256; the rest is the brute-force fallback)."""
        if self.curation == "posterior":
            return k
        need = int(np.ceil(2 * k / (self.sample_frac * n_rated / n))) + 10
        return int(min(n - 1, max(k, min(256, need))))

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        rated = rated_levels(signals, self.column, self.cap_columns)
        n = len(rated)
        rated_pos = np.flatnonzero(rated >= 0)
        if not len(rated_pos):
            raise ValueError("ds2: no sample has a usable rating")
        k = min(self.k, n - 1)
        if k < 1:
            return rated.astype(np.float64)
        ids, dist, note, vec = knn(np.asarray(signals["last"]), self._list_length(n, len(rated_pos), k),
                                   exact_max=self.exact_max, random_state=self.random_state, nprobe=self.nprobe)
        self.notes_.append(note)
        nb_ids, nb_dist = ids[:, :k], dist[:, :k]
        found = np.isfinite(nb_dist)
        # A row the (approximate) index found no neighbour for counts as maximally rare (cosine distance 2).
        mean_dist = np.where(found, nb_dist, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)
        rarity = np.where(found.any(axis=1), mean_dist, 2.0)
        self.details_ = {"ds2_rated": rated.astype(np.float64), "ds2_rarity": rarity}
        if self.curation == "posterior":
            level = self._posterior(rated, nb_ids)
        else:
            level = self._simifeat(rated, rated_pos, Neighbours(ids, dist, vec), k)
        q = np.empty(n)
        q[np.argsort(rarity, kind="stable")] = np.arange(n) / n
        return level + q

    def _posterior(self, rated: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
        cons = consensus_labels(rated, nbrs)
        t, prior = transition_matrix(rated, cons, alpha=self.alpha)
        corrected = posterior(rated, nbrs, t, prior) @ np.arange(N_LEVELS, dtype=np.float64)
        self.transition_ = t
        self.details_["ds2_corrected"] = corrected
        level = np.floor(corrected + 0.5)
        changed = int(((rated >= 0) & (level != rated)).sum())
        self.notes_.append(f"ds2 (posterior): {changed} of {int((rated >= 0).sum())} rated samples change level; "
                           f"{int((rated < 0).sum())} unrated samples imputed from neighbours")
        log.info("ds2 transition matrix (rows: consensus, cols: rating):\n%s", np.array2string(t, precision=3))
        return level

    def _simifeat(self, rated: np.ndarray, rated_pos: np.ndarray, nb: Neighbours, k: int) -> np.ndarray:
        n, n_rated = len(rated), len(rated_pos)
        rng = np.random.default_rng(self.random_state)
        level = rated.copy()
        noisy = np.full(n, np.nan)
        conf = np.full(n, np.nan)
        size = int(self.sample_frac * n_rated)
        if size < 3:
            self.notes_.append(f"ds2: {n_rated} rated samples are too few for HOC (a subsample needs 3): "
                               "ratings kept as given")
        else:
            est = consensus_counts(rated, nb, rated_pos, rounds=self.rounds, frac=self.sample_frac, rng=rng,
                                   n_levels=N_LEVELS)
            p0 = 1.0 / N_LEVELS + 0.1 * rng.random(N_LEVELS)
            t, p_clean, loss = solve_hoc(est, p0=p0, steps=self.steps, lr=self.lr)
            p_noisy = np.bincount(rated[rated_pos], minlength=N_LEVELS) / n_rated
            rates = noise_rates(t, p_clean, p_noisy)
            flagged, times, suggest = simifeat(rated, nb, rated_pos, rates, epochs=self.epochs,
                                               frac=self.sample_frac, k=min(k, size - 1), rng=rng,
                                               n_levels=N_LEVELS)
            cur = curate(rated, flagged, times, suggest, confidence=self.confidence, n_levels=N_LEVELS)
            level = cur["curated"]
            noisy[rated_pos], conf[rated_pos] = cur["noisy"][rated_pos], cur["confidence"][rated_pos]
            self.transition_, self.prior_ = t, p_clean
            self.notes_.append(
                f"ds2: HOC transition matrix from {self.rounds} rounds of 2-NN patterns on {size}-row subsamples "
                f"(fit loss {loss:.4f}); SimiFeat over {self.epochs} epochs detected {int(cur['detected'].sum())} "
                f"of {n_rated} ratings as likely wrong and replaced the {int(cur['replaced'].sum())} with "
                f"confidence >= {self.confidence:g}")
            log.info("ds2 HOC transition matrix (rows: true level, cols: rating):\n%s",
                     np.array2string(t, precision=3))
        unrated = np.flatnonzero(rated < 0)
        if len(unrated):
            nbi, nbd = nb.within(unrated, rated >= 0, min(k, n_rated))
            votes = np.stack([((1.0 - nbd) * (level[nbi] == a)).sum(axis=1) for a in range(N_LEVELS)], axis=1)
            level[unrated] = np.argmax(votes, axis=1)
            self.notes_.append(f"ds2: {len(unrated)} unrated samples take the level their nearest rated "
                               "neighbours vote for")
        if nb.n_fallback:
            self.notes_.append(f"ds2: {nb.n_fallback} neighbour lookups ran past the fetched lists and were "
                               "searched by brute force")
        self.details_.update({"ds2_corrected": level.astype(np.float64), "ds2_noisy": noisy,
                              "ds2_confidence": conf})
        return level.astype(np.float64)
