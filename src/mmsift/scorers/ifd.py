"""IFD, the instruction-following difficulty of Cherry LLM (Li et al. 2023)."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals

_MAX_LOG = 700.0  # keeps exp() finite in float64


class IFD(Scorer):
    """``IFD_i = exp(loss_i) / exp(loss_noq_i) = exp(loss_i - loss_noq_i)``: the answer's perplexity with the
    question (and image) over its perplexity without them.

    Direction: higher = the instruction helps the model little = harder to follow = keep. ``drop_above_one=True``
    follows Cherry LLM's filter: IFD > 1 means the instruction does not help at all (instruction and answer look
    unrelated), so those samples get -inf (excluded; counted in ``notes_``). Reads ``loss`` and ``loss_noq``.
    Records with a non-finite loss get -inf too. Paper: Li et al. 2023, "From Quantity to Quality: Boosting LLM
    Performance with Self-Guided Data Selection for Instruction Tuning" (Cherry LLM).
    """

    name = "ifd"
    requires = ("loss", "loss_noq")
    paper = "Li et al. 2023, From Quantity to Quality (Cherry LLM, IFD)"
    summary = "instruction-following difficulty exp(loss - loss_noq), high first"

    def __init__(self, *, drop_above_one: bool = False, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.drop_above_one = drop_above_one

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        loss = scalar(signals, "loss")
        noq = scalar(signals, "loss_noq")
        bad = ~(np.isfinite(loss) & np.isfinite(noq))
        diff = np.where(bad, 0.0, loss - noq)
        ifd = np.exp(np.minimum(diff, _MAX_LOG))
        s = exclude_nonfinite(ifd, bad, signals, self.notes_, self.name, "loss or loss_noq is not finite")
        self.details_ = {"ifd": np.where(bad, np.nan, ifd)}
        if self.drop_above_one:
            s = exclude_nonfinite(s, ~bad & (ifd > 1.0), signals, self.notes_, self.name,
                                  "IFD > 1 (the instruction does not help; Cherry LLM filter)")
        return s
