"""Self-check cleaning ("Corrupted but Not Broken", Gou et al. 2025): low loss after fine-tuning on the pool = clean."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class SelfCheck(Scorer):
    """``score_i = -(loss_i - loss_ref_i)`` when ``use_reference`` and the run has ``loss_ref``, else ``-loss_i``.

    ``loss`` must come from a proxy that was fine-tuned on the pool itself; a model trained on a corrupted pool
    still fits clean samples better than corrupted ones, so its answer loss separates them. ``loss_ref``
    (optional) is the loss of the same samples before that fine-tuning; subtracting it removes how hard a sample
    is in itself and keeps only what fine-tuning on the pool did to it.

    Direction: higher = lower loss = likely clean = keep. Reads ``loss`` (and ``loss_ref`` when present).
    How to produce a self-check run:
      1. ``mmsift warmup POOL --images DIR --out MODEL`` — fine-tune the proxy on the pool itself;
      2. ``mmsift probe POOL --images DIR --model MODEL --out RUN`` — ``loss`` is that model's answer loss;
      3. optionally probe with the model *before* step 1 into REF_RUN and pass ``--reference-run REF_RUN`` to
         ``mmsift select``: its ``loss`` is read as ``loss_ref`` (or store ``loss_ref`` yourself, docs/byof.md);
      4. ``mmsift select RUN --method selfcheck --budget 0.9`` keeps the cleanest 90%;
         :func:`mmsift.metrics.auroc` reports how well the score separates clean from corrupted samples when
         labels are known. The paper's post-training on the cleanest 1-5% is a training step, not part of scoring.
    Records with a non-finite loss get -inf (listed in ``notes_``). Paper: Gou et al. 2025, "Corrupted but Not
    Broken: Rethinking the Impact of Corrupted Data in Visual Instruction Tuning" (abstract only available).
    """

    name = "selfcheck"
    requires = ("loss",)
    optional = ("loss_ref",)
    paper = "Gou et al. 2025, Corrupted but Not Broken (self-validation), arXiv:2502.12635"
    summary = "low loss of a proxy fine-tuned on the pool = likely clean"

    def __init__(self, *, use_reference: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.use_reference = use_reference

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
