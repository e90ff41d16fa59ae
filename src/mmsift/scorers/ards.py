"""ARDS (Yang, Liu & Wei, NeurIPS 2025): robustness-aware selection against worst-case evaluation subgroups."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._cluster import check_finite, kmeans, unit_halves
from mmsift.scorers._rank import scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals

AGGS = ("mean", "max")
TEXT_ONLY = "text_only"
# ARDS's format pool (cluster_subgroup.py), in its order: the first of these instructions found in a record's
# first turn (case-insensitive substring) names its format.
FIRST_TURN_FORMATS = (
    ("Answer the question using a single word or phrase.", "phrase"),
    ("Answer with the option's letter from the given choices directly.", "mc"),
    ("Provide a one-sentence caption for the provided image", "img_caption"),
    ("Provide a short description for this region", "region_desc"),
    ("Provide the bounding box coordinate of the region this sentence describes", "region_bbox"),
)
# Labels only runs probed by mmsift 0.1 give (its own all-turn patterns, one merged region format).
ALL_TURN_ONLY = ("region", "short", "caption")


def first_turn_format(turns, n_images: int) -> str:
    """ARDS's instruction format of a record, as its code detects it: the first instruction of
    :data:`FIRST_TURN_FORMATS` contained in the first turn's text (case-insensitive), else ``other_image`` when
    the record has an image and ``text_only`` when not. ``turns`` are objects with ``role`` and ``text`` (a
    record's turns); the first turn is the first ``user`` turn (the code reads ``conversations[0]``, which in
    LLaVA-style data is the human's; system turns are skipped). A text-only record that carries one of the
    instructions takes that format, as in the code.

    This is the value the probe stores as ``fmt`` (``probe/shard.py``); runs probed by mmsift 0.1 hold labels
    from its own all-turn patterns instead (see :data:`ALL_TURN_ONLY`)."""
    first = next((t.text for t in turns if t.role == "user"), "")
    low = first.lower()
    for instruction, name in FIRST_TURN_FORMATS:
        if instruction.lower() in low:
            return name
    return "other_image" if n_images else TEXT_ONLY


def perturbation_gap(fmt: np.ndarray, loss, loss_mc, loss_sym, loss_perm,
                     loss_imgnoise) -> tuple[np.ndarray, np.ndarray]:
    """(gap, perturbed loss) per row. gap = |loss(perturbed) - loss(clean)|: for multiple-choice items the larger
    of the symbol- and permutation-attack gaps (either alone when the other is missing), measured on the
    multiple-choice rounds' answer tokens (``loss_mc``, so plain rounds of the same record do not dilute it); for
    other image items the image-noise gap on the whole conversation; NaN when missing. The perturbed loss is the
    multiple-choice attack that gave the gap (NaN for other items): the loss of ARDS's perturbed copy."""
    mc = fmt == "mc"
    with np.errstate(invalid="ignore"):
        sym, perm = np.abs(loss_sym - loss_mc), np.abs(loss_perm - loss_mc)
        use_sym = np.isnan(perm) | (sym >= perm)
        mc_gap = np.where(use_sym, sym, perm)
        gap = np.where(mc, mc_gap, np.abs(loss_imgnoise - loss))
        perturbed = np.where(mc, np.where(use_sym, loss_sym, loss_perm), np.nan)
    gap[fmt == TEXT_ONLY] = np.nan
    return gap, perturbed


class ARDS(Scorer):
    """ARDS: score each training sample by its similarity to worst-case evaluation subgroups.

    1. Conversation vector ``r_i = [norm(last_final_i); norm(attn_pool_i)]`` (cosines computed on unit rows):
       both halves from the final layer, as the authors' code takes both from the last hidden state. (An earlier
       mmsift took the first half from ``last`` at ``--layer``, by default the residual stream before the final
       norm, where a few outlier dimensions dominate cosine similarity.)
    2. The pool is split by instruction format (``fmt``); each format except ``text_only`` is clustered into
       ``n_subgroups`` subgroups by spherical k-means of r. ARDS's code takes the format from the first turn:
       the first of five instruction strings it contains (short phrase, option letter, one-sentence caption,
       region description, region bounding box), else "other with image" / "plain text";
       :func:`first_turn_format` is that rule, labels ``phrase``, ``mc``, ``img_caption``, ``region_desc``,
       ``region_bbox``, ``other_image``, ``text_only``. The scorer splits by whatever labels the run's ``fmt``
       holds (only ``mc`` and ``text_only`` are special); a run whose ``fmt`` came from mmsift's earlier
       all-turn patterns (``mc``, ``region``, ``short``, ``caption``, ``other_image``, ``text_only``: one merged
       region format) is used as it is and ``notes_`` says so.
    3. Worst-case evaluation set: in each subgroup, the B members with the largest perturbation gap
       ``|loss(perturbed) - loss|`` — for ``fmt == "mc"`` the larger of the symbol (``loss_sym``) and permutation
       (``loss_perm``) attacks against ``loss_mc``, all three over the multiple-choice rounds' answer tokens only
       (ARDS queries each multiple-choice round; a whole-conversation loss diluted one such round among plain
       ones); otherwise image noise (``loss_imgnoise`` against ``loss``). Members without a usable gap are not
       candidates; ties go to the earlier record. B = ``n_worst``; ``None`` (default) takes 5% of the subgroup,
       at least 1 and at most 10, so the evaluation set never eats a small pool.
    4. Subgroup weight ``w_m = softmax_m(mean loss over S_m and the perturbed copies of its mc members)``: the
       authors' code adds, for each multiple-choice evaluation item, its attacked copy to the evaluation set, so
       the copy's loss (here the attack that gave the gap) enters the subgroup's mean loss.
    5. ``score_i = sum_m w_m * agg_{j in S_m} cos(r_i, r_j)`` with ``agg="mean"`` (the paper/slides, default) or
       ``"max"`` (the public code's default). Worst-case members get -inf (they are the evaluation set, never
       training candidates); ``notes_`` counts them.

    Direction: higher = keep (the paper keeps the top 30%). Reads ``last_final``, ``attn_pool``, ``fmt``,
    ``loss``, ``loss_mc``, ``loss_sym``, ``loss_perm``, ``loss_imgnoise``. Deviations from the code, and why: the
    evaluation items of a multiple-choice subgroup are chosen by loss gap, not by whether a generated answer flips
    (that needs generation, which the one-pass probe does not do); several multiple-choice rounds of one record
    are attacked and scored together (mean over their answer tokens), not one query each; the attacked copies'
    vectors are not added to the target set (the probe embeds each record once); the copy's loss is that of one
    attack, not of the code's combined symbol-and-permutation copy; every subgroup member is a candidate (the
    code first draws a random n // subgroups members per subgroup and skips subgroups of two members or fewer).
    Memory O(N d): the mean aggregation reduces to one dot product per sample, the max aggregation works in row
    chunks against the |S| evaluation vectors. Paper: Yang, Liu & Wei, "Data Selection Matters: Towards Robust
    Instruction Tuning of Large Multimodal Models", NeurIPS 2025.
    """

    name = "ards"
    requires = ("last_final", "attn_pool", "fmt", "loss", "loss_mc", "loss_sym", "loss_perm", "loss_imgnoise")
    paper = "Yang, Liu & Wei 2025, Data Selection Matters: Towards Robust Instruction Tuning of LMMs (ARDS, NeurIPS)"
    summary = "closest to worst-case (attack-sensitive) subgroups, per instruction format"

    def __init__(self, *, n_subgroups: int = 8, n_worst: int | None = None, agg: str = "mean",
                 random_state: int = 0):
        super().__init__(random_state=random_state)
        if agg not in AGGS:
            raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
        if n_subgroups < 1 or (n_worst is not None and n_worst < 1):
            raise ValueError("n_subgroups and n_worst must be >= 1")
        self.n_subgroups = n_subgroups
        self.n_worst = n_worst
        self.agg = agg

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        n = len(signals)
        fmt = np.asarray(signals["fmt"]).astype(str)
        old = sorted(set(fmt.tolist()) & set(ALL_TURN_ONLY))
        if old:
            self.notes_.append(f"ards: this run's fmt has {', '.join(old)}: formats from mmsift's all-turn patterns "
                               "(one merged region format), not ARDS's first-turn instructions "
                               "(mmsift.scorers.ards.first_turn_format)")
        loss = scalar(signals, "loss")
        gap, perturbed = perturbation_gap(fmt, loss, scalar(signals, "loss_mc"), scalar(signals, "loss_sym"),
                                          scalar(signals, "loss_perm"), scalar(signals, "loss_imgnoise"))
        gap[~np.isfinite(loss)] = np.nan
        r = unit_halves(signals["last_final"], signals["attn_pool"])
        check_finite(r, "last_final/attn_pool", signals.ids)
        subgroup = np.full(n, -1, np.int64)
        worst: list[np.ndarray] = []
        for f in sorted(set(fmt.tolist()) - {TEXT_ONLY}):
            rows = np.flatnonzero(fmt == f)
            _, labels, _ = kmeans(r[rows], self.n_subgroups, spherical=True, random_state=self.random_state)
            for g in range(int(labels.max()) + 1):
                members = rows[labels == g]
                subgroup[members] = len(worst)
                cand = members[np.isfinite(gap[members])]
                b = self.n_worst or max(1, min(10, len(members) // 20))
                top = cand[np.lexsort((signals.index[cand], -gap[cand]))[:b]]
                worst.append(top)
        worst = [s for s in worst if len(s)]
        if not worst:
            raise ValueError("ards: no worst-case evaluation items: every non-text-only record lacks a finite "
                             "perturbed loss (loss_sym/loss_perm for mc, loss_imgnoise otherwise); "
                             "probe with --methods ards")
        mean_loss = np.array([np.concatenate([loss[s], perturbed[s][np.isfinite(perturbed[s])]]).mean()
                              for s in worst])
        w = np.exp(mean_loss - mean_loss.max())
        w /= w.sum()
        if self.agg == "mean":
            target = sum(wm * r[s].astype(np.float64).mean(axis=0) for wm, s in zip(w, worst))
            score = r.astype(np.float64, copy=False) @ target if n * r.shape[1] < 5e7 else _chunked_dot(r, target)
        else:
            score = _weighted_max(r, worst, w)
        eval_rows = np.concatenate(worst)
        score[eval_rows] = -np.inf
        self.notes_.append(f"ards: {len(eval_rows)} worst-case evaluation items in {len(worst)} subgroups "
                           f"excluded from selection (score -inf); agg={self.agg}")
        self.details_ = {"subgroup": subgroup.astype(np.float64), "gap": gap}
        return score


def _chunked_dot(r: np.ndarray, target: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(r))
    t32 = target.astype(np.float32)
    for s in range(0, len(r), chunk):
        out[s:s + chunk] = r[s:s + chunk] @ t32
    return out


def _weighted_max(r: np.ndarray, worst: list[np.ndarray], w: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """``sum_m w_m * max_{j in S_m} r_i . r_j`` in row chunks (memory O(chunk * |S|))."""
    ev = r[np.concatenate(worst)]
    starts = np.cumsum([0] + [len(s) for s in worst[:-1]])
    out = np.empty(len(r))
    for s in range(0, len(r), chunk):
        sims = r[s:s + chunk] @ ev.T
        out[s:s + chunk] = np.maximum.reduceat(sims, starts, axis=1).astype(np.float64) @ w
    return out
