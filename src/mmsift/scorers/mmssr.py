"""mmSSR: multi-modal rich scorers and styler (papers/002_…, "Harvesting Rich, Scalable and Transferable
Multi-Modal Data"). A judge rates every sample 0-5 for 14 capabilities and labels its interaction styles
(``mmsift judge --methods mmssr`` writes the ``cap_*`` and ``style_*`` columns); this scorer only samples.
"""

from __future__ import annotations

import math

import numpy as np

from mmsift.scorers.base import Scorer
from mmsift.store import Signals

# The 14 capabilities and 9 interaction styles of the paper (METHODS.md), in its order; the names are the
# column suffixes (``cap_<capability>``, ``style_<style>``) and the judge prompts use the text after ":".
CAPABILITY_TEXT = {
    "object_spatial_understanding": "object spatial understanding",
    "attribute_identification": "attribute identification",
    "logical_deduction": "logical deduction",
    "scene_understanding": "scene understanding",
    "fine_grained_recognition": "fine-grained recognition",
    "language_generation": "language generation",
    "in_context_learning": "in-context learning",
    "comparative_analysis": "comparative analysis",
    "activity_recognition": "activity recognition",
    "causal_reasoning": "causal reasoning",
    "humanities": "humanities",
    "stem_knowledge": "STEM knowledge",
    "data_understanding": "data understanding",
    "optical_character_recognition": "optical character recognition",
}
STYLE_TEXT = {
    "multi_choice": "multi-choice",
    "coordinate": "coordinate",
    "yes_no": "yes/no",
    "word_short_phrase": "word/short-phrase",
    "short_description": "short description",
    "detailed_description": "detailed description",
    "comparison": "comparison",
    "chain_of_thought": "chain-of-thought (step-by-step)",
    "specified_style": "specified style",
}
CAPABILITIES = tuple(CAPABILITY_TEXT)
STYLES = tuple(STYLE_TEXT)
CAP_COLUMNS = tuple(f"cap_{c}" for c in CAPABILITIES)
STYLE_COLUMNS = tuple(f"style_{s}" for s in STYLES)
# Score given by score() to a sample the judge could not rate for any chosen capability: below every real
# rating, so such samples rank last, and finite, because the selector rejects NaN.
UNRATED_SCORE = -1.0


def style_bins(signals: Signals) -> np.ndarray:
    """Integer bin id per row for the (style combination x source) bins.

    A sample's style is the *set* of styles the judge labelled it with (a multi-label answer such as
    {yes/no, short description} is its own pattern; no label at all is the pattern "none"); its source is
    ``signals.tasks``. Bin ids are dense, ordered by (style bits, task name).
    """
    n = len(signals)
    bits = np.zeros(n, dtype=np.int64)
    for k, col in enumerate(STYLE_COLUMNS):
        v = np.asarray(signals[col], dtype=np.float64)
        bits |= (np.nan_to_num(v, nan=0.0) > 0.5).astype(np.int64) << k
    _, task_code = np.unique(np.asarray(signals.tasks, dtype=str), return_inverse=True)
    key = bits * (int(task_code.max(initial=0)) + 1) + task_code
    _, bin_id = np.unique(key, return_inverse=True)
    return bin_id.reshape(-1)


