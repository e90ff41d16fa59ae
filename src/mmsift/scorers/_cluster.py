"""Clustering and distance helpers shared by the clustering scorers (DataTailor, ARDS, COINCIDE, SemDeDup).

k-means is faiss's; hierarchical Ward is scipy's. Two pieces are written here because no library offers them:
Ward on weighted points (micro-cluster centroids carrying their sizes) and a two-level k-means for very many
centroids, where a flat k-means would cost N x K distance evaluations per iteration.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)

_CHUNK = 65536


def as_float32(x: np.ndarray, *, normalize: bool = False, chunk: int = _CHUNK) -> np.ndarray:
    """Copy a (possibly memory-mapped float16) matrix to contiguous float32, chunk by chunk; optionally L2-normalise
    each row (zero rows stay zero)."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (N, d) vector signal, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, len(x), chunk):
        block = np.asarray(x[s:s + chunk], dtype=np.float32)
        if normalize:
            norm = np.sqrt(np.einsum("ij,ij->i", block, block))
            block = block / np.where(norm > 0, norm, 1.0)[:, None]
        out[s:s + chunk] = block
    return out


def concat_float32(parts: list[np.ndarray], *, normalize_parts: bool, normalize: bool,
                   chunk: int = _CHUNK) -> np.ndarray:
    """Concatenate vector signals column-wise into one float32 matrix, chunk by chunk (peak memory = the output
    plus one chunk), optionally L2-normalising each part and then each whole row."""
    n = len(parts[0])
    dims = [p.shape[1] for p in parts]
    out = np.empty((n, sum(dims)), dtype=np.float32)
    for s in range(0, n, chunk):
        col = 0
        for p, d in zip(parts, dims):
            block = np.asarray(p[s:s + chunk], dtype=np.float32)
            if normalize_parts:
                norm = np.sqrt(np.einsum("ij,ij->i", block, block))
                block = block / np.where(norm > 0, norm, 1.0)[:, None]
            out[s:s + chunk, col:col + d] = block
            col += d
        if normalize:
            rows = out[s:s + chunk]
            norm = np.sqrt(np.einsum("ij,ij->i", rows, rows))
            rows /= np.where(norm > 0, norm, 1.0)[:, None]
    return out


def unit_halves(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[a_i / ||a_i|| ; b_i / ||b_i||] / sqrt(2)`` in float32: each half of a row has norm 1/sqrt(2), so a row
    with both halves is a unit vector and its dot product with another is the mean of the halves' cosines. A zero
    half stays zero (the row then has norm 1/sqrt(2))."""
    r = concat_float32([a, b], normalize_parts=True, normalize=False)
    r *= np.float32(1.0 / np.sqrt(2.0))
    return r


def check_finite(x: np.ndarray, name: str, ids) -> None:
    """Raise a clear error naming records whose vector holds NaN/inf (checked in chunks: no N x d temporary)."""
    bad = np.zeros(len(x), dtype=bool)
    for s in range(0, len(x), _CHUNK):
        bad[s:s + _CHUNK] = ~np.isfinite(x[s:s + _CHUNK]).all(axis=1)
    if bad.any():
        examples = ", ".join(str(i) for i in np.asarray(ids)[bad][:5])
        raise ValueError(f"vector signal {name!r} has NaN/inf in {int(bad.sum())} records (e.g. {examples})")


class _faiss_threads:
    """Run small faiss jobs on one thread: OpenMP start-up and spinning cost more than the work on tiny inputs,
    especially on a busy machine."""

    def __init__(self, work: float):
        self.single = work < 1e10

    def __enter__(self):
        self.before = faiss.omp_get_max_threads()
        if self.single:
            faiss.omp_set_num_threads(1)

    def __exit__(self, *exc):
        faiss.omp_set_num_threads(self.before)


def one_blas_thread():
    """Context manager: BLAS on one thread. Loops over many small clusters spend more time synchronising BLAS
    threads (worse on a busy machine) than multiplying; large single products are left outside it."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _flat_kmeans(x: np.ndarray, k: int, *, spherical: bool, seed: int, niter: int,
                 max_points_per_centroid: int) -> np.ndarray:
    with _faiss_threads(float(min(len(x), k * max_points_per_centroid)) * k * x.shape[1] * niter):
        return _train(x, k, spherical=spherical, seed=seed, niter=niter,
                      max_points_per_centroid=max_points_per_centroid)


