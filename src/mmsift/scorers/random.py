"""Random selection: the baseline every paper compares against."""

from __future__ import annotations

import numpy as np

from mmsift.scorers.base import Scorer
from mmsift.store import Signals


class Random(Scorer):
    """Uniform random scores, ``score_i ~ U[0, 1)`` from ``random_state``; reads no signal.

    Direction: none (top-k of random scores is a uniform sample without replacement). Same seed, same subset.
    """

    name = "random"
    requires = ()
    paper = "baseline (uniform sampling)"
    summary = "uniform random sample"

    def score(self, signals: Signals) -> np.ndarray:
        return np.random.default_rng(self.random_state).random(len(signals))
