"""The selector: turns one score per sample into the ids to keep, under a budget and optional per-task quotas.

Deterministic: ties are broken by pool order (a stable sort), and every random choice comes from ``seed``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mmsift.budget import apportion, resolve_budget
from mmsift.scorers import make_scorer
from mmsift.scorers.base import Scorer
from mmsift.store import Signals, SignalStore

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """What the selector chose. ``rows`` are store rows in pool order; ``scores`` covers every store row."""

    method: str
    rows: np.ndarray
    ids: list[str]
    index: np.ndarray
    scores: np.ndarray
    n_total: int
    n_keep: int
    kept_per_task: dict[str, int]
    total_per_task: dict[str, int]
    dropped_by_dedup: int = 0
    notes: list[str] = field(default_factory=list)
    details: dict[str, np.ndarray] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        kept = self.scores[self.rows] if len(self.rows) else np.zeros(0)
        lines = [f"method {self.method}: kept {len(self.rows)} of {self.n_total} samples"]
        if len(kept):
            finite = self.scores[np.isfinite(self.scores)]
            lines.append(
                f"score range kept [{kept.min():.4g}, {kept.max():.4g}] of all [{finite.min():.4g}, {finite.max():.4g}]"
            )
        if self.dropped_by_dedup:
            lines.append(f"dedup removed {self.dropped_by_dedup} near-duplicates before selection")
        for task in sorted(self.total_per_task):
            lines.append(f"  {task}: kept {self.kept_per_task.get(task, 0)} of {self.total_per_task[task]}")
        lines.extend(self.notes)
        return lines


def _top_k(rows: np.ndarray, scores: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best of ``rows`` by score; equal scores go to the earlier record in the pool."""
    if k <= 0 or len(rows) == 0:
        return rows[:0]
    order = np.lexsort((index[rows], -scores[rows]))
    return rows[order[:k]]


def select_rows(
    signals: Signals,
    scorer: Scorer,
    budget: float | int,
    *,
    dedup: Scorer | None = None,
    balance_tasks: bool = False,
) -> Selection:
    """Score every row with ``scorer`` and keep ``budget`` of them.

    ``dedup`` (a scorer with ``keep_mask``, e.g. SemDeDup) removes near-duplicates first; the method's own
    allocation (:meth:`Scorer.quotas` / :meth:`Scorer.choose`) then runs on the rows dedup kept. ``balance_tasks``
    keeps each task's share of the pool when the method defines no quotas of its own.
    """
    n = len(signals)
    n_keep = resolve_budget(budget, n)
    scorer.check_signals(signals)
    scores = np.asarray(scorer.score(signals), dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"method {scorer.name!r} returned {scores.shape} scores for {n} samples")
    if np.isnan(scores).any():
        bad = signals.ids[np.isnan(scores)][:5]
        raise ValueError(f"method {scorer.name!r} gave NaN scores (e.g. for records {list(bad)})")

    candidates = np.arange(n)
    dropped = 0
    dedup_notes: list[str] = []
    if dedup is not None:
        dedup.check_signals(signals)
        mask = dedup.keep_mask(signals)
        if mask is None:
            raise ValueError(f"method {dedup.name!r} cannot be used as a dedup step")
        candidates = np.flatnonzero(mask)
        dropped = n - len(candidates)
        dedup_notes = list(dedup.notes_)
    # -inf marks rows a method excludes on purpose (e.g. ARDS's evaluation items): never chosen, even when the
    # budget is larger than what is left.
    excluded = np.isneginf(scores[candidates])
    if excluded.any():
        candidates = candidates[~excluded]
    if n_keep > len(candidates):
        dedup_notes.append(f"budget {n_keep} is more than the {len(candidates)} selectable samples: kept them all")
        n_keep = len(candidates)

    details = dict(scorer.details_)  # per-sample arrays of the full table (choose() may rescore a subset)
    # The method's own allocation (quotas, choose) runs on what is left after dedup: with --dedup the method sees
    # the deduplicated table, so DataTailor keeps its task budgets, COINCIDE its cluster shares, mmSSR its
    # round-robin and SCALE its reserve.
    if dedup is None:
        view, view_scores, back = signals, scores, None
    else:
        back = np.flatnonzero(mask)
        view, view_scores = signals.take(back), scores[back]
    chosen = scorer.choose(view, view_scores, n_keep)
    if chosen is not None and back is not None:
        chosen = back[np.asarray(chosen, dtype=np.int64)]
    if chosen is None:
        quotas = scorer.quotas(view, view_scores, n_keep)
        if quotas is None and balance_tasks:
            tasks, counts = np.unique(signals.tasks[candidates], return_counts=True)
            quotas = dict(zip(tasks.tolist(), apportion(counts, n_keep, caps=counts).tolist()))
        if quotas is None:
            chosen = _top_k(candidates, scores, signals.index, n_keep)
        else:
            parts = []
            for task, q in quotas.items():
                rows = candidates[signals.tasks[candidates] == task]
                parts.append(_top_k(rows, scores, signals.index, int(q)))
            chosen = np.concatenate(parts) if parts else candidates[:0]
    chosen = np.asarray(chosen, dtype=np.int64)
    if len(np.unique(chosen)) != len(chosen):
        raise ValueError(f"method {scorer.name!r} chose a row twice")
    if len(chosen) > n_keep:
        raise ValueError(f"method {scorer.name!r} chose {len(chosen)} rows for a budget of {n_keep}")
    chosen = chosen[np.argsort(signals.index[chosen], kind="stable")]
    # Read notes last: quotas() and choose() add their own (e.g. mmSSR's per-capability counts).
    notes = list(scorer.notes_) + dedup_notes
    return Selection(
        method=scorer.name,
        rows=chosen,
        ids=[str(i) for i in signals.ids[chosen]],
        index=np.asarray(signals.index[chosen]),
        scores=scores,
        n_total=n,
        n_keep=n_keep,
        kept_per_task=dict(Counter(str(t) for t in signals.tasks[chosen])),
        total_per_task=dict(Counter(str(t) for t in signals.tasks)),
        dropped_by_dedup=dropped,
        notes=notes,
        details=details,
    )


