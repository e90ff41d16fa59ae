"""Parquet pools: one file, a folder of shards or a glob, with image columns holding paths or embedded bytes.

Image columns are found by type: a struct with a binary ``bytes`` and a string ``path`` field (what Hugging Face
``datasets`` writes for an ``Image`` feature), or a list of such structs. A record never keeps image bytes: while
reading, each embedded image is replaced in ``Record.raw`` by an :class:`~mmsift.data.records.EmbeddedImage`
(file, row group, row, column, size, CRC-32), and its bytes are read again when the probe or the validator needs
them. Reading streams record batches (``iter_batches``), so at most one batch of image bytes is in memory; reading
an image back reads its row group's image column, of which a small cache keeps the last few (a probe shard takes
consecutive records, so it touches few row groups). Writing a subset streams the source the same way and keeps
the Arrow schema (with its metadata) and the image bytes unchanged.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

from mmsift.data.records import EmbeddedImage

log = logging.getLogger(__name__)

BATCH_ROWS = 512  # rows per streamed record batch
CACHED_ROW_GROUPS = 4  # image columns of row groups kept for reading images back


def parquet_sources(path: str | os.PathLike) -> list[str] | None:
    """The Parquet files a pool path names (a file, a folder of ``*.parquet`` shards, a glob); None if not Parquet."""
    text = os.fspath(path)
    if any(c in text for c in "*?["):
        files = sorted(f for f in glob.glob(text, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"no file matches {text}")
        return files
    p = Path(text)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in (".parquet", ".pq") and f.is_file())
        return files or None
    if p.suffix.lower() in (".parquet", ".pq"):
        return [text]
    return None


def _image_columns(schema) -> dict[str, bool]:
    """Image column name -> True for a list of images, False for one image per row."""
    import pyarrow as pa

    def is_image(t) -> bool:
        if not pa.types.is_struct(t):
            return False
        names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        return ("bytes" in names and (pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"]))
                and "path" in names)

    out = {}
    for f in schema:
        if is_image(f.type):
            out[f.name] = False
        elif (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)) and is_image(f.type.value_type):
            out[f.name] = True
    return out


def _ref(value, source, rg, row, column, item):
    if not isinstance(value, dict) or not isinstance(value.get("bytes"), (bytes, bytearray)):
        return value
    data = value["bytes"]
    ref = EmbeddedImage(source, rg, row, column, item, len(data), zlib.crc32(data))
    return {**value, "bytes": ref}


def iter_rows(sources: list[str]):
    """``(row dict, file position)`` for every row, with embedded image bytes replaced by references."""
    import pyarrow.parquet as pq

    for pos, source in enumerate(sources):
        pf = pq.ParquetFile(source)
        columns = _image_columns(pf.schema_arrow)
        for rg in range(pf.num_row_groups):
            n_rows = pf.metadata.row_group(rg).num_rows
            if columns and n_rows > 20_000:
                log.warning("%s: row group %d holds %d rows; reading an image back reads its whole row group's image "
                            "column (rewrite with smaller row groups for less memory)", source, rg, n_rows)
            row = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], use_threads=False):
                for rec in batch.to_pylist():
                    for col, is_list in columns.items():
                        value = rec.get(col)
                        if is_list and isinstance(value, list):
                            rec[col] = [_ref(v, source, rg, row, col, k) for k, v in enumerate(value)]
                        elif not is_list:
                            rec[col] = _ref(value, source, rg, row, col, None)
                    yield rec, pos
                    row += 1
                del batch


class _ColumnCache:
    """The image columns of the last few row groups read (per process: DataLoader workers each have one)."""

    def __init__(self, size: int = CACHED_ROW_GROUPS):
        self.size = size
        self._lru: OrderedDict = OrderedDict()
        self._files: dict = {}
        self._lock = threading.Lock()

    def column(self, source: str, rg: int, column: str):
        import pyarrow.parquet as pq

        key = (source, rg, column)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            pf = self._files.get(source)
            if pf is None:
                pf = self._files[source] = pq.ParquetFile(source)
            col = pf.read_row_group(rg, columns=[column], use_threads=False).column(0).combine_chunks()
            self._lru[key] = col
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
            return col


_CACHE = _ColumnCache()


def read_embedded(ref: EmbeddedImage) -> bytes:
    """The bytes of an embedded image; raises ValueError when they changed since the pool was read."""
    value = _CACHE.column(ref.source, ref.row_group, ref.column)[ref.row].as_py()
    if ref.item is not None:
        value = value[ref.item] if isinstance(value, list) and ref.item < len(value) else None
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, (bytes, bytearray)) or len(data) != ref.nbytes or zlib.crc32(data) != ref.crc32:
        raise ValueError(f"the image in {ref.source} (row group {ref.row_group}, row {ref.row}, column {ref.column!r})"
                         " changed since the pool was read")
    return bytes(data)


def open_embedded(ref: EmbeddedImage):
    """The embedded image as an RGB PIL image."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(read_embedded(ref))) as im:
        im.load()
        return im.convert("RGB")


def write_rows(sources: list[str], chosen: list[int], out: Path) -> None:
    """Write the rows at global positions ``chosen`` (sorted) of ``sources`` to ``out``, schema and bytes kept."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = np.asarray(chosen, dtype=np.int64)
    schema = pq.ParquetFile(sources[0]).schema_arrow
    start = 0
    with pq.ParquetWriter(out, schema) as writer:
        for source in sources:
            pf = pq.ParquetFile(source)
            if not pf.schema_arrow.equals(schema, check_metadata=False):
                raise ValueError(f"{source} has another schema than {sources[0]}; the shards of a pool must agree")
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
                lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
                if hi > lo:
                    writer.write_table(pa.Table.from_batches([batch.take(pa.array(wanted[lo:hi] - start))],
                                                             schema=schema))
                start += batch.num_rows
