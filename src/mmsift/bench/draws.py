"""Verdicts across pool draws: several ``mmsift bench`` runs of one recipe on different draws of the pool.

One bench run's intervals cover its test items and seed pairs, not the draw of the pool (and of its evaluation
items) it was given. Runs of the same grid with ``--seed 0``, ``1``, ``2`` are three such draws; this module
pools them. For every comparison (a method, ``oracle`` or ``full-clean`` against its reference) present in every
run, the estimate is the mean over draws of each draw's paired difference (over the seed pairs both cells share),
and the 95% interval is a two-level percentile bootstrap: the draws are resampled with replacement, and within
each draw its items and seed pairs (:func:`mmsift.bench.stats.paired_replicates`). With three draws the outer
level is coarse (a draw counts once, twice or three times); the interval is still wider than any single run's
whenever the draws disagree, which is the point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsift.bench.report import read_items, reference_of
from mmsift.bench.stats import Interval, paired_replicates


@dataclass
class DrawRun:
    """One bench run's per-item correctness: ``cells[(label, budget)][seed][column]`` -> bool per item."""

    path: Path
    cells: dict
    score_columns: tuple


def load_run(path) -> DrawRun:
    """Read ``items.npz`` and ``results.json`` of a finished bench run folder."""
    path = Path(path)
    items, results = path / "items.npz", path / "results.json"
    for f in (items, results):
        if not f.is_file():
            raise FileNotFoundError(f"{path}: no {f.name}; give folders of finished `mmsift bench` runs")
    cols = tuple(json.loads(results.read_text(encoding="utf-8"))["meta"]["score_columns"])
    return DrawRun(path=path, cells=read_items(items), score_columns=cols)


def comparisons(runs: list[DrawRun]) -> list[tuple[str, float, str]]:
    """(label, budget, reference) for every cell in every run that has its reference in every run."""
    common = set.intersection(*(set(r.cells) for r in runs))
    out = []
    for label, budget in sorted(common, key=lambda k: (k[1], k[0])):
        ref = reference_of(label)
        if label != ref and label != "full" and (ref, budget) in common:
            out.append((label, budget, ref))
    return out


def across_draws(runs: list[DrawRun], label: str, budget: float, ref: str, *, n_boot: int = 2000,
                 seed: int = 0) -> tuple[Interval, list[float]]:
    """``label - ref`` at ``budget`` pooled over the runs (draws): the interval and each draw's own estimate."""
    cols = runs[0].score_columns
    means, reps = [], []
    for k, run in enumerate(runs):
        a, b = run.cells[(label, budget)], run.cells[(ref, budget)]
        shared = sorted(set(a) & set(b))
        if not shared:
            raise ValueError(f"{run.path}: {label} and {ref} at {budget:g} share no seed pair")
        mean, rep = paired_replicates([a[s] for s in shared], [b[s] for s in shared], cols, n_boot=n_boot,
                                      seed=seed + k)
        means.append(mean)
        reps.append(rep)
    reps = np.stack(reps)  # (draws, n_boot)
    pick = np.random.default_rng(seed).integers(len(runs), size=(n_boot, len(runs)))
    pooled = reps[pick, np.arange(n_boot)[:, None]].mean(axis=1)
    return Interval(float(np.mean(means)), float(np.percentile(pooled, 2.5)),
                    float(np.percentile(pooled, 97.5))), means


def draws_report(paths, *, n_boot: int = 2000, seed: int = 0) -> str:
    """Markdown: every comparison pooled over the given bench run folders, with each draw's estimate."""
    runs = [load_run(p) for p in paths]
    if len(runs) < 2:
        raise ValueError("give at least two bench run folders (draws of the same grid)")
    cols = {r.score_columns for r in runs}
    if len(cols) != 1:
        raise ValueError(f"the runs score different columns: {sorted(cols)}; pool only runs of one grid")
    lines = [f"{len(runs)} draws: " + ", ".join(str(r.path) for r in runs), "",
             "| row | budget | vs | per draw | pooled (95%, draws resampled) | verdict |", "|---|---|---|---|---|---|"]
    for label, budget, ref in comparisons(runs):
        iv, means = across_draws(runs, label, budget, ref, n_boot=n_boot, seed=seed)
        lines.append(f"| {label} | {budget:g} | {ref} | {', '.join(f'{m:+.3f}' for m in means)} | {iv.text()} | "
                     f"{iv.verdict()} |")
    return "\n".join(lines)