def _train(x: np.ndarray, k: int, *, spherical: bool, seed: int, niter: int,
           max_points_per_centroid: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) % (2**31), spherical=spherical,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(x)
    return km.centroids.copy()


def assign(x: np.ndarray, centroids: np.ndarray, *, spherical: bool, chunk: int = _CHUNK) -> np.ndarray:
    """Nearest centroid of every row (inner product when ``spherical``, else L2), in chunks."""
    index = faiss.IndexFlatIP(centroids.shape[1]) if spherical else faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(x), dtype=np.int64)
    with _faiss_threads(float(len(x)) * len(centroids) * centroids.shape[1]):
        for s in range(0, len(x), chunk):
            _, idx = index.search(np.ascontiguousarray(x[s:s + chunk]), 1)
            labels[s:s + chunk] = idx[:, 0]
    return labels


def kmeans(x: np.ndarray, k: int, *, spherical: bool = False, random_state: int = 0, niter: int = 20,
           max_points_per_centroid: int = 256, two_level_above: float = 1e10,
           small_below: float = 2e7) -> tuple[np.ndarray, np.ndarray, str]:
    """k-means of float32 rows ``x`` into at most ``k`` clusters: returns (centroids, labels, how).

    faiss trains on at most ``max_points_per_centroid * k`` sampled rows, then every row is assigned to its nearest
    centroid. Problems with N * k * d up to ``small_below`` use scikit-learn's k-means++ instead. When one
    assignment pass would cost more than ``two_level_above`` multiply-adds (N * k * d), a two-level k-means is used: sqrt(k) coarse clusters, then each split into a share of k proportional to its size.
    Empty clusters are removed and labels renumbered 0..K'-1 in order of first appearance in ``x``.
    """
    n, d = x.shape
    k = int(max(1, min(k, n)))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k == 1:
        cent = x.mean(axis=0, keepdims=True)
        if spherical:
            cent /= max(np.linalg.norm(cent), 1e-12)
        return cent, np.zeros(n, np.int64), "one cluster"
    if float(n) * k * d <= small_below:
        # small problems: scikit-learn's k-means++ seeding avoids the poor local optima of faiss's random
        # seeding on tiny tables; on unit rows Euclidean k-means followed by normalised centroids is spherical
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=100, random_state=random_state).fit(x)
        cent = km.cluster_centers_.astype(np.float32)
        if spherical:
            cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        labels = assign(x, cent, spherical=spherical)
        how = f"k-means++ (scikit-learn), {k} clusters"
    elif float(n) * k * d <= two_level_above:
        cent = _flat_kmeans(x, k, spherical=spherical, seed=random_state, niter=niter,
                            max_points_per_centroid=max_points_per_centroid)
        labels = assign(x, cent, spherical=spherical)
        how = f"k-means, {k} clusters"
    else:
        k1 = int(np.ceil(np.sqrt(k)))
        c1 = _flat_kmeans(x, k1, spherical=spherical, seed=random_state, niter=niter,
                          max_points_per_centroid=max_points_per_centroid)
        top = assign(x, c1, spherical=spherical)
        sizes = np.bincount(top, minlength=k1)
        shares = np.maximum(1, np.round(sizes / n * k).astype(np.int64))
        cents, labels = [], np.empty(n, np.int64)
        offset = 0
        for g in range(k1):
            rows = np.flatnonzero(top == g)
            if len(rows) == 0:
                continue
            kg = int(min(shares[g], len(rows)))
            if kg == 1:
                cg = x[rows].mean(axis=0, keepdims=True)
                if spherical:
                    cg /= max(np.linalg.norm(cg), 1e-12)
                lg = np.zeros(len(rows), np.int64)
            else:
                cg = _flat_kmeans(x[rows], kg, spherical=spherical, seed=random_state + g + 1, niter=niter,
                                  max_points_per_centroid=max_points_per_centroid)
                lg = assign(x[rows], cg, spherical=spherical)
            cents.append(cg)
            labels[rows] = lg + offset
            offset += len(cg)
        cent = np.concatenate(cents)
        how = f"two-level k-means ({k1} coarse clusters, {len(cent)} clusters in all)"
        log.info("k-means: %s", how)
    # drop empty clusters; renumber by first appearance so labels do not depend on faiss's centroid order
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    used = np.unique(labels)
    return cent[used][order], rank[inv.reshape(-1)], how


