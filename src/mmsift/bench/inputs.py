"""What a bench run judges: a pool, its images, evaluation items, and (optionally) which records are bad.

:func:`user_inputs` reads a user's pool and evaluation file (``mmsift bench --pool ... --eval ...``);
:func:`mmsift.bench.preset.prepare_preset` builds the bundled easy-vqa ones. :func:`read_truth` turns a truth
field (as ``mmsift select --truth-field`` reads it) into one label per record: ``"none"`` for a clean record,
else the defect's name (the field's value, or its ``defect`` / ``label`` entry when it is an object), or
``"bad"``. Copies name their original under ``dup_of`` when the field is an object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Defect names that mean "a copy of another record" (the preset's; a user's truth field may use them too).
DUPLICATES = ("duplicate", "near_duplicate")


@dataclass
class BenchInputs:
    pool_path: Path
    images: Path
    items: list  # mmsift.bench.evaluate.EvalItem
    eval_images: Path
    truth_field: str | None
    score_columns: tuple  # the columns the score averages
    eval_summary: str = ""


def user_inputs(cfg) -> BenchInputs:
    """A user's pool and evaluation file; every evaluated column is a score column."""
    from mmsift.bench.evalfile import EvalFileError, load_eval_file

    if cfg.eval is None:
        raise EvalFileError("--pool needs --eval: the file of questions the trained models are scored on")
    pool_path = Path(cfg.pool)
    if not pool_path.exists():
        raise FileNotFoundError(f"--pool {pool_path}: no such file")
    images = Path(cfg.images) if cfg.images else pool_path.parent
    eval_images = Path(cfg.eval_images) if cfg.eval_images else Path(cfg.eval).parent
    ev = load_eval_file(cfg.eval, eval_images, column_by=cfg.column_by, task_field=cfg.task_field)
    return BenchInputs(pool_path=pool_path, images=images, items=ev.items, eval_images=eval_images,
                       truth_field=cfg.truth_field, score_columns=tuple(ev.columns), eval_summary=ev.summary())


def read_truth(records, truth_field: str) -> list[dict]:
    """Per record: ``{"id", "defect", "dup_of"}`` from ``truth_field`` (dotted for nested fields)."""
    from mmsift.report import CLEAN_VALUES, field_value

    missing = object()
    out, seen = [], False
    for r in records:
        v = field_value(r.raw, truth_field, default=missing)
        seen = seen or v is not missing
        dup_of = None
        if isinstance(v, dict):
            dup_of = v.get("dup_of")
            v = v.get("defect", v.get("label"))
        v = None if v is missing else v
        clean = (str(v).lower() if isinstance(v, str) else v) in CLEAN_VALUES
        label = "none" if clean else (str(v) if isinstance(v, str) else "bad")
        out.append({"id": r.id, "defect": label, "dup_of": dup_of})
    if records and not seen:
        raise ValueError(f"--truth-field {truth_field!r}: no pool record has this field")
    return out


def corrupt_kinds(truth: list[dict]) -> list[str]:
    """Defect names present in ``truth`` other than clean and copies, sorted."""
    return sorted({t["defect"] for t in truth} - {"none"} - set(DUPLICATES))
