"""Length baseline: prefer longer conversations."""

from __future__ import annotations

import numpy as np

from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class Length(Scorer):
    """``score_i = n_tokens_i`` (text tokens of the whole conversation as the proxy's tokenizer counts them).

    Direction: higher = longer = keep (``longest=False`` flips it). Reads ``n_tokens``. Baseline used in the
    DataTailor and mmSSR comparisons.
    """

    name = "length"
    requires = ("n_tokens",)
    paper = "baseline (conversation length)"
    summary = "longest conversations first"

    def __init__(self, *, longest: bool = True, random_state: int = 0):
        super().__init__(random_state=random_state)
        self.longest = longest

    def score(self, signals: Signals) -> np.ndarray:
        n = np.asarray(signals["n_tokens"], dtype=np.float64)
        return n if self.longest else -n
