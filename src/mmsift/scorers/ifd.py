"""IFD, the instruction-following difficulty of Cherry LLM (Li et al. 2023)."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class IFD(Scorer):
    """``IFD_i = loss_i / loss_noq_i``: the mean answer-token cross-entropy with the question (and image) over the
    mean answer-token cross-entropy of the answer alone.

    Direction: higher = the instruction helps the model little = harder to follow = keep. ``drop_above_one``
    (default True) is Cherry LLM's filter: IFD > 1 means that the instruction makes the answer *harder* to
    predict (instruction and answer look unrelated), so those samples get -inf (excluded, counted in ``notes_``)
    before the highest ratios are kept. Reads ``loss`` and ``loss_noq``. Records with a non-finite loss, or a
    ``loss_noq`` <= 0 (ratio undefined), get -inf too.

    Paper and code agree (both divide mean losses and drop ratios above 1); mmsift follows them. The ratio is of
    mean cross-entropies, not of perplexities: ``exp(loss) / exp(loss_noq)`` orders samples by the *difference*
    of the losses, which is a different ranking. Paper: Li et al. 2023, "From Quantity to Quality: Boosting LLM
    Performance with Self-Guided Data Selection for Instruction Tuning" (Cherry LLM), arXiv:2308.12032.
    """

    name = "ifd"
    requires = ("loss", "loss_noq")
    paper = "Li et al. 2023, From Quantity to Quality (Cherry LLM, IFD), arXiv:2308.12032"
    summary = "instruction-following difficulty loss / loss_noq, high first, ratios above 1 dropped"

    def __init__(self, *, drop_above_one: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.drop_above_one = drop_above_one

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        loss = scalar(signals, "loss")
        noq = scalar(signals, "loss_noq")
        bad = ~(np.isfinite(loss) & np.isfinite(noq) & (noq > 0))
        ifd = np.where(bad, 0.0, loss) / np.where(bad, 1.0, noq)
        s = exclude_nonfinite(ifd, bad, signals, self.notes_, self.name,
                              "loss or loss_noq is not finite, or loss_noq <= 0")
        self.details_ = {"ifd": np.where(bad, np.nan, ifd)}
        if self.drop_above_one:
            s = exclude_nonfinite(s, ~bad & (ifd > 1.0), signals, self.notes_, self.name,
                                  "IFD > 1 (the instruction makes the answer harder to predict; Cherry LLM filter)")
        return s
