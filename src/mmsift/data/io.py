"""Reading pools (JSON, JSONL, Parquet) and writing subsets of them exactly as they were read.

The container (``Pool.format``: a JSON list, JSONL, or Parquet: one file, a folder of shards or a glob) is told
by the path; the record layout (LLaVA ``conversations`` or ShareGPT/LLaMA-Factory ``messages``, see
``formats.py``) is detected per record, or given (``layout=``), or taken from a ``dataset_info.json`` beside the
pool that names the file.

A pool's records keep their raw form (``Record.raw``: every field, in key order). ``Record.index`` is the
record's position in ``Pool.records`` (``pool.records[i].index == i``); entries that could not be read (a broken
JSONL line, a non-object in a JSON list) are not records: they are reported in ``Pool.problems`` and do not take
an index. ``Pool.problems`` holds the parse-level problems (see ``validate.py`` for all kinds): the errors
``unparseable_file``, ``not_a_list``, ``unparseable_line``, ``not_an_object`` (each one an entry that is not a
record, so records + these errors = entries in the file) and ``missing_id`` warnings (records).

Writing keeps the container format: a JSONL subset of a JSONL pool copies the selected lines byte for byte, a
Parquet subset of a Parquet pool streams the chosen rows of the source files (schema, metadata and image bytes
kept, see ``parquet.py``), and JSON is
re-serialised from the raw records with ``ensure_ascii=False`` (same keys, order and values; the indentation of
the source is imitated, other whitespace is not kept).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mmsift.data.formats import Layout, layout_for_pool, parse_record
from mmsift.data.records import ERROR, WARNING, EmbeddedImage, Problem, Record
from mmsift.data.tasks import task_of

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Pool:
    """A pool as read: records in pool order, parse-level problems, and what is needed to write subsets."""

    path: Path
    format: str  # "json" | "jsonl" | "parquet"
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    # Source state at read time, so that a JSONL subset is never copied from a file that changed since.
    _stat: tuple[int, int] | None = field(default=None, repr=False)
    _sources: list[str] = field(default_factory=list, repr=False)  # the files of a Parquet pool
    _source_stats: list = field(default_factory=list, repr=False)
    _indent: int | None = field(default=None, repr=False)  # indentation of a JSON source

    def __len__(self) -> int:
        return len(self.records)

    @property
    def layouts(self) -> dict[str, int]:
        """Records per detected layout (``Layout.describe()``), most common first."""
        counts: dict[str, int] = {}
        for rec in self.records:
            if rec.layout is not None:
                counts[rec.layout.describe()] = counts.get(rec.layout.describe(), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def format_of(path: str | os.PathLike, default: str | None = None) -> str:
    """``json``, ``jsonl`` or ``parquet`` from the file suffix; ``default`` (or an error) for any other suffix."""
    fmt = FORMATS.get(Path(path).suffix.lower(), default)
    if fmt is None:
        raise ValueError(
            f"{path}: unknown pool format {Path(path).suffix!r}; use .json (a list of records), .jsonl or .parquet"
        )
    return fmt


def pool_exists(path: str | os.PathLike) -> bool:
    """True for a pool file, a folder holding Parquet shards, or a glob that matches files."""
    from mmsift.data.parquet import parquet_sources

    try:
        return Path(path).is_file() or bool(parquet_sources(path))
    except FileNotFoundError:
        return False


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def read_pool(path: str | os.PathLike, *, task_field: str | None = None, layout: Layout | None = None) -> Pool:
    """Read a pool. Content problems go to ``Pool.problems``; a missing file or unknown suffix raises.

    ``path``: a .json/.jsonl/.parquet file, a folder of Parquet shards, or a glob of them. ``layout``: the record
    layout every record must follow; by default a ``dataset_info.json`` beside the pool naming this file gives
    it, else it is detected per record.
    """
    from mmsift.data.parquet import parquet_sources

    path = Path(path)
    sources = parquet_sources(path)
    if sources is None and path.is_dir():
        raise ValueError(f"{path} is a folder, not a pool file (.json, .jsonl or .parquet), and holds no .parquet "
                         "shards")
    if sources is None:
        format_of(path)
        if not path.is_file():
            raise FileNotFoundError(f"pool file not found: {path}")
    if layout is None and sources is None:
        layout = layout_for_pool(path)
    if sources is not None:
        pool = _read_parquet(path, sources, layout)
    elif format_of(path) == "jsonl":
        pool = _read_jsonl(path, layout)
    else:
        pool = _read_json(path, layout)
    for rec in pool.records:
        rec.task = task_of(rec, task_field)
        pool.problems.extend(_id_problems(rec))
    log.info("read %d records from %s (%s; %s), %d parse problems", len(pool.records), path, pool.format,
             ", ".join(pool.layouts) or "no known layout", len(pool.problems))
    return pool


def _id_problems(rec: Record) -> list[Problem]:
    if rec.raw.get("id") is None:  # absent, or null (a Parquet id column with gaps)
        return [Problem("missing_id", WARNING, rec.id, rec.index, rec.line,
                        f"record has no 'id'; using its pool index {rec.id!r}")]
    return []


def _read_jsonl(path: Path, layout: Layout | None) -> Pool:
    records: list[Record] = []
    problems: list[Problem] = []
    stat = _stat(path)
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, start=1):
            if lineno == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            if not raw_line.strip():
                continue
            try:
                obj = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as e:
                problems.append(Problem("unparseable_line", ERROR, None, None, lineno, f"not UTF-8: {e}"))
                continue
            except json.JSONDecodeError as e:
                problems.append(Problem("unparseable_line", ERROR, None, None, lineno, f"invalid JSON: {e}"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem("not_an_object", ERROR, None, None, lineno,
                                        f"line holds a JSON {type(obj).__name__}, not an object"))
                continue
            records.append(parse_record(obj, len(records), line=lineno, layout=layout))
    return Pool(path=path, format="jsonl", records=records, problems=problems, _stat=stat)


_INDENT = re.compile(r"^\s*\[\s*?\n([ \t]+)[{\[]")


def _read_json(path: Path, layout: Layout | None) -> Pool:
    stat = _stat(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        return Pool(path, "json", [], [Problem("unparseable_file", ERROR, None, None, None, f"not UTF-8: {e}")],
                    _stat=stat)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Many "pool.json" files are really JSONL: several objects, one per line.
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            log.info("%s holds one JSON object per line; reading it as JSONL", path)
            return _read_jsonl(path, layout)
        return Pool(path, "json", [], [Problem("unparseable_file", ERROR, None, None, e.lineno,
                                               f"invalid JSON: {e}")], _stat=stat)
    if not isinstance(data, list):
        return Pool(path, "json", [], [Problem(
            "not_a_list", ERROR, None, None, None,
            f"a .json pool must be a list of records, this file holds a JSON {type(data).__name__}")], _stat=stat)
    records: list[Record] = []
    problems: list[Problem] = []
    for pos, obj in enumerate(data):
        if isinstance(obj, dict):
            records.append(parse_record(obj, len(records), layout=layout))
        else:
            problems.append(Problem("not_an_object", ERROR, None, None, None,
                                    f"entry {pos} of the list is a JSON {type(obj).__name__}, not an object"))
    m = _INDENT.match(text[:4096])
    indent = len(m.group(1).expandtabs(4)) if m else None
    return Pool(path, "json", records, problems, _stat=stat, _indent=indent)


def _read_parquet(path: Path, sources: list[str], layout: Layout | None) -> Pool:
    from tqdm.auto import tqdm

    from mmsift.data.parquet import iter_rows

    stats = [_stat(Path(f)) for f in sources]
    records = [parse_record(row, i, layout=layout)
               for i, (row, _) in enumerate(tqdm(iter_rows(sources), desc="reading parquet", unit="rec",
                                                 disable=None, leave=False))]
    return Pool(path, "parquet", records, [], _sources=sources, _source_stats=stats)


def write_subset(pool: Pool, indices, out_path: str | os.PathLike) -> Path:
    """Write the records at ``indices`` (pool positions, any order, duplicates ignored) in pool order.

    The format follows ``out_path``'s suffix (the pool's own format for any other suffix). The file is written
    to a temporary name first and moved into place, so a failed write never leaves half a subset behind.
    """
    out_path = Path(out_path)
    chosen = sorted({int(i) for i in indices})
    n = len(pool.records)
    if chosen and (chosen[0] < 0 or chosen[-1] >= n):
        bad = [i for i in chosen if i < 0 or i >= n][:5]
        raise IndexError(f"indices {bad} are outside the pool ({n} records)")
    if out_path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write a subset as {out_path.suffix or 'a file without suffix'!r}: use .json, "
                         ".jsonl or .parquet (records keep their nested conversations, which CSV cannot hold)")
    fmt = format_of(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        if fmt == "jsonl" and pool.format == "jsonl":
            _copy_jsonl_lines(pool, chosen, Path(tmp))
        elif fmt == "parquet":
            _write_parquet(pool, chosen, Path(tmp))
        else:
            _write_json_like(pool, chosen, Path(tmp), fmt)
        # mkstemp creates the file 0600; a subset is read by trainers under other accounts, like the .ids.txt
        # beside it: the mode a plain open() would give (0666 less the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %d of %d records to %s (%s)", len(chosen), n, out_path, fmt)
    return out_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_subset_format(pool: Pool, out_path: str | os.PathLike) -> None:
    """Raise a ValueError (one line) when the pool's records cannot be written in ``out_path``'s format: embedded
    image bytes have no JSON form. Checked before selecting, so no work is lost."""
    fmt = format_of(Path(out_path)) if Path(out_path).suffix.lower() in FORMATS else None
    if fmt not in ("json", "jsonl"):
        return
    rec = next((r for r in pool.records if any(r.embedded)), None)
    if rec is not None:
        raise ValueError(f"{out_path}: the pool holds embedded image bytes (record {rec.id!r}, and maybe others), "
                         f"which JSON cannot hold: write the subset as .parquet")


def _copy_jsonl_lines(pool: Pool, chosen: list[int], tmp: Path) -> None:
    if pool._stat is not None and _stat(pool.path) != pool._stat:
        raise RuntimeError(f"{pool.path} changed since it was read; read the pool again before writing a subset")
    wanted = {pool.records[i].line for i in chosen}
    last = max(wanted, default=0)
    with open(pool.path, "rb") as src, open(tmp, "wb") as dst:
        for lineno, raw_line in enumerate(src, start=1):
            if lineno > last:
                break
            if lineno in wanted:
                dst.write(raw_line if raw_line.endswith(b"\n") else raw_line + b"\n")


def _json_default(obj):
    # Parquet rows can hold values JSON has no form for (bytes, timestamps): say which, instead of guessing.
    what = "embedded image bytes" if isinstance(obj, EmbeddedImage) else f"a {type(obj).__name__} value"
    raise TypeError(f"{what} cannot be written as JSON; write this subset as .parquet")


def _write_json_like(pool: Pool, chosen: list[int], tmp: Path, fmt: str) -> None:
    with open(tmp, "w", encoding="utf-8") as dst:
        if fmt == "jsonl":
            for i in chosen:
                dst.write(_dumps(pool.records[i], None))
                dst.write("\n")
            return
        indent = pool._indent
        if indent:  # imitate an indented source
            pad = " " * indent
            dst.write("[\n")
            for k, i in enumerate(chosen):
                dst.write((",\n" if k else "") + pad + _dumps(pool.records[i], indent).replace("\n", "\n" + pad))
            dst.write("\n]\n")
        else:
            # A compact JSON source stays compact; from JSONL or Parquet, one record per line (easy to diff).
            compact = pool.format == "json"
            dst.write("[" if compact else "[\n")
            for k, i in enumerate(chosen):
                if k:
                    dst.write(", " if compact else ",\n")
                dst.write(_dumps(pool.records[i], None))
            dst.write("]\n" if compact else "\n]\n")


def _dumps(rec: Record, indent: int | None) -> str:
    try:
        return json.dumps(rec.raw, ensure_ascii=False, indent=indent, default=_json_default)
    except TypeError as e:
        raise TypeError(f"record {rec.id!r} (index {rec.index}): {e}") from None


def _write_parquet(pool: Pool, chosen: list[int], tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if pool.format == "parquet" and pool._sources:
        from mmsift.data.parquet import write_rows

        if [_stat(Path(f)) for f in pool._sources] != pool._source_stats:
            raise RuntimeError(f"{pool.path} changed since it was read; read the pool again before writing a subset")
        write_rows(pool._sources, chosen, tmp)
        return
    else:
        try:
            table = pa.Table.from_pylist([pool.records[i].raw for i in chosen])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"these records do not fit one Parquet schema ({e}); write the subset as .json or "
                             ".jsonl instead") from None
    pq.write_table(table, tmp)
