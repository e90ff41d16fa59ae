"""EL2N: the error-vector norm of the proxy's predictions (Paul et al. 2021)."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class EL2N(Scorer):
    """``score_i = el2n_i = mean_t ||softmax(logits_t) - onehot(y_t)||_2`` over the answer tokens of sample i.

    Direction: higher = harder = keep (``hardest=False`` keeps the easiest instead: ``score = -el2n``).
    Reads ``el2n`` (computed by the probe). Records whose ``el2n`` is NaN/inf (no answer tokens) get -inf and
    are listed in ``notes_``. Paper: Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet" (NeurIPS 2021);
    a score-only baseline in ARDS and DataTailor.
    """

    name = "el2n"
    requires = ("el2n",)
    paper = "Paul, Ganguli & Dziugaite 2021, Deep Learning on a Data Diet (EL2N), arXiv:2107.07075"
    summary = "hardest samples by error L2 norm"

    def __init__(self, *, hardest: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.hardest = hardest

    def score(self, signals: Signals) -> np.ndarray:
        self.notes_ = []
        v = scalar(signals, "el2n")
        s = v if self.hardest else -v
        return exclude_nonfinite(s, ~np.isfinite(v), signals, self.notes_, self.name, "el2n is not finite")