def water_fill(sizes: np.ndarray, quota: int) -> np.ndarray:
    """Spread ``quota`` over bins smallest-first: each bin in turn takes ceil(left / bins left), capped at its
    size, and whatever a small bin cannot take is carried on to the larger ones. Equal sizes: lower id first.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros(len(sizes), dtype=np.int64)
    left = int(min(quota, sizes.sum()))
    order = np.argsort(sizes, kind="stable")
    for pos, b in enumerate(order):
        if left <= 0:
            break
        share = math.ceil(left / (len(order) - pos))
        take[b] = min(share, sizes[b])
        left -= int(take[b])
    return take


class MmSSR(Scorer):
    """mmSSR sampler: capability scores for quality, interaction styles for diversity.

    Reads ``cap_<capability>`` (judge rating 0-5, NaN = unparseable) for each chosen capability and the nine
    ``style_<style>`` labels (0/1); ``tasks`` is the source. Selection (:meth:`choose`), as in the paper:

    - round-robin over the chosen capabilities: each capability in turn gets ``ceil(left / capabilities left
      this round)`` of the budget still unspent, so a capability that runs short passes its shortfall on;
      rounds repeat until the budget is spent or no capability has candidates left;
    - within capability c: candidates are the samples not yet chosen with ``cap_c > thr`` (NaN never passes),
      sorted by ``cap_c`` descending (equal ratings: earlier pool record first);
    - the capability's share is spread over (style combination x source) bins smallest-bin-first
      (:func:`water_fill`) and each bin gives its best-rated candidates.

    No sample is chosen twice. Cost: one stable sort per capability plus O(N log N) per capability and round
    (at most one round per capability), no clustering, so it runs on millions of samples. When fewer than the
    budget have a rating above ``thr`` the selection is smaller than the budget (said in ``notes_``).

    ``score()`` (only for reports and for plain top-k use) is the ``reduce`` ("max" or "mean") of the chosen
    capabilities' ratings, ignoring NaN; a sample with no rating at all scores ``UNRATED_SCORE`` (-1).
    Higher = keep.
    """

    name = "mmssr"
    requires = CAP_COLUMNS + STYLE_COLUMNS
    paper = "mmSSR: Harvesting Rich, Scalable and Transferable Multi-Modal Data (papers/002)"
    summary = "judge capability ratings, round-robin over capabilities, spread over style x source bins"

    def __init__(self, *, capabilities=None, thr: float = 0.0, reduce: str = "max", random_state: int = 0):
        super().__init__(random_state=random_state)
        caps = CAPABILITIES if capabilities is None else tuple(capabilities)
        if isinstance(capabilities, str):
            caps = tuple(c.strip() for c in capabilities.split(",") if c.strip())
        unknown = [c for c in caps if c not in CAPABILITY_TEXT]
        if unknown or not caps:
            raise ValueError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        self.capabilities = caps
        self.thr = float(thr)
        self.reduce = reduce
        # Only the chosen capabilities are needed, so a run judged on a subset can still be used.
        self.requires = tuple(f"cap_{c}" for c in caps) + STYLE_COLUMNS

    def _ratings(self, signals: Signals) -> np.ndarray:
        return np.column_stack([np.asarray(signals[f"cap_{c}"], dtype=np.float64) for c in self.capabilities])

    def score(self, signals: Signals) -> np.ndarray:
        r = self._ratings(signals)
        rated = ~np.isnan(r)
        count = rated.sum(axis=1)
        if self.reduce == "max":
            agg = np.where(rated, r, -np.inf).max(axis=1)
        else:
            agg = np.where(rated, r, 0.0).sum(axis=1) / np.maximum(count, 1)
        out = np.where(count > 0, agg, UNRATED_SCORE)
        n_unrated = int((count == 0).sum())
        if n_unrated:
            self.notes_.append(f"mmssr: {n_unrated} samples have no parseable rating (scored {UNRATED_SCORE})")
        return out

    def choose(self, signals: Signals, scores: np.ndarray, n_keep: int) -> np.ndarray:
        n = len(signals)
        r = self._ratings(signals)
        index = np.asarray(signals.index)
        bins = style_bins(signals)
        n_bins = int(bins.max(initial=-1)) + 1
        # Per capability: rows above the threshold, best first (ties: pool order). Sorted once, filtered later.
        orders = []
        for c in range(r.shape[1]):
            valid = np.flatnonzero(r[:, c] > self.thr)  # NaN compares False
            orders.append(valid[np.lexsort((index[valid], -r[valid, c]))])
        chosen = np.zeros(n, dtype=bool)
        picked: list[np.ndarray] = []
        taken_by = np.zeros(len(orders), dtype=np.int64)
        active = [c for c in range(len(orders)) if len(orders[c])]
        left = int(n_keep)
        while left > 0 and active:
            still = []
            for pos, c in enumerate(active):
                if left <= 0:
                    still.append(c)
                    continue
                quota = math.ceil(left / (len(active) - pos))
                cand = orders[c][~chosen[orders[c]]]
                orders[c] = cand  # drop rows other capabilities took, for the next round
                if len(cand) == 0:
                    continue
                b = bins[cand]
                take = water_fill(np.bincount(b, minlength=n_bins), quota)
                # Rank of each candidate inside its bin, in score order (stable sort keeps that order).
                by_bin = np.argsort(b, kind="stable")
                starts = np.concatenate(([0], np.cumsum(np.bincount(b, minlength=n_bins))[:-1]))
                rank = np.empty(len(cand), dtype=np.int64)
                rank[by_bin] = np.arange(len(cand)) - starts[b[by_bin]]
                got = cand[rank < take[b]]
                chosen[got] = True
                picked.append(got)
                taken_by[c] += len(got)
                left -= len(got)
                if len(got) == len(cand):
                    continue  # exhausted: out of later rounds
                still.append(c)
            if len(still) == len(active) and left > 0:
                break  # cannot happen (a capability short of its quota is exhausted), but never loop forever
            active = still
        out = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        for c, k in zip(self.capabilities, taken_by):
            self.notes_.append(f"mmssr: {c}: {int(k)} samples")
        if len(out) < n_keep:
            self.notes_.append(
                f"mmssr: only {len(out)} samples have a rating above thr={self.thr:g} for the chosen capabilities; "
                f"kept {len(out)} of a budget of {n_keep}"
            )
        return out
