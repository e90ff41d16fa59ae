"""COINCIDE (Lee, Li & Hwang 2024, arXiv:2406.10995): cluster-level transferability and density decide each
cluster's share; samples inside a cluster are picked greedily to match the cluster's distribution (minimum MMD)."""

from __future__ import annotations

import numpy as np

from mmsift.budget import apportion
from mmsift.scorers._cluster import check_finite, concat_float32, kmeans, one_blas_thread, unit_halves
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


# Which (image, text) vector signals make the features.
FEATURES = {"attn": ("attn_img", "attn_txt"), "hidden": ("img_mean", "txt_mean")}
TEXT_ONLY = ("image", "text")


def _kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel exp(-||a - b||^2 / (2 sigma^2)) between rows of any norm (text-only rows have norm
    1/sqrt(2)), computed as |a|^2 + |b|^2 - 2 a.b and clipped at 0."""
    sq = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
    return np.exp(-np.maximum(sq, 0.0) / (2.0 * bandwidth**2))


def zero_rows(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Rows of a (possibly memory-mapped) vector signal that are all zero: the probe's mark for "no image"."""
    out = np.empty(len(x), dtype=bool)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = ~np.any(np.asarray(x[s:s + chunk]) != 0, axis=1)
    return out


def transferability(cent: np.ndarray, sim_cap: float, chunk: int = 2048) -> np.ndarray:
    """``T_c`` = mean cosine of centroid c to the other centroids, ignoring pairs with cosine > ``sim_cap``
    (0 when no pair is left). Rows are L2-normalised here; computed in row chunks (memory O(chunk * K))."""
    cent = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    k = len(cent)
    out = np.zeros(k)
    for s in range(0, k, chunk):
        sims = cent[s:s + chunk] @ cent.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = np.inf  # the centroid itself
        ok = sims <= sim_cap
        cnt = ok.sum(axis=1)
        total = np.where(ok, sims, 0.0).sum(axis=1, dtype=np.float64)
        out[s:s + chunk] = np.where(cnt > 0, total / np.maximum(cnt, 1), 0.0)
    return out


