"""Which task (source group) a record belongs to: the unit of per-task quotas in the selector."""

from __future__ import annotations

from mmsift.data.records import Record

DEFAULT_TASK = "all"


def task_of(record: Record, task_field: str | None = None) -> str:
    """The record's task.

    1. ``record.raw[task_field]`` as a string, when ``task_field`` is given and the record has a non-empty value;
    2. else the top folder of the first image path (``coco/train2017/x.jpg`` -> ``coco``); a bare file name has
       no folder and gives ``"all"``;
    3. else (text-only record) ``"all"``.
    """
    if task_field is not None:
        value = record.raw.get(task_field)
        if value is not None and str(value).strip():
            return str(value)
    if record.images:
        # Backslashes too, so that Windows-made pools group the same way.
        parts = [p for p in record.images[0].replace("\\", "/").split("/") if p not in ("", ".")]
        if len(parts) > 1:
            return parts[0]
    return DEFAULT_TASK
