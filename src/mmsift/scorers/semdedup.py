"""SemDeDup (Abbas et al. 2023): remove semantic near-duplicates inside k-means clusters of embeddings."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._cluster import as_float32, check_finite, kmeans, one_blas_thread
from mmsift.scorers._rank import rank01
from mmsift.scorers.base import Scorer
from mmsift.store import Signals

KEEP = ("far", "near")


def dedup_cluster(x: np.ndarray, order: np.ndarray, threshold: float, chunk: int = 4096) -> np.ndarray:
    """Keep mask for one cluster of unit rows ``x`` visited in ``order``: a member is dropped when its cosine to
    any member visited before it exceeds ``threshold`` (SemDeDup's rule; earlier members count whether or not
    they were dropped themselves). Works in row blocks: memory O(chunk * |C|)."""
    xs = x[order]
    n = len(xs)
    drop = np.zeros(n, dtype=bool)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        sims = xs[s:e] @ xs[:e].T  # block rows against everything visited up to the block's end
        sims[np.arange(e - s)[:, None] <= np.arange(e)[None, :] - s] = -np.inf  # keep only earlier members
        drop[s:e] = sims.max(axis=1) > threshold
    keep = np.ones(n, dtype=bool)
    keep[order] = ~drop
    return keep


class SemDeDup(Scorer):
    """Inside each of ``n_clusters`` spherical k-means clusters of the L2-normalised ``vector`` signal, visit the
    members from the farthest to the nearest to their centroid (``keep="far"``, SemDeDup's default of keeping the
    harder, less prototypical example; ``keep="near"`` reverses it) and drop every member whose cosine similarity to
    an earlier-visited member exceeds ``1 - eps``. Each near-duplicate group thus keeps its first-visited member.

    Use as a dedup step (``--dedup semdedup``, :meth:`keep_mask`) before any scorer, or alone: ``score_i = kept_i +
    0.5 * rank01(distance to centroid)`` (kept = 1, dropped = 0; the tie-break prefers far members for
    ``keep="far"`` and near ones for ``keep="near"``). Direction: higher = keep.
    Reads the vector named by ``vector`` (default ``last``). ``n_clusters=None`` uses round(N / 1000) clusters
    (at least 1). Paper: Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
    deduplication".
    """

    name = "semdedup"
    requires = ("last",)
    paper = "Abbas et al. 2023, SemDeDup: semantic deduplication, arXiv:2303.09540"
    summary = "drop near-duplicates (cosine > 1 - eps) inside k-means clusters"

    def __init__(self, *, eps: float = 0.05, vector: str = "last", n_clusters: int | None = None,
                 keep: str = "far", random_state: int = 0):
        super().__init__(random_state=random_state)
        if not 0.0 <= eps < 2.0:
            raise ValueError(f"eps must be in [0, 2), got {eps}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError("n_clusters must be >= 1")
        self.eps = eps
        self.vector = vector
        self.requires = (vector,)
        self.n_clusters = n_clusters
        self.keep = keep

    def _run(self, signals: Signals) -> tuple[np.ndarray, np.ndarray]:
        self.notes_ = []
        n = len(signals)
        x = as_float32(signals[self.vector], normalize=True)
        check_finite(x, self.vector, signals.ids)
        k = self.n_clusters or max(1, int(round(n / 1000)))
        cent, labels, how = kmeans(x, k, spherical=True, random_state=self.random_state)
        # cosine to the own centroid, re-normalised (a one-cluster or k-means++ mean is not a unit vector)
        cn = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        sim_c = np.einsum("ij,ij->i", x, cn[labels]).astype(np.float64)
        keep = np.ones(n, dtype=bool)
        by_cluster = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[by_cluster], np.arange(len(cent) + 1))
        with one_blas_thread():
            for c in range(len(cent)):
                members = by_cluster[bounds[c]:bounds[c + 1]]
                if len(members) < 2:
                    continue
                # far first: ascending similarity to the centroid; ties keep pool order
                key = sim_c[members] if self.keep == "far" else -sim_c[members]
                order = np.argsort(key, kind="stable")
                keep[members] = dedup_cluster(x[members], order, 1.0 - self.eps)
        self.notes_.append(f"semdedup: removed {int((~keep).sum())} of {n} records as near-duplicates of a record "
                           f"kept (cosine > {1.0 - self.eps:g} on {self.vector!r}; {how}); when semdedup is the "
                           "selection method, the budget then keeps the best-scored of the rest (by distance to "
                           "their cluster centre), so it can keep fewer than the duplicates left")
        if n >= 20 and (~keep).mean() > 0.5:
            # Real pools rarely hold more duplicates than originals; this usually means the vectors carry little
            # information (an untrained or too small proxy), not that the pool is mostly copies.
            self.notes_.append(f"warning: semdedup removed {(~keep).mean():.0%} of the pool: the {self.vector!r} "
                               "vectors are nearly identical; check the proxy model or lower eps")
        return keep, sim_c

    def keep_mask(self, signals: Signals) -> np.ndarray:
        self.check_signals(signals)
        return self._run(signals)[0]

    def score(self, signals: Signals) -> np.ndarray:
        keep, sim_c = self._run(signals)
        tie = rank01(-sim_c if self.keep == "far" else sim_c)
        self.details_ = {"kept": keep.astype(np.float64), "cos_centroid": sim_c}
        return keep.astype(np.float64) + 0.5 * tie
