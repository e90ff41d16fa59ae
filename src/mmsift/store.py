"""The signal store: one run directory holding every per-sample signal the probe computed.

Layout of a run directory::

    manifest.json              model, layer, signal names/kinds/dims, counts, skipped records, mmsift version
    signals.parquet            scalar signals, one row per sample, plus ``id``, ``index`` and ``task``
    vec_<name>.npy             float16 (N, d) arrays in the same row order, memory-mapped on read
    tokens.parquet             per-token signal ``token_loss`` (when asked for): one row per answer token, see
                               :class:`TokenTable`
    shards/shard-00003.*       the probe's partial output; ``shard-00003.done`` marks a finished shard

Scalars live in Parquet and vectors in ``.npy`` so that a million-sample store can be opened without reading
the vectors into memory. Users with their own features build a store with :func:`from_arrays`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmsift.version import __version__

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCALARS = "signals.parquet"
SHARDS = "shards"
# Columns every store carries; they are not signals.
KEY_COLUMNS = ("id", "index", "task")
TOKENS = "tokens.parquet"
TOKEN_SIGNAL = "token_loss"


class StoreError(ValueError):
    """A run directory is missing, incomplete or inconsistent."""


@dataclass
class Signals:
    """Signals of N samples, in store row order: what every scorer reads.

    ``ids`` are the records' ids, ``index`` their positions in the pool, ``tasks`` their task/source group.
    ``columns`` maps a signal name to a 1-D array (scalar signal) or a 2-D (N, d) array (vector signal).
    """

    ids: np.ndarray
    index: np.ndarray
    tasks: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in {"index": self.index, "tasks": self.tasks, **self.columns}.items():
            if len(arr) != n:
                raise StoreError(f"signal {name!r} has {len(arr)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(
                f"signal {name!r} is not in this store (it has: {', '.join(sorted(self.columns)) or 'none'})"
            ) from None

    def take(self, rows: np.ndarray) -> "Signals":
        """A new Signals holding only ``rows`` (positions, in the given order)."""
        rows = np.asarray(rows)
        return Signals(
            ids=self.ids[rows],
            index=self.index[rows],
            tasks=self.tasks[rows],
            columns={k: np.asarray(v[rows]) for k, v in self.columns.items()},
        )


@dataclass
class TokenTable:
    """The per-token signal ``token_loss``: one entry per answer token, grouped by store row, in token order.

    ``row``: the store row (int32, non-decreasing); ``turn``: the index of the token's assistant turn in the
    record's turns, -1 for a token with no character of the record's text (the end-of-turn marker the chat
    template writes); ``start``/``end``: the token's characters in that turn's text (-1 when ``turn`` is -1);
    ``loss``: the token's cross-entropy (float32). A row without answer tokens, or whose tokens could not be
    mapped to characters, has no entries. Memory: 20 bytes per answer token, nothing per hidden state.
    """

    row: np.ndarray
    turn: np.ndarray
    start: np.ndarray
    end: np.ndarray
    loss: np.ndarray

    COLUMNS = ("row", "turn", "start", "end", "loss")

    def __post_init__(self) -> None:
        for name in self.COLUMNS:
            dtype = np.float32 if name == "loss" else np.int32
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        lengths = {len(getattr(self, name)) for name in self.COLUMNS}
        if len(lengths) != 1:
            raise StoreError(f"token columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def empty(cls) -> "TokenTable":
        return cls(*(np.zeros(0) for _ in cls.COLUMNS))

    @classmethod
    def concat(cls, tables: list["TokenTable"], row_offsets) -> "TokenTable":
        """Tables of consecutive row blocks (shards) as one, each block's rows shifted by its offset."""
        if not tables:
            return cls.empty()
        parts = {name: [getattr(t, name) for t in tables] for name in cls.COLUMNS}
        parts["row"] = [t.row + int(off) for t, off in zip(tables, row_offsets)]
        return cls(**{name: np.concatenate(v) for name, v in parts.items()})

    def check(self, n_rows: int) -> None:
        if len(self) and (self.row.min() < 0 or self.row.max() >= n_rows or np.any(np.diff(self.row) < 0)):
            raise StoreError(f"token rows must be non-decreasing store rows in 0..{n_rows - 1}")

    def offsets(self, n_rows: int) -> np.ndarray:
        """(n_rows + 1,) int64: the tokens of row r are ``offsets[r]:offsets[r + 1]``."""
        return np.searchsorted(self.row, np.arange(n_rows + 1), side="left").astype(np.int64)

    def to_arrow(self) -> pa.Table:
        return pa.table({name: pa.array(getattr(self, name)) for name in self.COLUMNS})

    @classmethod
    def read(cls, path: Path) -> "TokenTable":
        table = pq.read_table(path)
        return cls(**{name: table.column(name).to_numpy() for name in cls.COLUMNS})


def _vector_file(root: Path, name: str) -> Path:
    return root / f"vec_{name}.npy"


