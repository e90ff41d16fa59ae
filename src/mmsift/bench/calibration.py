"""Calibration subsets chosen from the truth field: what a perfect and a perverse selector would keep.

- ``oracle``: drops every corrupted record and every copy (exact or near duplicate), keeps the pool's task shares
  (records per task in proportion to the whole pool), random among the clean originals of each task.
- ``anti-oracle``: corrupted records and copies first (in random order), then random others, same task shares.
- ``full-clean``: every clean original (no budget).

If the bench cannot tell ``oracle`` from ``random`` it cannot tell any method from random either; this is the
bench's own sensitivity check.
"""

from __future__ import annotations

import numpy as np

from mmsift.budget import apportion, resolve_budget

CALIBRATION = ("oracle", "anti-oracle")


def _labels(truth: list[dict]) -> np.ndarray:
    return np.array([t.get("defect", "none") for t in truth], dtype=object)


def full_clean(truth: list[dict]) -> np.ndarray:
    """Pool positions of every clean original."""
    return np.flatnonzero(_labels(truth) == "none")


def calibration_subset(name: str, truth: list[dict], tasks: list[str], budget, *, seed: int) -> np.ndarray:
    """Pool positions (sorted) of the ``oracle`` or ``anti-oracle`` subset at ``budget``."""
    if name not in CALIBRATION:
        raise ValueError(f"unknown calibration subset {name!r}; known: {', '.join(CALIBRATION)}")
    rng = np.random.default_rng(seed)
    bad = _labels(truth) != "none"  # any defect, copies included
    tasks_arr = np.asarray(tasks, dtype=object)
    names = sorted(set(tasks))
    n = resolve_budget(budget, len(truth))
    sizes = np.array([int((tasks_arr == t).sum()) for t in names])
    if name == "oracle":
        caps = np.array([int(((tasks_arr == t) & ~bad).sum()) for t in names])
    else:
        caps = sizes
    quota = apportion(sizes, n, caps=caps)
    kept: list[int] = []
    for t, q in zip(names, quota):
        members = np.flatnonzero(tasks_arr == t)
        members = members[rng.permutation(len(members))]
        good, worse = members[~bad[members]], members[bad[members]]
        order = good if name == "oracle" else np.concatenate([worse, good])
        kept.extend(order[: int(q)].tolist())
    return np.sort(np.asarray(kept, dtype=np.int64))
