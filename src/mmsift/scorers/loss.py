"""Loss-based selection: rank samples by the proxy's answer loss."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._modes import check_mode, mode_score
from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class Loss(Scorer):
    """``loss_i`` = mean cross-entropy over the answer tokens of sample i; the score depends on ``mode``:

    - ``"high"`` (default): ``score = loss`` — keep what the proxy has not learnt yet (hard samples);
    - ``"low"``: ``score = -loss`` — keep the cleanest-looking samples (also what ``selfcheck`` does);
    - ``"mid"``: ``score = -|loss - median(loss)|`` — skip both the trivial and the likely-broken tails.

    Reads ``loss``. Records with a non-finite loss get -inf (listed in ``notes_``). Loss-based selection is a
    common baseline (e.g. the hard-example selection compared against in Marion et al. 2023).
    """

    name = "loss"
    requires = ("loss",)
    paper = "baseline (answer loss; Marion et al. 2023 compare loss/perplexity pruning)"
    summary = "answer loss: keep high, low or middle"

    def __init__(self, *, mode: str = "high", random_state: int = 0):
        super().__init__(random_state=random_state)
        self.mode = check_mode(mode)

    def value(self, loss: np.ndarray) -> np.ndarray:
        """The quantity ``mode`` ranks; subclasses transform the loss (perplexity: exp)."""
        return loss

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        loss = scalar(signals, "loss")
        bad = ~np.isfinite(loss)
        s = mode_score(self.value(np.where(bad, np.nan, loss)), self.mode)
        return exclude_nonfinite(s, bad, signals, self.notes_, self.name, "loss is not finite")
