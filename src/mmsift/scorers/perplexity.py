"""Perplexity filtering of the proxy's answer loss (Marion et al. 2023; mmSSR's "PPL-mid")."""

from __future__ import annotations

import numpy as np

from mmsift.scorers.loss import Loss

# exp() overflows float64 above ~709.78; losses beyond this are clipped so the score stays finite.
_MAX_LOG = 700.0


class Perplexity(Loss):
    """``ppl_i = exp(loss_i)`` with loss the mean answer-token cross-entropy; the score depends on ``mode``:

    - ``"low"`` (default): ``score = -ppl`` — keep the samples the proxy finds most predictable;
    - ``"high"``: ``score = ppl`` — keep the most surprising ones;
    - ``"mid"``: ``score = -|loss - median(loss)|`` — keep those closest to the median, measured in loss space
      (log perplexity). Perplexity is a convex function of the loss, so distances in perplexity space stretch the
      high tail: at a 50% budget they kept loss percentiles 0.21-0.71 on a symmetric loss distribution instead of
      the middle 0.25-0.75. The median itself is the same in both spaces (exp is monotone).

    Reads ``loss``. Losses above 700 nats are clipped before ``exp`` (float64 overflow). Records with a
    non-finite loss get -inf (listed in ``notes_``). Paper: Marion et al. 2023, "When Less is More:
    Investigating Data Pruning for Pretraining LLMs at Scale"; PPL-mid as reported by mmSSR.
    """

    name = "perplexity"
    requires = ("loss",)
    paper = "Marion et al. 2023, When Less is More (perplexity pruning), arXiv:2309.04564"
    summary = "perplexity exp(loss): keep low, high or middle"

    def __init__(self, *, mode: str = "low", random_state: int = 0):
        super().__init__(mode=mode, random_state=random_state)

    def value(self, loss: np.ndarray) -> np.ndarray:
        if self.mode == "mid":
            return loss  # distance to the median in loss space (see the class docstring)
        return np.exp(np.minimum(loss, _MAX_LOG))
