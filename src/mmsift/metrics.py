"""Evaluation metrics shared by the select command and the bench."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive (``labels == 1``) scores higher than a
    random negative, ties counting one half (the Mann-Whitney U statistic divided by n_pos * n_neg).

    ``scores`` may hold +-inf (e.g. excluded rows) but not NaN; ``labels`` must be 0/1 (or bool) with both
    classes present. With selfcheck scores (higher = cleaner), pass ``labels = is_clean``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of the same length")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN values")
    yb = y.astype(bool)
    if not np.isin(y.astype(np.float64), (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    ranks = rankdata(s, method="average")
    u = ranks[yb].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
