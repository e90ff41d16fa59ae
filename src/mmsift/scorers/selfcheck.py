"""Self-check cleaning ("Corrupted but Not Broken", Gou et al. 2025): low loss after fine-tuning on the pool = clean."""

from __future__ import annotations

import numpy as np

from mmsift.budget import apportion
from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class SelfCheck(Scorer):
    """``score_i = -(loss_i - loss_ref_i)`` when ``use_reference`` and the run has ``loss_ref``, else ``-loss_i``.

    What the paper states (Gou et al. 2025, arXiv:2502.12635): a model fine-tuned on a corrupted
    visual-instruction pool can itself tell clean samples from corrupted ones ("self-validation"), and
    post-training it on a small clean subset (about 1% of the data) restores most of the performance the
    corruption cost. What mmsift could read of it: the abstracts of v1 and v3 and short excerpts
    (/work/shared/papers holds the abstract only; this environment reaches no full text), so the paper's exact
    self-validation rule (which score, computed when during fine-tuning) could not be checked and is not claimed
    here. mmsift's reading: ``loss`` is the answer loss of the proxy fine-tuned on the pool (``mmsift warmup``); a
    sample it fits well (low loss) is likely clean.
    Where mmsift departs, and why: a proxy fine-tuned until its training loss is near 0 fits the wrong answers too
    (on a handwritten-digits pool with 20% wrong answers, a proxy that reads the digits but was trained to the
    end let selfcheck keep 9.3% of them at budget 0.8; docs/warmup.md), so ``mmsift warmup`` keeps the weights
    of the step with the lowest loss on held-out records (early stopping on records it never trains on, chosen
    without any truth labels), for the perception stage and the instruction tuning alike (4.8% kept on that
    pool, two seeds). Scores of those held-out records are out-of-sample (slightly higher on average than
    in-sample ones: a clean held-out record is a little more likely to be dropped). K-fold cross-fitting
    (every record scored by a proxy that never saw it) would remove that asymmetry at k times the warm-up. What mmsift adds: ``loss_ref``, the loss of the same samples *before* that fine-tuning
    (``mmsift select --reference-run``); subtracting it removes how hard a sample is in itself and keeps only what
    fine-tuning on the pool did to it.
    A proxy that does not read the images (image-shuffle test under 0.1, ``warmup.json``) can only find answers
    that do not fit the text: ``mmsift warmup`` (``--base auto``) then makes the proxy again from the pool's own
    images, and ``probe``/``select`` repeat the warm-up's warning when it still does not read them.

    Direction: higher = lower loss = likely clean = keep. Reads ``loss`` (and ``loss_ref`` when present).
    :meth:`quotas` (``per_task=True``, default) keeps each task's share of the pool, so ``--budget 0.01`` is the
    cleanest 1% *of every task*: a post-training subset that covers every task, ready for a second training stage.
    How to produce a self-check run:
      1. ``mmsift warmup POOL --images DIR --out MODEL`` — fine-tune the proxy on the pool itself (the whole pool
         less its 10% held-out records: a proxy trained on a slice would call its own training slice "clean");
      2. ``mmsift probe POOL --images DIR --model MODEL --out RUN`` — ``loss`` is that model's answer loss;
      3. optionally probe with the model *before* step 1 into REF_RUN and pass ``--reference-run REF_RUN`` to
         ``mmsift select``: its ``loss`` is read as ``loss_ref`` (or store ``loss_ref`` yourself, docs/byof.md);
      4. ``mmsift select RUN --method selfcheck --budget 0.01 --out clean.json`` — the cleanest 1% per task,
         the post-training set; ``--budget 0.9`` instead drops the 10% most likely corrupted.
         ``--truth-field`` (or :func:`mmsift.metrics.auroc`) reports how well the score separates clean from
         corrupted samples when labels are known.
    Records with a non-finite loss get -inf (listed in ``notes_``). Paper: Gou, Yang, Liu, Chen, Zeng, Hong, Li,
    Liu, Kwok & Zhang 2025, "Corrupted but Not Broken: Rethinking the Impact of Corrupted Data in Visual
    Instruction Tuning", arXiv:2502.12635.
    """

    name = "selfcheck"
    requires = ("loss",)
    optional = ("loss_ref",)
    paper = "Gou et al. 2025, Corrupted but Not Broken (self-validation), arXiv:2502.12635"
    summary = "low loss of a proxy fine-tuned on the pool = likely clean"

    def __init__(self, *, use_reference: bool = True, per_task: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.use_reference = use_reference
        self.per_task = per_task

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        loss = scalar(signals, "loss")
        value, what = loss, "loss"
        if self.use_reference and "loss_ref" in signals:
            value, what = loss - scalar(signals, "loss_ref"), "loss - loss_ref"
            self.notes_.append("selfcheck: scored by loss - loss_ref (change caused by fine-tuning on the pool)")
        bad = ~np.isfinite(value)
        s = -np.where(bad, 0.0, value)
        return exclude_nonfinite(s, bad, signals, self.notes_, self.name, f"{what} is not finite")

    def quotas(self, signals: Signals, scores: np.ndarray, n_keep: int) -> dict[str, int] | None:
        """Each task's share of ``n_keep`` in proportion to its size (largest remainder), capped at its number of
        scorable samples; None (one global ranking) with ``per_task=False``."""
        if not self.per_task:
            return None
        tasks, sizes = np.unique(np.asarray(signals.tasks, dtype=str), return_counts=True)
        usable = np.isfinite(scores)
        caps = [int((usable & (np.asarray(signals.tasks, dtype=str) == t)).sum()) for t in tasks]
        counts = apportion(sizes, n_keep, caps=caps)
        return {str(t): int(c) for t, c in zip(tasks, counts)}
