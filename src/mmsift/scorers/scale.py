"""SCALE: single-modality quality and cross-modality alignment evaluation ("Better Reasoning with Less Data:
Enhancing VLMs Through Unified Modality Scoring", 2025, arXiv:2506.08429).

The judge (``mmsift judge --methods scale``) writes two captions per image (general, task-specific) and rates,
in text only against those captions, alignment, clarity, coherence and image clarity (0-5). Task rarity comes
from the task frequencies of the pool. What the paper states: these five criteria, captions as the bridge
between modalities, and that low-quality samples which help robustness should not all be discarded. How they are
combined into one score (weights, the rarity formula, the 10% reserve and its thresholds) is **mmsift's choice**,
not the paper's: mmsift had only the abstract and no public code to follow. Every such choice is a parameter.
"""

from __future__ import annotations

import numpy as np

from mmsift.scorers.base import Scorer
from mmsift.store import Signals

CRITERIA = ("alignment", "clarity", "coherence", "image_clarity")
COLUMNS = tuple(f"scale_{c}" for c in CRITERIA)
TASK_COLUMN = "scale_task"
# The vision-language task types the judge assigns (key: stored value, text: what the judge is shown).
TASK_TEXT = {
    "captioning": "image captioning",
    "general_vqa": "general visual question answering",
    "ocr": "text reading (OCR)",
    "grounding": "object localisation and grounding",
    "counting": "counting",
    "reasoning": "visual reasoning",
    "knowledge": "knowledge-based question answering",
    "text_only": "text-only conversation",
}
UNRATED_SCORE = -1.0


def task_rarity(tasks: np.ndarray) -> np.ndarray:
    """mmsift's rarity (the paper names task rarity but gives no formula):
    ``rarity_i = 5 · log(N / n_t) / log(N / n_min)`` with n_t the size of i's task and n_min the smallest task:
    5 for the rarest task, lower for frequent ones, 0 for a task that is the whole pool. With one task it is
    undefined (NaN) and left out of the combination."""
    _, inv, counts = np.unique(np.asarray(tasks, dtype=str), return_inverse=True, return_counts=True)
    n = len(inv)
    if len(counts) < 2:
        return np.full(n, np.nan)
    return 5.0 * np.log(n / counts[inv]) / np.log(n / counts.min())


