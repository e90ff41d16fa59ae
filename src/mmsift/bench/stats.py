"""Intervals and paired comparisons for the bench, from per-item correctness of every training run.

A cell (method, budget) holds one run per seed pair (selection seed s, training seed s). Its ``score`` is the mean
over runs of the mean accuracy over the score columns. The 95% interval is a percentile bootstrap that resamples
both sources of noise at once: the test items (within each column, the same resampled items for every run, so
runs stay paired on items) and the seed pairs (with replacement). A paired comparison of two cells uses the same
resampled items and seed pairs for both, on the per-seed difference of scores; its verdict is ``better`` or
``worse`` when the interval excludes 0, ``undecided`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    mean: float
    low: float
    high: float

    def verdict(self) -> str:
        return "better" if self.low > 0 else "worse" if self.high < 0 else "undecided"

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _replicates(runs: list[dict[str, np.ndarray]], columns: tuple[str, ...], item_idx: dict, seed_idx) -> np.ndarray:
    """(B,) bootstrap replicates of the cell score; ``runs``: per run, column -> (n_items,) bool correctness."""
    per_run = []
    for run in runs:
        cols = [run[c][item_idx[c]].mean(axis=1) for c in columns]  # each (B,)
        per_run.append(np.mean(cols, axis=0))
    per_run = np.stack(per_run, axis=1)  # (B, n_runs)
    return np.take_along_axis(per_run, seed_idx, axis=1).mean(axis=1)


def _draws(n_items: dict[str, int], n_runs: int, n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    item_idx = {c: rng.integers(n, size=(n_boot, n)) for c, n in sorted(n_items.items())}
    seed_idx = rng.integers(n_runs, size=(n_boot, n_runs))
    return item_idx, seed_idx


def point_score(run: dict[str, np.ndarray], columns: tuple[str, ...]) -> float:
    return float(np.mean([run[c].mean() for c in columns]))


def cell_interval(runs: list[dict[str, np.ndarray]], columns: tuple[str, ...], *, n_boot: int = 2000,
                  seed: int = 0) -> Interval:
    """Mean score of a cell's runs with its 95% bootstrap interval (items and seed pairs resampled)."""
    mean = float(np.mean([point_score(r, columns) for r in runs]))
    item_idx, seed_idx = _draws({c: len(runs[0][c]) for c in columns}, len(runs), n_boot, seed)
    reps = _replicates(runs, columns, item_idx, seed_idx)
    return Interval(mean, float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5)))


def paired_difference(runs_a: list[dict[str, np.ndarray]], runs_b: list[dict[str, np.ndarray]],
                      columns: tuple[str, ...], *, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Score of ``a`` minus score of ``b``, paired by seed pair (run k of each) and by test item.

    The same bootstrap draws (items within each column, seed pairs) are applied to both cells.
    """
    mean, reps = paired_replicates(runs_a, runs_b, columns, n_boot=n_boot, seed=seed)
    return Interval(mean, float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5)))


def paired_replicates(runs_a, runs_b, columns: tuple[str, ...], *, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, np.ndarray]:
    """The paired difference ``a - b`` (mean over seed pairs) and its ``(n_boot,)`` bootstrap replicates."""
    if len(runs_a) != len(runs_b):
        raise ValueError(f"paired cells need the same seed pairs, got {len(runs_a)} and {len(runs_b)} runs")
    diffs = [point_score(a, columns) - point_score(b, columns) for a, b in zip(runs_a, runs_b)]
    item_idx, seed_idx = _draws({c: len(runs_a[0][c]) for c in columns}, len(runs_a), n_boot, seed)
    reps = _replicates(runs_a, columns, item_idx, seed_idx) - _replicates(runs_b, columns, item_idx, seed_idx)
    return float(np.mean(diffs)), reps