def _check_name(name: str) -> None:
    if not name.replace("_", "").isalnum():
        raise StoreError(f"signal name {name!r} must be letters, digits and underscores")


def _split(columns: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    scalars, vectors = {}, {}
    for name, arr in columns.items():
        _check_name(name)
        arr = np.asarray(arr)
        if arr.ndim == 1:
            scalars[name] = arr
        elif arr.ndim == 2:
            vectors[name] = arr
        else:
            raise StoreError(f"signal {name!r} must be 1-D or 2-D, got shape {arr.shape}")
    return scalars, vectors


def _table(ids, index, tasks, scalars: dict[str, np.ndarray]) -> pa.Table:
    data = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "index": pa.array(np.asarray(index, dtype=np.int64)),
        "task": pa.array([str(t) for t in tasks], pa.string()),
    }
    for name, arr in scalars.items():
        if name in KEY_COLUMNS:
            raise StoreError(f"signal name {name!r} is reserved")
        data[name] = pa.array(arr)
    return pa.table(data)


def _signal_spec(scalars: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> dict[str, dict]:
    spec = {name: {"kind": "scalar", "dtype": str(np.asarray(a).dtype)} for name, a in scalars.items()}
    spec.update({name: {"kind": "vector", "dim": int(a.shape[1]), "dtype": "float16"} for name, a in vectors.items()})
    return spec


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_store(
    root: str | os.PathLike,
    *,
    ids,
    index,
    tasks,
    columns: dict[str, np.ndarray],
    meta: dict | None = None,
    tokens: "TokenTable | None" = None,
) -> "SignalStore":
    """Write a complete store in one go (used by :func:`from_arrays` and by the probe's final merge).

    ``tokens``: the per-token losses (:class:`TokenTable`, rows of this store), written to ``tokens.parquet``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scalars, vectors = _split(columns)
    n = len(ids)
    for name, arr in {**scalars, **vectors}.items():
        if len(arr) != n:
            raise StoreError(f"signal {name!r} has {len(arr)} rows, expected {n}")
    pq.write_table(_table(ids, index, tasks, scalars), root / SCALARS)
    for name, arr in vectors.items():
        np.save(_vector_file(root, name), np.asarray(arr, dtype=np.float16))
    # A store rewritten without tokens must not keep those of an earlier run in the same folder.
    (root / TOKENS).unlink(missing_ok=True)
    if tokens is not None:
        tokens.check(n)
        pq.write_table(tokens.to_arrow(), root / TOKENS)
    manifest = {
        "mmsift_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "count": n,
        "signals": _signal_spec(scalars, vectors),
        **(meta or {}),
    }
    if tokens is not None:
        manifest["tokens"] = {"signal": TOKEN_SIGNAL, "file": TOKENS, "n_tokens": len(tokens),
                              "n_rows_with_tokens": int(len(np.unique(tokens.row)))}
    _write_json_atomic(root / MANIFEST, manifest)
    return SignalStore(root)


def from_arrays(
    root: str | os.PathLike,
    *,
    ids,
    columns: dict[str, np.ndarray],
    tasks=None,
    index=None,
    meta: dict | None = None,
) -> "SignalStore":
    """Bring your own features: build a run directory from arrays you computed elsewhere.

    ``columns`` maps a signal name (see ``mmsift methods`` for the names each method reads) to a 1-D array of
    N values or a 2-D (N, d) array. ``tasks`` defaults to one group, ``index`` to 0..N-1 (pool order).
    """
    n = len(ids)
    if len(set(map(str, ids))) != n:
        raise StoreError("ids must be unique")
    tasks = np.full(n, "all", dtype=object) if tasks is None else np.asarray(tasks, dtype=object)
    index = np.arange(n) if index is None else np.asarray(index)
    return write_store(root, ids=ids, index=index, tasks=tasks, columns=columns,
                       meta={"source": "from_arrays", **(meta or {})})


class SignalStore:
    """A finished run directory, opened for reading."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.is_file():
            raise StoreError(f"{self.root} is not a finished mmsift run: {MANIFEST} is missing")
        self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if not (self.root / SCALARS).is_file():
            raise StoreError(f"{self.root}: {SCALARS} is missing")

    @property
    def signal_names(self) -> list[str]:
        return sorted(self.manifest.get("signals", {}))

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def has_tokens(self) -> bool:
        return "tokens" in self.manifest and (self.root / TOKENS).is_file()

    def load_tokens(self) -> TokenTable:
        """The per-token losses (``token_loss``) of this run, rows in store order."""
        if not self.has_tokens:
            raise StoreError(f"{self.root} has no per-token losses: probe the pool again with --signals {TOKEN_SIGNAL}")
        return TokenTable.read(self.root / TOKENS)

    def load(self, names=None, *, mmap: bool = True) -> Signals:
        """Read the key columns and the named signals (all when ``names`` is None).

        Vectors come back memory-mapped float16 unless ``mmap`` is False.
        """
        spec = self.manifest.get("signals", {})
        names = list(spec) if names is None else list(names)
        missing = [n for n in names if n not in spec]
        if missing:
            raise StoreError(
                f"{self.root}: signals {missing} were not computed (store has: {', '.join(sorted(spec)) or 'none'}); "
                "rerun the probe with the method that needs them in --methods"
            )
        scalar_names = [n for n in names if spec[n]["kind"] == "scalar"]
        table = pq.read_table(self.root / SCALARS, columns=list(KEY_COLUMNS) + scalar_names)
        columns: dict[str, np.ndarray] = {n: table.column(n).to_numpy() for n in scalar_names}
        for n in names:
            if spec[n]["kind"] == "vector":
                arr = np.load(_vector_file(self.root, n), mmap_mode="r" if mmap else None)
                columns[n] = arr
        return Signals(
            ids=np.asarray(table.column("id").to_pylist(), dtype=object),
            index=table.column("index").to_numpy(),
            tasks=np.asarray(table.column("task").to_pylist(), dtype=object),
            columns=columns,
        )


class ShardWriter:
    """Writes the probe's output shard by shard, with a completion marker per shard, then merges.

    A shard is written to temporary names and renamed, then its ``.done`` marker is written last, so a shard
    without a marker is treated as never written and is redone on resume.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shard_dir = self.root / SHARDS
        self.shard_dir.mkdir(parents=True, exist_ok=True)

    def _stem(self, shard: int) -> Path:
        return self.shard_dir / f"shard-{shard:05d}"

    def is_done(self, shard: int) -> bool:
        return self._stem(shard).with_suffix(".done").is_file()

    def done_shards(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.shard_dir.glob("shard-*.done"))

    def write(self, shard: int, *, ids, index, tasks, columns: dict[str, np.ndarray],
              tokens: TokenTable | None = None) -> None:
        """One shard's rows; ``tokens`` (rows counted within the shard) when the per-token signal was computed."""
        stem = self._stem(shard)
        scalars, vectors = _split(columns)
        if tokens is not None:
            ttmp = stem.with_suffix(".tokens.tmp")
            pq.write_table(tokens.to_arrow(), ttmp)
            os.replace(ttmp, stem.with_suffix(".tokens.parquet"))
        tmp = stem.with_suffix(".parquet.tmp")
        pq.write_table(_table(ids, index, tasks, scalars), tmp)
        os.replace(tmp, stem.with_suffix(".parquet"))
        for name, arr in vectors.items():
            vtmp = Path(f"{stem}.vec_{name}.tmp.npy")
            np.save(vtmp, np.asarray(arr, dtype=np.float16))
            os.replace(vtmp, Path(f"{stem}.vec_{name}.npy"))
        stem.with_suffix(".done").write_text(json.dumps({"rows": len(ids)}) + "\n")

    def merge(self, shards: list[int], *, meta: dict | None = None, keep_shards: bool = False) -> SignalStore:
        """Concatenate finished shards (in the given order) into the final store."""
        not_done = [s for s in shards if not self.is_done(s)]
        if not_done:
            raise StoreError(f"cannot merge: shards {not_done} have no completion marker")
        tables = [pq.read_table(self._stem(s).with_suffix(".parquet")) for s in shards]
        table = pa.concat_tables(tables) if tables else None
        vec_names = sorted({p.name.split(".vec_")[1][: -len(".npy")]
                            for s in shards for p in self.shard_dir.glob(f"shard-{s:05d}.vec_*.npy")})
        columns: dict[str, np.ndarray] = {}
        if table is not None:
            for name in table.column_names:
                if name not in KEY_COLUMNS:
                    columns[name] = table.column(name).to_numpy()
        for name in vec_names:
            columns[name] = np.concatenate([np.load(f"{self._stem(s)}.vec_{name}.npy") for s in shards])
        ids = table.column("id").to_pylist() if table is not None else []
        index = table.column("index").to_numpy() if table is not None else np.zeros(0, np.int64)
        tasks = table.column("task").to_pylist() if table is not None else []
        store = write_store(self.root, ids=ids, index=index, tasks=tasks, columns=columns, meta=meta,
                            tokens=self._merged_tokens(shards, [t.num_rows for t in tables]))
        if not keep_shards:
            for p in self.shard_dir.iterdir():
                p.unlink()
            self.shard_dir.rmdir()
        return store

    def _merged_tokens(self, shards: list[int], rows_per_shard: list[int]) -> TokenTable | None:
        """The shards' token tables as one over the merged rows, or None when no shard wrote one."""
        files = [self._stem(s).with_suffix(".tokens.parquet") for s in shards]
        if not any(f.is_file() for f in files):
            return None
        missing = [s for s, f in zip(shards, files) if not f.is_file()]
        if missing:
            raise StoreError(f"cannot merge: shards {missing} have no per-token losses while others have")
        offsets = np.concatenate([[0], np.cumsum(rows_per_shard)[:-1]]).astype(np.int64)
        return TokenTable.concat([TokenTable.read(f) for f in files], offsets)