def weighted_ward(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ward linkage of weighted points (each a cluster of ``weights[i]`` members at ``points[i]``), in scipy's
    linkage-matrix format, heights on scipy's scale.

    scipy's ``linkage`` has no weights, so this is a direct Lance-Williams implementation: the initial squared
    distance between clusters a and b is 2 n_a n_b / (n_a + n_b) * ||mu_a - mu_b||^2 (for singletons this is
    scipy's ||a - b||^2), and merging i, j updates d^2(k, ij) = ((n_i + n_k) d^2(k, i) + (n_j + n_k) d^2(k, j)
    - n_k d^2(i, j)) / (n_i + n_j + n_k). O(m^2) memory and O(m^3) time: use for m up to a few thousand.
    """
    p = np.asarray(points, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).copy()
    m = len(p)
    if m < 2:
        return np.zeros((0, 4))
    sq = np.einsum("ij,ij->i", p, p)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * p @ p.T, 0.0)
    d2 *= 2.0 * w[:, None] * w[None, :] / (w[:, None] + w[None, :])
    np.fill_diagonal(d2, np.inf)
    node = np.arange(m)  # scipy cluster id currently held in each slot
    leaves = np.ones(m, dtype=np.int64)  # scipy's 4th column counts leaves, not weights
    alive = np.ones(m, dtype=bool)
    z = np.zeros((m - 1, 4))
    for step in range(m - 1):
        flat = int(np.argmin(d2))
        i, j = divmod(flat, m)
        if i > j:
            i, j = j, i
        dij = d2[i, j]
        ni, nj = w[i], w[j]
        z[step] = (min(node[i], node[j]), max(node[i], node[j]), np.sqrt(max(dij, 0.0)), leaves[i] + leaves[j])
        leaves[i] += leaves[j]
        nk = w
        new = ((ni + nk) * d2[i] + (nj + nk) * d2[j] - nk * dij) / (ni + nj + nk)
        new[~alive] = np.inf
        d2[i, :] = new
        d2[:, i] = new
        d2[i, i] = np.inf
        d2[j, :] = np.inf
        d2[:, j] = np.inf
        alive[j] = False
        w[i] = ni + nj
        node[i] = m + step
    return z


def condensed_euclidean(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """scipy's condensed Euclidean distance vector (as ``pdist``), computed with BLAS matrix products in row
    chunks on centred float64 data: ``pdist`` is a scalar loop and dominates Ward's time in 256 dimensions."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n * (n - 1) // 2)
    pos = 0
    for s in range(0, n - 1, chunk):
        e = min(n - 1, s + chunk)
        block = np.sqrt(np.maximum(sq[s:e, None] + sq[None, s + 1:] - 2.0 * (x[s:e] @ x[s + 1:].T), 0.0))
        for i in range(s, e):
            row = block[i - s, i - s:]  # columns i+1 .. n-1
            out[pos:pos + len(row)] = row
            pos += len(row)
    return out


def ward_linkage(x: np.ndarray) -> np.ndarray:
    """Exact Ward linkage of the rows of ``x`` (scipy's nearest-neighbour chain on BLAS-computed distances)."""
    from scipy.cluster.hierarchy import linkage

    return linkage(condensed_euclidean(x), method="ward")


def cut_tree(z: np.ndarray, m: int, theta: float) -> np.ndarray:
    """Labels 0..C-1 (by first appearance) of ``m`` leaves after cutting a linkage tree where the merge height
    exceeds ``theta`` x the largest merge height (DataTailor's cross-modal domain clustering rule)."""
    from scipy.cluster.hierarchy import fcluster

    if m < 2 or len(z) == 0:
        return np.zeros(m, np.int64)
    top = float(z[:, 2].max())
    if top <= 0:
        return np.zeros(m, np.int64)
    raw = fcluster(z, t=theta * top, criterion="distance")
    _, first, inv = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inv.reshape(-1)]