class Scale(Scorer):
    """SCALE combined score and selection.

    Reads ``scale_alignment``, ``scale_clarity``, ``scale_coherence``, ``scale_image_clarity`` (judge ratings 0-5,
    NaN = no answer or not applicable, e.g. image clarity of a text-only record) and the task of each row:
    with ``task_from="judge"`` (default, the paper's task assignment) the judge's ``scale_task`` (rows without a
    parseable one fall back to their source), with ``task_from="source"`` the store's task/source column.

    ``score_i = Σ_k w_k x_ik / Σ_k w_k`` over the components k present for row i, the components being the four
    ratings and :func:`task_rarity`. A row with no rating at all scores ``UNRATED_SCORE`` (-1). Higher = keep.

    Selection (:meth:`choose`): a share ``reserve`` of the budget is kept for low-quality-but-useful samples: those
    whose conversation matches the image (alignment >= ``align_min``) while the image or the text is poor (image
    clarity or clarity <= ``low_max``); they are taken by alignment, then score. The rest of the budget, and
    whatever the reserve could not use, goes to the top scores of the others.

    mmsift's choices (not from the paper, which gives no formula): the weighted mean; the default weights
    (alignment 2 because the paper calls cross-modal alignment its central criterion, every other 1); the rarity
    formula of :func:`task_rarity`; ``reserve=0.1``, ``align_min=4``, ``low_max=2``. ``reserve=0`` turns the
    reserve off.
    """

    name = "scale"
    requires = COLUMNS
    paper = ("SCALE 2025, Better Reasoning with Less Data: Enhancing VLMs Through Unified Modality Scoring, "
             "arXiv:2506.08429")
    summary = "judge alignment/clarity/coherence/image clarity on captions + task rarity; reserve for robustness"

    def __init__(self, *, w_alignment: float = 2.0, w_clarity: float = 1.0, w_coherence: float = 1.0,
                 w_image_clarity: float = 1.0, w_rarity: float = 1.0, reserve: float = 0.1, align_min: float = 4.0,
                 low_max: float = 2.0, task_from: str = "judge", random_state: int = 0):
        super().__init__(random_state=random_state)
        if task_from not in ("judge", "source"):
            raise ValueError(f"task_from must be 'judge' or 'source', got {task_from!r}")
        self.task_from = task_from
        self.requires = COLUMNS + ((TASK_COLUMN,) if task_from == "judge" else ())
        self.weights = np.array([w_alignment, w_clarity, w_coherence, w_image_clarity, w_rarity], dtype=np.float64)
        if np.any(self.weights < 0) or self.weights.sum() <= 0:
            raise ValueError("weights must be non-negative and not all zero")
        if not 0.0 <= reserve <= 1.0:
            raise ValueError(f"reserve must be in [0, 1], got {reserve}")
        self.reserve = float(reserve)
        self.align_min = float(align_min)
        self.low_max = float(low_max)

    def _components(self, signals: Signals) -> np.ndarray:
        cols = [np.asarray(signals[c], dtype=np.float64) for c in COLUMNS]
        return np.column_stack(cols + [task_rarity(self.tasks(signals))])

    def tasks(self, signals: Signals) -> np.ndarray:
        source = np.asarray(signals.tasks, dtype=object)
        if self.task_from == "source":
            return source
        judged = np.asarray(signals[TASK_COLUMN], dtype=object)
        return np.where([t is None or t != t for t in judged], source, judged)  # t != t: NaN

    def score(self, signals: Signals) -> np.ndarray:
        x = self._components(signals)
        present = ~np.isnan(x)
        w = np.where(present, self.weights, 0.0)
        judged = present[:, :4].any(axis=1)
        total = w.sum(axis=1)
        mean = np.where(present, x, 0.0) @ self.weights / np.maximum(total, 1e-12)
        combined = np.where(judged & (total > 0), mean, UNRATED_SCORE)
        self.details_ = {"scale_rarity": x[:, 4], "scale_combined": combined}
        n_unrated = int((~judged).sum())
        if n_unrated:
            self.notes_.append(f"scale: {n_unrated} samples have no judge rating (scored {UNRATED_SCORE})")
        return combined

    def robust_mask(self, signals: Signals) -> np.ndarray:
        """Low-quality-but-useful rows: aligned, with a poor image or poor text (NaN never qualifies)."""
        align = np.asarray(signals["scale_alignment"], dtype=np.float64)
        img = np.asarray(signals["scale_image_clarity"], dtype=np.float64)
        clar = np.asarray(signals["scale_clarity"], dtype=np.float64)
        return (align >= self.align_min) & ((img <= self.low_max) | (clar <= self.low_max))

    def choose(self, signals: Signals, scores: np.ndarray, n_keep: int) -> np.ndarray:
        index = np.asarray(signals.index)
        robust = np.flatnonzero(self.robust_mask(signals))
        align = np.asarray(signals["scale_alignment"], dtype=np.float64)
        n_res = min(int(round(self.reserve * n_keep)), len(robust))
        picked = robust[np.lexsort((index[robust], -scores[robust], -align[robust]))[:n_res]]
        rest = np.setdiff1d(np.arange(len(scores)), picked, assume_unique=True)
        top = rest[np.lexsort((index[rest], -scores[rest]))[: n_keep - n_res]]
        self.notes_.append(f"scale: {n_res} of {n_keep} kept as low-quality-but-useful (aligned, poor image or "
                           f"text; {len(robust)} candidates)")
        return np.concatenate([picked, top])
