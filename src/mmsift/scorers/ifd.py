"""IFD, the instruction-following difficulty of Cherry LLM (Li et al. 2023)."""

from __future__ import annotations

import numpy as np

from mmsift.scorers._rank import exclude_nonfinite, scalar
from mmsift.scorers.base import Scorer
from mmsift.store import Signals

BUDGET_OF = ("left", "pool")


class IFD(Scorer):
    """``IFD_i = loss_i / loss_noq_i``: the mean answer-token cross-entropy with the question (and image) over the
    mean answer-token cross-entropy of the answer alone.

    Direction: higher = the instruction helps the model little = harder to follow = keep. ``drop_above_one``
    (default True) is Cherry LLM's filter: IFD > 1 means that the instruction makes the answer *harder* to
    predict (instruction and answer look unrelated), so those samples get -inf (excluded, counted in ``notes_``)
    before the highest ratios are kept. Reads ``loss`` and ``loss_noq``. Records with a non-finite loss, or a
    ``loss_noq`` <= 0 (ratio undefined), get -inf too.

    Budget. ``budget_of="left"`` (default) follows ``cherry_seletion/data_by_IFD.py``, the script Cherry LLM's
    README runs: its ``--sample_rate`` is a share of the rows *left* after those filters, ``int(rate x left)``.
    mmsift's selector hands the method ``n_keep`` = the budget resolved on the whole pool (N rows); :meth:`choose`
    reads it as the rate ``n_keep / N`` and keeps the top ``floor(n_keep x left / N)`` (at least 1), so a pool
    where IFD drops 20% keeps 20% fewer rows than the budget, as the script would; ``notes_`` says how many. For
    a fractional budget whose ``budget x N`` is not whole this can differ from ``int(budget x left)`` by one
    row. A budget of at least ``left`` rows keeps every row left: the selector caps the budget at the selectable
    rows before the method sees it, so a rate between left / N and 1 (where the script keeps ``int(rate x
    left)``) also keeps them all; ``notes_`` says so. ``budget_of="pool"`` keeps ``n_keep`` rows (mmsift's earlier rule, the same as the script's
    ``--sample_number`` for a count budget, and as ``select_from_ifd_json.py``, which takes its rate of the
    whole file): use it for a count budget, or to compare methods at equal subset sizes. With
    ``budget_of="left"`` the method picks its rows itself, so ``--balance-tasks`` does not apply.

    Paper and code agree on the ratio (both divide mean losses and drop ratios above 1); mmsift follows them. The
    ratio is of mean cross-entropies, not of perplexities: ``exp(loss) / exp(loss_noq)`` orders samples by the
    *difference* of the losses, which is a different ranking. Equal ratios go to the earlier record (the script's
    ascending sort of (ratio, index) keeps the later one; exact ties are rare). When ``int(rate x left)`` is 0
    the script's ``list[-0:]`` keeps every row; mmsift keeps one. Paper: Li et al. 2023, "From Quantity to
    Quality: Boosting LLM Performance with Self-Guided Data Selection for Instruction Tuning" (Cherry LLM),
    arXiv:2308.12032.
    """

    name = "ifd"
    requires = ("loss", "loss_noq")
    paper = "Li et al. 2023, From Quantity to Quality (Cherry LLM, IFD), arXiv:2308.12032"
    summary = "instruction-following difficulty loss / loss_noq, high first, ratios above 1 dropped"

    def __init__(self, *, drop_above_one: bool = True, budget_of: str = "left", random_state: int = 0):
        super().__init__(random_state=random_state)
        if budget_of not in BUDGET_OF:
            raise ValueError(f"budget_of must be one of {BUDGET_OF}, got {budget_of!r}")
        self.drop_above_one = drop_above_one
        self.budget_of = budget_of

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

    def choose(self, signals: Signals, scores: np.ndarray, n_keep: int) -> np.ndarray | None:
        if self.budget_of == "pool":
            return None
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        left = np.flatnonzero(np.isfinite(scores))
        if not len(left):
            return left
        order = np.lexsort((np.asarray(signals.index)[left], -scores[left]))
        if n_keep >= len(left):
            # the selector caps a budget at the selectable rows before calling choose: the rate asked for is
            # unknown, only that it is at least left / N
            self.notes_.append(f"ifd: the budget reached the {len(left)} rows left after the filters: kept them all")
            return left[order]
        keep = max(1, (int(n_keep) * len(left)) // n)
        self.notes_.append(f"ifd: budget read as the rate {n_keep}/{n} of the {len(left)} rows left after the "
                           f"filters (Cherry LLM's data_by_IFD.py): kept {keep}")
        return left[order[:keep]]
