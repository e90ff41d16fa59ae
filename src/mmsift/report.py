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


def write_scores(selection: Selection, ids, index, tasks, path: Path, *, meaning=None,
                 dropped_before: list | None = None, select_label: str = "select") -> Path:
    """Every scored record: id, pool index, task, score (and its shown value), kept, and the score components.

    ``dropped_before``: records a recipe's earlier stages removed, as (id, pool index, task, stage label); they
    get a row too, with no score, and every row says in ``dropped_by`` which stage dropped it (empty when kept,
    ``select_label`` for the final selection's drops). Written by suffix: ``.csv``, ``.parquet`` or ``.jsonl``
    (one object per line).
    """
    import pyarrow as pa

    path = Path(path)
    n = len(selection.scores)
    kept = np.zeros(n, dtype=bool)
    kept[selection.rows] = True
    columns = {"id": [str(i) for i in ids], "index": np.asarray(index, dtype=np.int64),
               "task": [str(t) for t in tasks], "score": selection.scores, "kept": kept}
    if meaning is not None and meaning.sign != 1.0:
        columns[meaning.label.replace(" ", "_")] = meaning.shown(selection.scores)
    for name, values in selection.details.items():
        values = np.asarray(values)
        if values.ndim == 1 and len(values) == n and name not in columns:
            columns[name] = values
    if dropped_before is not None:
        columns = _with_earlier_drops(columns, kept, dropped_before, select_label)
    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
    else:
        raise ValueError(f"--scores {path}: use .csv, .parquet or .jsonl")
    return path


def _with_earlier_drops(columns: dict, kept: np.ndarray, dropped: list, select_label: str) -> dict:
    """``columns`` (rows of the records that reached the selection) plus one row per earlier drop, and the
    ``dropped_by`` column; earlier drops have no score (NaN) and no components."""
    m = len(dropped)
    out = {}
    for name, values in columns.items():
        if name in ("id", "task"):
            out[name] = list(values) + [d[0 if name == "id" else 2] for d in dropped]
        elif name == "index":
            out[name] = np.concatenate([values, np.asarray([d[1] for d in dropped], dtype=np.int64)])
        elif name == "kept":
            out[name] = np.concatenate([values, np.zeros(m, dtype=bool)])
        else:
            values = np.asarray(values)
            if values.dtype.kind in "fiub":
                out[name] = np.concatenate([values.astype(np.float64), np.full(m, np.nan)])
            else:
                out[name] = list(values) + [None] * m
    out["dropped_by"] = ["" if k else select_label for k in kept] + [d[3] for d in dropped]
    return out


def ids_path_for(out: Path) -> Path:
    """``subset.json`` -> ``subset.ids.txt``: named after the subset, so two selections in one folder never clash."""
    out = Path(out)
    return out.with_name(out.stem + ".ids.txt")


def write_selection(
    selection: Selection,
    pool,
    out: Path,
    *,
    ids_path: Path | None = None,
    skipped: list | None = None,
    extra: dict | None = None,
    settings: dict | None = None,
) -> dict:
    """Write the subset (format from ``out``'s suffix), ``<stem>.ids.txt`` and ``<stem>.report.json``.

    ``settings``: what reproduces the selection (method, params, budget, seed, dedup, balance_tasks, run, pool,
    versions, command); stored under ``"settings"`` in the report. Returns the report.
    """
    from mmsift.data.io import write_subset
    from mmsift.explain import task_notes

    by_index = {r.index: r.id for r in pool.records}
    for i, rid in zip(selection.index, selection.ids):
        # Records are written by pool position: a pool edited since the probe would give other records than scored.
        if by_index.get(int(i)) != rid:
            raise ValueError(f"{pool.path} is not the pool this run was probed on: the run scored {rid!r} at position "
                             f"{int(i)}, the pool has {by_index.get(int(i))!r} there; pass the probed pool with --data")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_subset(pool, [int(i) for i in selection.index], out)
    ids_path = ids_path or ids_path_for(out)
    ids_path.write_text("".join(f"{i}\n" for i in selection.ids), encoding="utf-8")
    skipped = skipped or []
    report = {
        "method": selection.method,
        "n_pool_records": len(pool.records) + sum(1 for p in pool.problems if p.severity == "error"),
        "n_scored": selection.n_total,
        "n_kept": len(selection.rows),
        "kept_per_task": selection.kept_per_task,
        "total_per_task": selection.total_per_task,
        "task_notes": task_notes(selection.kept_per_task, selection.total_per_task),
        "dropped_by_dedup": selection.dropped_by_dedup,
        "skipped_records": len(skipped),
        "skipped_by_kind": dict(Counter(s.get("kind", "unknown") for s in skipped)),
        "notes": selection.notes,
        "subset": str(out),
        "ids": str(ids_path),
        **(extra or {}),
    }
    if settings is not None:
        report["settings"] = settings
    if len(selection.rows):
        kept = selection.scores[selection.rows]
        report["score_kept_min"], report["score_kept_max"] = float(kept.min()), float(kept.max())
    report_path = out.with_name(out.stem + ".report.json")
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    report["report"] = str(report_path)
    log.info("wrote %d records to %s", len(selection.rows), out)
    return report


def selection_settings(*, run, method: str, budget, seed: int, params: dict | None, dedup: str | None,
                       balance_tasks: bool, reference_run=None, pool=None, out=None) -> dict:
    """Everything that decides a selection, for its report: rerunning with these gives the same ids.

    ``command`` is the ``mmsift select`` command line that redoes it (into ``out``).
    """
    import shlex

    from mmsift.compat import installed_versions

    argv = ["mmsift", "select", str(run), "--method", method, "--budget", str(budget), "--seed", str(seed)]
    for key, value in (params or {}).items():
        argv += ["--param", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    argv += ["--dedup", dedup] if dedup else []
    argv += ["--balance-tasks"] if balance_tasks else []
    argv += ["--reference-run", str(reference_run)] if reference_run is not None else []
    argv += ["--data", str(pool)] if pool is not None else []
    argv += ["--out", str(out)] if out is not None else []

    return {
        "run": str(Path(run).resolve()),
        "pool": None if pool is None else str(pool),
        "method": method,
        "params": dict(params or {}),
        "budget": budget,
        "seed": seed,
        "dedup": dedup,
        "balance_tasks": balance_tasks,
        "reference_run": None if reference_run is None else str(reference_run),
        "versions": installed_versions(),
        "command": " ".join(shlex.quote(a) for a in argv),
    }