def select_run(
    run: str,
    method: str,
    budget: float | int,
    *,
    seed: int = 0,
    params: dict | None = None,
    dedup: str | None = None,
    balance_tasks: bool = False,
    reference_run: str | None = None,
) -> Selection:
    """Open a run directory, select with ``method`` and return the :class:`Selection` (writes nothing).

    ``reference_run``: another run of the same pool (e.g. probed with the proxy *before* fine-tuning, for
    selfcheck); its ``loss`` is added as ``loss_ref``, matched by record id.
    """
    store = SignalStore(run)
    if len(store) == 0:
        n_skipped = store.manifest.get("n_skipped", "?")
        raise ValueError(f"{run} holds no probed record ({n_skipped} skipped; see its manifest.json): "
                         "nothing to select from; fix what the probe reported and probe again")
    scorer = make_scorer(method, params, random_state=seed)
    dedup_scorer = make_scorer(dedup, None, random_state=seed) if dedup else None
    needed = set(scorer.requires) | (set(dedup_scorer.requires) if dedup_scorer else set())
    available = set(store.signal_names)
    needed |= set(scorer.optional) & available
    signals = store.load(sorted(needed))
    if reference_run is not None:
        signals.columns["loss_ref"] = _reference_loss(signals, SignalStore(reference_run))
    return select_rows(signals, scorer, budget, dedup=dedup_scorer, balance_tasks=balance_tasks)


def _reference_loss(signals: Signals, ref: SignalStore) -> np.ndarray:
    """The reference run's ``loss`` in ``signals``' row order; every record must be in the reference run."""
    ref_signals = ref.load(["loss"])
    position = {str(i): k for k, i in enumerate(ref_signals.ids)}
    missing = [str(i) for i in signals.ids if str(i) not in position]
    if missing:
        raise ValueError(f"reference run {ref.root} lacks {len(missing)} of this run's records (e.g. {missing[:3]})")
    rows = np.fromiter((position[str(i)] for i in signals.ids), dtype=np.int64, count=len(signals))
    return np.asarray(ref_signals["loss"], dtype=np.float64)[rows]
