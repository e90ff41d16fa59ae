"""The scorer contract: a pure numpy function of stored signals, one score per sample, higher = keep."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mmsift.store import Signals


class Scorer:
    """Base class of every selection method.

    Subclasses set the class attributes, take only explicit keyword parameters in ``__init__`` (always including
    ``random_state``), and implement :meth:`score`. They never import torch or Ray.

    Optional hooks, for methods whose selection is more than "top-k by score":
    - :meth:`quotas` gives per-task counts (DataTailor's task budgets); the selector then takes the top of each task.
    - :meth:`choose` picks the rows itself (COINCIDE's per-cluster MMD picking, mmSSR's round-robin sampler).
    - :meth:`keep_mask` marks rows to keep when the method is used as a dedup step (``--dedup semdedup``).
    After :meth:`score`, ``notes_`` holds lines for the run's report (e.g. "used k-means micro-clusters") and
    ``details_`` optional per-sample arrays (e.g. DataTailor's I, U, R) written beside the scores.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    # Signals read when the run has them (e.g. selfcheck's ``loss_ref``); never demanded of the probe.
    optional: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, *, random_state: int = 0):
        self.random_state = random_state
        self.notes_: list[str] = []
        self.details_: dict[str, np.ndarray] = {}

    def score(self, signals: Signals) -> np.ndarray:
        raise NotImplementedError

    def quotas(self, signals: Signals, scores: np.ndarray, n_keep: int) -> dict[str, int] | None:
        return None

    def choose(self, signals: Signals, scores: np.ndarray, n_keep: int) -> np.ndarray | None:
        return None

    def keep_mask(self, signals: Signals) -> np.ndarray | None:
        return None

    def check_signals(self, signals: Signals) -> None:
        missing = [r for r in self.requires if r not in signals]
        if missing:
            raise KeyError(
                f"method {self.name!r} needs signals {missing}, which this run does not have; "
                f"probe with --methods {self.name} (or add them with mmsift.store.from_arrays)"
            )
