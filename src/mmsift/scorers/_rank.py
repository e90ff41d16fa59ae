"""Shared helpers for scorers: reading scalar signals, excluding unusable rows, rank normalisation."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from mmsift.store import Signals


def scalar(signals: Signals, name: str) -> np.ndarray:
    """A scalar signal as float64 (N,)."""
    arr = np.asarray(signals[name])
    if arr.ndim != 1:
        raise ValueError(f"signal {name!r} must be a scalar (1-D) signal, got shape {arr.shape}")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"signal {name!r} is not numeric (dtype {arr.dtype})") from None


def exclude_nonfinite(scores: np.ndarray, bad: np.ndarray, signals: Signals, notes: list[str], method: str,
                      why: str) -> np.ndarray:
    """Give the rows in ``bad`` a score of -inf (never chosen before a usable row) and record it in ``notes``.

    Rows are never dropped silently: the note counts them and names the first few records.
    """
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        scores = np.where(bad, -np.inf, scores)
        ids = ", ".join(str(i) for i in signals.ids[bad][:5])
        notes.append(f"{method}: {int(bad.sum())} records excluded (score -inf) because {why} (e.g. {ids})")
    return scores


def rank01(x: np.ndarray) -> np.ndarray:
    """Rank-normalise to [0, 1): (average rank - 1) / n, so equal values get equal scores."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return x.copy()
    return (rankdata(x, method="average") - 1.0) / len(x)
