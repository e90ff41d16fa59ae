"""DataTailor (Yu et al. 2024, arXiv:2412.06293): informativeness, uniqueness and representativeness, combined
per task."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np

from mmsift.budget import apportion
from mmsift.scorers._cluster import (as_float32, check_finite, cut_tree, kmeans, one_blas_thread, ward_linkage,
                                     weighted_ward)
from mmsift.scorers._rank import exclude_nonfinite, rank01, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals

log = logging.getLogger(__name__)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of a and b (inputs already centred, so the expansion is
    accurate enough in float32)."""
    aa = np.einsum("ij,ij->i", a, a)
    bb = np.einsum("ij,ij->i", b, b)
    return np.maximum(aa[:, None] + bb[None, :] - 2.0 * (a @ b.T), 0.0)


def uniqueness(x: np.ndarray, info: np.ndarray, *, max_exact: int, rng: np.random.Generator,
               chunk: int = 2048) -> tuple[np.ndarray, bool]:
    """``U_i = sum_{j in C} d(i, j) * info_j / dbar_C`` with ``dbar_C = sum_{j,k in C} d(j, k) / |C|`` for the
    members ``x`` of one cluster C. Exact (all |C|^2 distances, in row chunks) up to ``max_exact`` members;
    above, both sums are estimated from ``max_exact`` members sampled without replacement (returns sampled=True).
    """
    n = len(x)
    if n == 1:
        return np.zeros(1), False
    dtype = np.float64 if n * n * x.shape[1] <= 5e7 else np.float32
    xc = (x - x.mean(axis=0)).astype(dtype)
    sampled = n > max_exact
    ref = np.sort(rng.choice(n, size=max_exact, replace=False)) if sampled else np.arange(n)
    xr, ir = xc[ref], info[ref]
    num = np.empty(n)
    for s in range(0, n, chunk):
        d = np.sqrt(_sqdist(xc[s:s + chunk], xr))
        num[s:s + chunk] = d.astype(np.float64) @ ir
    if not sampled:
        dbar = 0.0
        for s in range(0, n, chunk):
            dbar += float(np.sqrt(_sqdist(xc[s:s + chunk], xc)).sum(dtype=np.float64))
        dbar /= n
    else:
        m = len(ref)
        pair_sum = 0.0
        for s in range(0, m, chunk):
            pair_sum += float(np.sqrt(_sqdist(xr[s:s + chunk], xr)).sum(dtype=np.float64))
        mean_off = pair_sum / (m * (m - 1))
        dbar = n * (1.0 - 1.0 / n) * mean_off  # sum over all n^2 ordered pairs (diagonal is 0), divided by n
        num *= n / m
    if dbar <= 0:  # all members identical: nothing is more unique than anything else
        return np.zeros(n), sampled
    return num / dbar, sampled


def association(centroids: np.ndarray) -> np.ndarray:
    """``A_c = mean_{c' != c} exp(cos(mu_c, mu_c'))``, divided by the mean of A over the given clusters."""
    c = len(centroids)
    if c == 1:
        return np.ones(1)
    norm = np.linalg.norm(centroids, axis=1)
    unit = centroids / np.where(norm > 0, norm, 1.0)[:, None]
    e = np.exp(unit @ unit.T)
    a = (e.sum(axis=1) - np.diag(e)) / (c - 1)
    return a / a.mean()


