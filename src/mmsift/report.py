"""Writing a selection out: the subset in the pool's own format, its ids, and a report of what was kept and why."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from mmsift.select import Selection

log = logging.getLogger(__name__)

# Values of a truth field that mean "this record is clean".
CLEAN_VALUES = {None, False, 0, "", "none", "clean", "ok", "false", "0"}


def field_value(raw: dict, dotted: str, default=None):
    """``raw["a"]["b"]`` for ``dotted="a.b"``; ``default`` when any level is missing."""
    value = raw
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def truth_labels(records_by_index: dict, index: np.ndarray, truth_field: str) -> np.ndarray:
    """1 where the record's truth field marks it as defective, else 0 (see CLEAN_VALUES)."""
    labels = np.zeros(len(index), dtype=np.int64)
    missing = object()
    seen = False
    for k, i in enumerate(index):
        v = field_value(records_by_index[int(i)].raw, truth_field, default=missing)
        seen = seen or v is not missing
        v = None if v is missing else v
        if isinstance(v, dict):
            v = v.get("defect", v.get("label"))
        labels[k] = 0 if (str(v).lower() if isinstance(v, str) else v) in CLEAN_VALUES else 1
    if len(index) and not seen:
        raise ValueError(f"--truth-field {truth_field!r}: no scored record has this field")
    return labels


def truth_summary(selection: Selection, signal_index: np.ndarray, labels: np.ndarray) -> dict:
    """AUROC of the score for telling flagged records from clean ones, and the flagged share kept vs pool."""
    from mmsift.metrics import auroc

    kept = np.zeros(len(labels), dtype=bool)
    kept[selection.rows] = True
    out = {
        "flagged_in_pool": int(labels.sum()),
        "flagged_kept": int(labels[kept].sum()),
        "flagged_share_pool": float(labels.mean()) if len(labels) else 0.0,
        "flagged_share_kept": float(labels[kept].mean()) if kept.any() else 0.0,
    }
    if 0 < labels.sum() < len(labels):
        # Higher score = keep, so a good cleaner gives flagged records low scores: AUROC of -score.
        out["auroc_flagged_low_score"] = float(auroc(-selection.scores, labels))
    return out


def write_selection(
    selection: Selection,
    pool,
    out: Path,
    *,
    ids_path: Path | None = None,
    skipped: list | None = None,
    extra: dict | None = None,
) -> dict:
    """Write the subset (same format as ``out``'s suffix), ``ids.txt`` and ``<out>.report.json``; return the report."""
    from mmsift.data.io import write_subset

    by_index = {r.index: r.id for r in pool.records}
    for i, rid in zip(selection.index, selection.ids):
        # Records are written by pool position: a pool edited since the probe would give other records than scored.
        if by_index.get(int(i)) != rid:
            raise ValueError(f"{pool.path} is not the pool this run was probed on: the run scored {rid!r} at position "
                             f"{int(i)}, the pool has {by_index.get(int(i))!r} there; pass the probed pool with --data")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_subset(pool, [int(i) for i in selection.index], out)
    ids_path = ids_path or out.parent / "ids.txt"
    ids_path.write_text("".join(f"{i}\n" for i in selection.ids), encoding="utf-8")
    skipped = skipped or []
    report = {
        "method": selection.method,
        "n_pool_records": len(pool.records) + sum(1 for p in pool.problems if p.severity == "error"),
        "n_scored": selection.n_total,
        "n_kept": len(selection.rows),
        "kept_per_task": selection.kept_per_task,
        "total_per_task": selection.total_per_task,
        "dropped_by_dedup": selection.dropped_by_dedup,
        "skipped_records": len(skipped),
        "skipped_by_kind": dict(Counter(s.get("kind", "unknown") for s in skipped)),
        "notes": selection.notes,
        "subset": str(out),
        "ids": str(ids_path),
        **(extra or {}),
    }
    if len(selection.rows):
        kept = selection.scores[selection.rows]
        report["score_kept_min"], report["score_kept_max"] = float(kept.min()), float(kept.max())
    report_path = out.with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report["report"] = str(report_path)
    log.info("wrote %d records to %s", len(selection.rows), out)
    return report