def herd(x: np.ndarray, q: int, bandwidth: float, ref: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Greedy MMD minimisation (kernel herding) of ``q`` rows of ``x`` against the distribution of ``x[ref]``.

    Adding x to the chosen set S (|S| = t) lowers MMD^2(S + x, P) most when ``m(x) - sum_{s in S} k(x, s) / (t + 1)``
    is largest, with ``m(x) = mean_{y in P} k(x, y)``, because k(x, x) = 1 is the same for every x. Ties go to the
    earliest row. Returns positions in pick order.
    """
    n = len(x)
    gram = _kernel(x, x, bandwidth) if len(ref) == n else None  # small cluster: every k(x, s) at once
    m = np.empty(n)
    if gram is not None:
        m[:] = gram.mean(axis=1, dtype=np.float64)
    else:
        for s in range(0, n, chunk):
            m[s:s + chunk] = _kernel(x[s:s + chunk], x[ref], bandwidth).mean(axis=1, dtype=np.float64)
    acc = np.zeros(n)
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(q, dtype=np.int64)
    for t in range(q):
        gain = np.where(taken, -np.inf, m - acc / (t + 1))
        j = int(np.argmax(gain))
        picks[t] = j
        taken[j] = True
        acc += gram[:, j] if gram is not None else _kernel(x, x[j:j + 1], bandwidth)[:, 0]
    return picks


class Coincide(Scorer):
    """COINCIDE: features ``x_i = [img_i / ||img_i|| ; txt_i / ||txt_i||] / sqrt(2)`` (each half of norm
    1/sqrt(2), as the code normalises each layer's image and text parts and divides by sqrt(2 x layers));
    spherical k-means into K clusters (``n_clusters``; default round(N / ``cluster_size``), ``cluster_size`` = 70,
    at least 1; ``niter`` = 50 Lloyd iterations); for each cluster c

    - transferability ``T_c`` = mean cosine of its centroid to the other centroids, ignoring pairs above ``sim_cap``
      (0.9). With ``transfer_on="text"`` (default, the authors' code) the cosine is taken on the text half of the
      centroids; ``"all"`` uses the whole centroid;
    - density ``D_c`` = mean Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / (2 bandwidth^2))`` over all pairs of
      members, each member with itself included (the code's ``K.mean()``; 1 for a singleton; over ``max_members``
      sampled members for larger clusters, noted in ``notes_``);
    - budget share ``w_c = softmax_c(T_c / D_c / temperature)``, temperature 0.1: clusters that transfer to
      the rest of the pool and are not dense get more of the budget.

    Text-only records (an all-zero image part, the probe's mark for "no image"): with ``text_only="image"``
    (default) their text vector fills the *image* half and the text half is zero, as in the code, whose fixed
    token offsets (image = the 729 positions after the system prompt) read a text-only record's text as its
    image part; ``"text"`` keeps it in the text half (mmsift's earlier placement, whole rows then L2-normalised).
    Under the default such a row has norm 1/sqrt(2), as in the code; the kernel takes norms into account.

    Cluster count and iterations follow the code's runs: 10 000 clusters on LLaVA-665k (N/66.5) and 2 500 on
    Vision-Flan (~186k, N/74), ``niter 50``, seed fixed (here ``random_state``). (mmsift's earlier default was
    min(10 000, N // 20) clusters and 10 iterations; pass ``n_clusters`` and ``niter`` for it.) Problems with
    N x K x d up to 2e7 use scikit-learn's k-means++ (up to 100 iterations) rather than faiss, very large ones a
    two-level k-means (see ``_cluster.kmeans``); the run's notes say which.

    :meth:`choose` turns the shares into per-cluster counts (largest remainder, capped at the cluster size; the
    code visits clusters by share and hands a capped cluster's remainder to the next, which gives the same counts
    up to rounding) and picks each cluster's count greedily to minimise the MMD between the picks and the cluster
    (kernel herding with the same kernel; the cluster's distribution is estimated from at most ``max_members``
    members). :meth:`score` is the per-member rate ``w_c / |C_c|`` (higher = keep); it is only what the selector
    ranks by when a caller bypasses ``choose``. ``details_``: cluster, T, D of each sample's cluster.

    Features: ``features="attn"`` (default) reads ``attn_img`` and ``attn_txt``, the authors' features: tanh of the
    attention output (the input of ``o_proj``) averaged over the image tokens and over the text after the image,
    per layer at COINCIDE's relative depths (see mmsift.probe.signals). ``features="hidden"`` reads ``img_mean``
    and ``txt_mean`` (residual hidden states, every text token) as an earlier mmsift did; those include the BOS and
    system prompt, a component every sample shares, which raises every cosine and flattens transferability.
    Deviation: for a text-only record the code's image half averages the first 729 tokens after the system prompt
    and its text half the rest; the probe's ``attn_txt`` averages every token of the record, so mmsift moves that
    one mean (the probe would need a positional split to do more).
    Paper: Lee, Li & Hwang 2024, "Concept-skill Transferability-based Data Selection for Large
    Vision-Language Models" (COINCIDE), arXiv:2406.10995.
    """

    name = "coincide"
    requires = ("attn_img", "attn_txt")
    paper = "Lee, Li & Hwang 2024, Concept-skill Transferability-based Data Selection (COINCIDE), arXiv:2406.10995"
    summary = "cluster shares from transferability/density, MMD-greedy picks inside clusters"

    def __init__(self, *, n_clusters: int | None = None, cluster_size: float = 70.0, niter: int = 50,
                 temperature: float = 0.1, sim_cap: float = 0.9, bandwidth: float = 1.0, max_members: int = 2000,
                 transfer_on: str = "text", text_only: str = "image", features: str = "attn",
                 random_state: int = 0):
        super().__init__(random_state=random_state)
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.features = features
        self.requires = FEATURES[features]
        if transfer_on not in ("text", "all"):
            raise ValueError(f"transfer_on must be 'text' or 'all', got {transfer_on!r}")
        self.transfer_on = transfer_on
        if temperature <= 0 or bandwidth <= 0:
            raise ValueError("temperature and bandwidth must be > 0")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError("n_clusters must be >= 1")
        if cluster_size <= 0 or niter < 1:
            raise ValueError("cluster_size must be > 0 and niter >= 1")
        if text_only not in TEXT_ONLY:
            raise ValueError(f"text_only must be one of {TEXT_ONLY}, got {text_only!r}")
        self.cluster_size = float(cluster_size)
        self.niter = int(niter)
        self.text_only = text_only
        if max_members < 2:
            raise ValueError("max_members must be >= 2")
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.sim_cap = sim_cap
        self.bandwidth = bandwidth
        self.max_members = max_members
        self._state = None

    def _features(self, signals: Signals) -> np.ndarray:
        img, txt = self.requires
        if self.text_only == "text":
            x = concat_float32([signals[img], signals[txt]], normalize_parts=False, normalize=True)
        else:
            d_img, d_txt = signals[img].shape[1], signals[txt].shape[1]
            if d_img != d_txt:
                raise ValueError(f"text_only='image' puts a text-only record's {txt} in the {img} half, which "
                                 f"needs equal widths (got {d_img} and {d_txt}); use text_only='text'")
            x = unit_halves(signals[img], signals[txt])
            rows = np.flatnonzero(zero_rows(signals[img]))
            if len(rows):
                x[rows, :d_img] = x[rows, d_img:]
                x[rows, d_img:] = 0.0
                self.notes_.append(f"coincide: {len(rows)} text-only records: text features in the image half "
                                   "(the code's placement)")
        check_finite(x, f"{img}/{txt}", signals.ids)
        return x

    def _ref(self, members: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Positions (within ``members``) that stand for the cluster's distribution."""
        if len(members) <= self.max_members:
            return np.arange(len(members))
        return np.sort(rng.choice(len(members), size=self.max_members, replace=False))

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        n = len(signals)
        x = self._features(signals)
        k = self.n_clusters or max(1, int(round(n / self.cluster_size)))
        cent, labels, how = kmeans(x, k, spherical=True, random_state=self.random_state, niter=self.niter)
        cent = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        kk = len(cent)
        # the text half: the text part's columns, after the image part's (see _features)
        t = transferability(cent[:, signals[self.requires[0]].shape[1]:] if self.transfer_on == "text" else cent,
                            self.sim_cap)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(kk + 1))
        rng = np.random.default_rng(self.random_state)
        d = np.ones(kk)
        n_sampled = 0
        with one_blas_thread():
            for c in range(kk):
                members = order[bounds[c]:bounds[c + 1]]
                if len(members) < 2:
                    continue
                ref = members[self._ref(members, rng)]
                n_sampled += len(ref) < len(members)
                g = _kernel(x[ref], x[ref], self.bandwidth).astype(np.float64)
                d[c] = g.mean()  # diagonal included, as the authors' code (a singleton has density 1)
        logits = t / d / self.temperature
        w = np.exp(logits - logits.max())
        w /= w.sum()
        sizes = np.diff(bounds)
        self.notes_.append(f"coincide: {how}; cluster shares softmax(T/D/{self.temperature:g})")
        if n_sampled:
            self.notes_.append(f"coincide: density of {n_sampled} clusters above max_members={self.max_members} "
                               "estimated from sampled members")
        self._state = (id(signals), x, labels, order, bounds, w)
        self.details_ = {"cluster": labels.astype(np.float64), "T": t[labels], "D": d[labels]}
        return w[labels] / sizes[labels]

    def choose(self, signals: Signals, scores: np.ndarray, n_keep: int) -> np.ndarray:
        if self._state is None or self._state[0] != id(signals):
            self.score(signals)
        _, x, labels, order, bounds, w = self._state
        sizes = np.diff(bounds)
        quota = apportion(w, n_keep, caps=sizes)
        rng = np.random.default_rng(self.random_state + 1)
        picked = []
        with one_blas_thread():
            for c in np.flatnonzero(quota):
                members = order[bounds[c]:bounds[c + 1]]  # pool order inside the cluster (stable sort)
                if quota[c] >= len(members):
                    picked.append(members)
                    continue
                picks = herd(x[members], int(quota[c]), self.bandwidth, self._ref(members, rng))
                picked.append(members[picks])
        self._state = None  # the feature matrix is N x d float32: do not keep it alive with the scorer
        return np.concatenate(picked) if picked else np.zeros(0, np.int64)
