"""Bring your own features: build a signal store from a table file plus ``.npy`` vector files.

In Python with arrays already in memory, call :func:`mmsift.store.from_arrays` directly; this module covers the
common case of features computed elsewhere and saved to disk (see docs/byof.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmsift.store import SignalStore, StoreError, from_arrays

log = logging.getLogger(__name__)


def read_table(path: str | os.PathLike) -> pa.Table:
    """A Parquet (``.parquet``), CSV (``.csv``) or JSON-lines (``.jsonl``/``.json``) table."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    if suffix in (".jsonl", ".json"):
        import pyarrow.json as pjson

        return pjson.read_json(path)
    raise StoreError(f"{path}: unsupported table format {suffix!r} (use .parquet, .csv or .jsonl)")


def index_from_pool(ids, pool: str | os.PathLike) -> np.ndarray:
    """Each id's position in the pool file as mmsift reads it (``Record.index``), which is what ``mmsift select``
    uses to write the subset. An id that is not in the pool, or a pool id that appears twice, is an error."""
    from mmsift.data.io import read_pool

    positions: dict[str, int] = {}
    for rec in read_pool(pool).records:
        if rec.id in positions:
            raise StoreError(f"{pool}: id {rec.id!r} appears twice in the pool (records {positions[rec.id]} and "
                             f"{rec.index}); ids must be unique to match features to records")
        positions[rec.id] = rec.index
    missing = [str(i) for i in ids if str(i) not in positions]
    if missing:
        raise StoreError(f"{len(missing)} ids are not in the pool {pool} (e.g. {', '.join(missing[:5])})")
    return np.array([positions[str(i)] for i in ids], dtype=np.int64)


def from_files(
    out: str | os.PathLike,
    *,
    table: str | os.PathLike,
    vectors: dict[str, str | os.PathLike] | None = None,
    id_column: str = "id",
    task_column: str | None = None,
    index_column: str | None = None,
    columns: list[str] | None = None,
    pool: str | os.PathLike | None = None,
) -> SignalStore:
    """Write a run directory at ``out`` from a table of per-sample scalars and ``.npy`` vector files.

    ``table`` holds one row per sample: the id column, optionally a task/source column and a pool-position column,
    and scalar signals named as in ``mmsift methods`` (e.g. ``loss``, ``sv_entropy``, ``fmt``); ``columns`` picks
    which to keep (default: every other column). ``vectors`` maps a vector signal name (``last``, ``attn_pool``,
    ``img_mean``, ...) to a ``.npy`` file of shape (N, d) in the table's row order; it is memory-mapped and
    written as float16. ``pool`` (the LLaVA JSON/JSONL/Parquet file the features describe) matches every id to
    its record's position and is recorded in the manifest, so ``mmsift select RUN ... --out SUBSET`` writes the
    right records without ``--data``; it replaces ``index_column``. Every problem (duplicate or missing ids, an
    id not in the pool, a row-count mismatch, a non-numeric signal) is an error naming the id, column or file.
    """
    tab = read_table(table)
    for name in [id_column] + [c for c in (task_column, index_column) if c]:
        if name not in tab.column_names:
            raise StoreError(f"{table}: column {name!r} not found (columns: {', '.join(tab.column_names)})")
    ids = tab.column(id_column).to_pylist()
    missing = [i for i, v in enumerate(ids) if v is None or str(v) == ""]
    if missing:
        raise StoreError(f"{table}: {len(missing)} rows have no {id_column!r} (first at row {missing[0]})")
    ids = [str(v) for v in ids]
    seen: dict[str, int] = {}
    for row, v in enumerate(ids):
        if v in seen:
            raise StoreError(f"{table}: id {v!r} appears twice (rows {seen[v]} and {row})")
        seen[v] = row
    n = len(ids)
    reserved = {id_column, task_column, index_column}
    names = columns if columns is not None else [c for c in tab.column_names if c not in reserved]
    cols: dict[str, np.ndarray] = {}
    for name in names:
        if name not in tab.column_names:
            raise StoreError(f"{table}: column {name!r} not found")
        col = tab.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            cols[name] = np.asarray(col.to_pylist(), dtype=object)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            cols[name] = col.to_numpy(zero_copy_only=False).astype(np.float64) if col.null_count else col.to_numpy()
        else:
            raise StoreError(f"{table}: column {name!r} has type {col.type}; signals must be numbers or strings")
    for name, vpath in (vectors or {}).items():
        arr = np.load(vpath, mmap_mode="r")
        if arr.ndim != 2 or len(arr) != n:
            raise StoreError(f"{vpath}: vector signal {name!r} has shape {arr.shape}, expected ({n}, d)")
        cols[name] = arr
    tasks = [str(t) for t in tab.column(task_column).to_pylist()] if task_column else None
    index = tab.column(index_column).to_numpy() if index_column else None
    meta = {"source": "byof.from_files", "table": str(table)}
    if pool is not None:
        index = index_from_pool(ids, pool)
        meta["pool"] = str(Path(pool).resolve())
    log.info("byof: %d samples, signals %s", n, ", ".join(sorted(cols)))
    return from_arrays(out, ids=ids, columns=cols, tasks=tasks, index=index, meta=meta)