class DataTailor(Scorer):
    """DataTailor's synergistic value, computed inside each task (``signals.tasks``):

    - informativeness ``I_i = sv_entropy_i`` (entropy of the normalised singular values of the sample's hidden
      states); ``tau_i = sv_tau_i`` (largest normalised singular value);
    - cross-modal domain clustering: Ward clustering of the ``last`` vectors of the task (scipy, exact) cut where
      the merge height exceeds ``theta`` x the largest merge height. Above ``max_exact`` samples in a task, Ward
      runs on ``n_micro`` k-means micro-clusters (faiss), weighted by their sizes, and ``notes_`` says so;
    - uniqueness ``U_i = sum_{j in C(i)} d(i, j) * I_j / dbar_C`` with d the Euclidean distance of ``last`` and
      ``dbar_C = sum_{j,k in C} d(j, k) / |C|`` (``weight_uniqueness=False`` drops the ``I_j`` weight, i.e. a
      plain distance sum). Clusters above ``max_cluster_exact`` members estimate both sums from that many sampled
      members (noted in ``notes_``), which keeps memory O(N d) and time O(N * max_cluster_exact * d);
    - representativeness ``R_i = A_{c(i)} * I_i`` with ``A_c = mean_{c' != c} exp(cos(mu_c, mu_c'))`` over the
      task's other clusters, divided by its mean over the task's clusters (mu = cluster mean of ``last``);
    - ``score_i = (r_i * I~_i + U~_i + R~_i) / (r_i + 2)``, ``~`` = rank-normalised to [0, 1) inside the task and
      ``r_i = n_rounds_i`` (multi-turn samples lean on informativeness).

    Direction: higher = keep. :meth:`quotas` gives each task ``n_t`` proportional to ``|T_t| * mean(tau over T_t)^2``
    (largest remainder, capped at the task size), and the selector takes each task's top ``n_t``.
    Reads ``sv_entropy``, ``sv_tau``, ``n_rounds``, ``last``. ``details_`` holds I, U, R and the domain cluster of
    every sample. Records with a non-finite sv_entropy or n_rounds get -inf (counted in ``notes_``).
    Paper: Yu, Shen, Yue, Wu, Zhang, Li, Li, Tang & Zhuang 2024, "Mastering Collaborative Multi-modal Data
    Selection: A Focus on Informativeness, Uniqueness, and Representativeness" (DataTailor), arXiv:2412.06293.
    """

    name = "datatailor"
    requires = ("sv_entropy", "sv_tau", "n_rounds", "last")
    paper = "Yu et al. 2024, Mastering Collaborative Multi-modal Data Selection (DataTailor), arXiv:2412.06293"
    summary = "informative, unique and representative samples, per-task budgets from the top singular value"

    def __init__(self, *, theta: float = 0.1, max_exact: int = 20000, n_micro: int = 1000,
                 max_cluster_exact: int = 4096, weight_uniqueness: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        if not 0.0 < theta < 1.0:
            raise ValueError(f"theta must be in (0, 1), got {theta}")
        if max_cluster_exact < 2 or n_micro < 2 or max_exact < 2:
            raise ValueError("max_exact, n_micro and max_cluster_exact must be >= 2")
        self.theta = theta
        self.max_exact = max_exact
        self.n_micro = n_micro
        self.max_cluster_exact = max_cluster_exact
        self.weight_uniqueness = weight_uniqueness

    def _domains(self, x: np.ndarray, task: str) -> np.ndarray:
        n = len(x)
        if n <= self.max_exact:
            if n < 2:
                return np.zeros(n, np.int64)
            return cut_tree(ward_linkage(x), n, self.theta)
        _, micro, how = kmeans(x, self.n_micro, random_state=self.random_state, niter=10,
                               max_points_per_centroid=64)
        m = int(micro.max()) + 1
        sizes = np.bincount(micro, minlength=m).astype(np.float64)
        means = np.zeros((m, x.shape[1]))
        np.add.at(means, micro, x.astype(np.float64))
        means /= sizes[:, None]
        labels = cut_tree(weighted_ward(means, sizes), m, self.theta)[micro]
        self.notes_.append(f"datatailor: task {task!r} has {n} samples > max_exact={self.max_exact}: Ward ran on "
                           f"{m} size-weighted micro-clusters ({how})")
        return labels

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        n = len(signals)
        info = scalar(signals, "sv_entropy")
        rounds = scalar(signals, "n_rounds")
        if (rounds[np.isfinite(rounds)] < 0).any():
            raise ValueError("n_rounds must be >= 0")
        vecs = signals["last"]
        ok = np.isfinite(info) & np.isfinite(rounds)
        u_all, r_all = np.full(n, np.nan), np.full(n, np.nan)
        domain = np.full(n, -1, np.int64)
        score = np.zeros(n)
        rng = np.random.default_rng(self.random_state)
        sampled_clusters = 0
        for task in np.unique(signals.tasks[ok]):
            rows = np.flatnonzero(ok & (signals.tasks == task))
            x = as_float32(vecs[rows])
            check_finite(x, "last", signals.ids[rows])
            labels = self._domains(x, str(task))
            it = info[rows]
            w = it if self.weight_uniqueness else np.ones(len(rows))
            u = np.zeros(len(rows))
            cents = np.zeros((int(labels.max()) + 1, x.shape[1]))
            by_label = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[by_label], np.arange(len(cents) + 1))
            small = np.diff(bounds) < 512
            # many small clusters on one BLAS thread, the large ones with every thread
            for group, limit in ((np.flatnonzero(small), one_blas_thread), (np.flatnonzero(~small), nullcontext)):
                with limit():
                    for c in group:
                        members = by_label[bounds[c]:bounds[c + 1]]
                        u[members], sampled = uniqueness(x[members], w[members], max_exact=self.max_cluster_exact,
                                                         rng=rng)
                        sampled_clusters += sampled
                        cents[c] = x[members].astype(np.float64).mean(axis=0)
            r = association(cents)[labels] * it
            rt = rounds[rows]
            score[rows] = (rt * rank01(it) + rank01(u) + rank01(r)) / (rt + 2.0)
            u_all[rows], r_all[rows], domain[rows] = u, r, labels
        if sampled_clusters:
            self.notes_.append(f"datatailor: uniqueness of {sampled_clusters} clusters larger than "
                               f"max_cluster_exact={self.max_cluster_exact} estimated from that many sampled members")
        self.details_ = {"I": info, "U": u_all, "R": r_all, "domain": domain}
        return exclude_nonfinite(score, ~ok, signals, self.notes_, self.name, "sv_entropy or n_rounds is not finite")

    def quotas(self, signals: Signals, scores: np.ndarray, n_keep: int) -> dict[str, int]:
        """``n_t`` proportional to ``|T_t| * (mean tau over T_t)^2``, summing to ``n_keep``, capped at each task's
        number of scorable samples."""
        tau = scalar(signals, "sv_tau")
        usable = np.isfinite(scores)
        tasks = np.unique(signals.tasks)
        weights, caps = [], []
        for task in tasks:
            mask = signals.tasks == task
            t = tau[mask & np.isfinite(tau)]
            weights.append(mask.sum() * (t.mean() ** 2 if len(t) else 0.0))
            caps.append(int((mask & usable).sum()))
        counts = apportion(weights, n_keep, caps=caps)
        return {task: int(c) for task, c in zip(tasks.tolist(), counts)}
