"""Reading pools and writing subsets exactly as read (JSON, JSONL, Parquet), and task grouping."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsift.data.io import read_pool, write_subset
from mmsift.data.records import Turn
from mmsift.data.tasks import task_of
from mmsift.data.validate import validate_pool

# Extra fields in odd key orders, unicode, multi-image, text-only, nested values, a system turn.
RECORDS = [
    {"id": "a", "image": "coco/train2017/1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this? 日本語 ünïcödé 🐱"},
        {"from": "gpt", "value": "A cat — «chat»."}], "source": "coco", "score": 0.1 + 0.2},
    {"zzz_first": {"nested": [1, 2.5, None, True]}, "id": "b", "images": ["gqa/1.jpg", "gqa/2.jpg"],
     "conversations": [{"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "No."}]},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello"}], "id": "c", "lang": "en"},
    {"id": "d", "image": "e.png", "conversations": [
        {"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2 \"quoted\" \\ back"}, {"from": "gpt", "value": "A2"}], "big": 2 ** 60},
]


def _write_jsonl(path, records):
    # Mixed separators on purpose: the subset must copy these lines verbatim, not re-serialise them.
    lines = [json.dumps(r, ensure_ascii=k % 2 == 0, separators=(",", ":") if k % 2 else (", ", ": "))
             for k, r in enumerate(records)]
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return lines


def _same(a: dict, b: dict) -> bool:
    """Equal values and the same key order at every level."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_read_typed_view(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    pool = read_pool(path)
    assert pool.format == "json" and len(pool) == 4 and pool.problems == []
    a, b, c, d = pool.records
    assert [r.index for r in pool.records] == [0, 1, 2, 3]
    assert a.images == ["coco/train2017/1.jpg"] and b.images == ["gqa/1.jpg", "gqa/2.jpg"] and c.images == []
    assert c.is_text_only and not a.is_text_only
    assert c.turns == [Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello")]
    assert d.n_rounds == 2
    assert a.extra == {"source": "coco", "score": 0.1 + 0.2} and b.extra == {"zzz_first": RECORDS[1]["zzz_first"]}
    assert all(_same(r.raw, o) for r, o in zip(pool.records, RECORDS))
    assert [r.task for r in pool.records] == ["coco", "gqa", "all", "all"]


@pytest.mark.parametrize("indent", [None, 2, 4])
def test_json_round_trip(tmp_path, indent):
    src = tmp_path / "p.json"
    text = json.dumps(RECORDS, ensure_ascii=False, indent=indent)
    src.write_text(text, encoding="utf-8")
    out = write_subset(read_pool(src), range(4), tmp_path / "out.json")
    assert all(_same(x, y) for x, y in zip(json.loads(out.read_text("utf-8")), RECORDS))
    assert len(json.loads(out.read_text("utf-8"))) == 4
    # Indentation imitated, unicode unescaped: the very same text.
    if indent is None:
        assert out.read_text("utf-8").rstrip("\n") == json.dumps(RECORDS, ensure_ascii=False, separators=(", ", ": "))
    else:
        assert out.read_text("utf-8").rstrip("\n") == text
    assert "日本語" in out.read_text("utf-8")


def test_jsonl_round_trip_is_verbatim(tmp_path):
    src = tmp_path / "p.jsonl"
    lines = _write_jsonl(src, RECORDS)
    pool = read_pool(src)
    assert [r.line for r in pool.records] == [1, 2, 3, 4]
    out = write_subset(pool, range(4), tmp_path / "out.jsonl")
    assert out.read_bytes() == src.read_bytes()
    # A subset in any index order comes out in pool order, lines copied byte for byte.
    out = write_subset(pool, [3, 1, 1], tmp_path / "sub.jsonl")
    assert out.read_text("utf-8").splitlines() == [lines[1], lines[3]]


def test_parquet_round_trip_keeps_schema(tmp_path):
    src = tmp_path / "p.parquet"
    # Multi-image as a list column; the text-only record has null.
    rows = [{"id": r["id"], "images": r.get("images", [r["image"]] if "image" in r else None),
             "conversations": r["conversations"], "note": f"n{k} é"} for k, r in enumerate(RECORDS)]
    table = pa.Table.from_pylist(rows).replace_schema_metadata({"owner": "test"})
    pq.write_table(table, src)
    pool = read_pool(src)
    assert pool.format == "parquet" and len(pool) == 4 and pool.problems == []
    assert [r.images for r in pool.records] == [["coco/train2017/1.jpg"], ["gqa/1.jpg", "gqa/2.jpg"], [], ["e.png"]]
    assert pool.records[1].turns[0].text == "<image> and <image>: same?" and pool.records[0].extra == {"note": "n0 é"}
    assert validate_pool(pool, None).problems == []
    table = pq.read_table(src)  # as stored (Parquet names list items "element")
    out = write_subset(pool, range(4), tmp_path / "out.parquet")
    back = pq.read_table(out)
    assert back.schema.equals(table.schema, check_metadata=True) and back.schema.metadata[b"owner"] == b"test"
    assert back.equals(table)
    sub = pq.read_table(write_subset(pool, [2, 0], tmp_path / "sub.parquet"))
    assert sub.column("id").to_pylist() == ["a", "c"] and sub.schema.equals(table.schema)


def test_cross_format_subsets(tmp_path):
    src = tmp_path / "p.jsonl"
    _write_jsonl(src, RECORDS)
    pool = read_pool(src)
    as_json = write_subset(pool, [0, 1, 3], tmp_path / "out.json")
    assert all(_same(x, RECORDS[i]) for x, i in zip(json.loads(as_json.read_text("utf-8")), [0, 1, 3]))
    assert len(as_json.read_text("utf-8").splitlines()) == 3 + 2  # one record per line between [ and ]
    as_pq = write_subset(read_pool(as_json), [0, 1], tmp_path / "out.parquet")
    assert pq.read_table(as_pq).column("id").to_pylist() == ["a", "b"]
    # Any other suffix (.csv, .txt) is refused with the formats it could be, and nothing is written.
    for name in ("subset.csv", "subset.txt", "subset"):
        with pytest.raises(ValueError, match=r"use \.json, \.jsonl or \.parquet"):
            write_subset(pool, [2], tmp_path / name)
        assert not (tmp_path / name).exists()


def test_jsonl_parse_problems_and_defaults(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"conversations": []}).encode() + b"\n\n   \n{oops\n[1, 2]\n"
                    + b"\xff\xfe\n" + json.dumps({"id": "x"}).encode())  # last line without newline
    pool = read_pool(src)
    assert [(r.id, r.index, r.line) for r in pool.records] == [("0", 0, 1), ("x", 1, 7)]
    kinds = [(p.kind, p.line, p.severity) for p in pool.problems]
    assert ("unparseable_line", 4, "error") in kinds and ("not_an_object", 5, "error") in kinds
    assert ("unparseable_line", 6, "error") in kinds
    assert ("missing_id", 1, "warning") in kinds and len(kinds) == 4
    out = write_subset(pool, [0, 1], tmp_path / "o.jsonl")
    assert [json.loads(x) for x in out.read_text("utf-8-sig").splitlines()] == [{"conversations": []}, {"id": "x"}]


def test_json_file_problems(tmp_path):
    (tmp_path / "a.json").write_text('{"id": "1"}')
    assert [p.kind for p in read_pool(tmp_path / "a.json").problems] == ["not_a_list"]
    (tmp_path / "b.json").write_text('[{"id": 1}, 3, "x", {"id": "2"}]')
    pool = read_pool(tmp_path / "b.json")
    assert [r.id for r in pool.records] == ["1", "2"] and [r.index for r in pool.records] == [0, 1]
    assert [p.kind for p in pool.problems] == ["not_an_object", "not_an_object"]
    assert "entry 1" in pool.problems[0].message and "entry 2" in pool.problems[1].message
    (tmp_path / "c.json").write_text('[{"id": "1"},\n{"id": ')
    (p,) = read_pool(tmp_path / "c.json").problems
    assert p.kind == "unparseable_file" and p.line == 2
    (tmp_path / "d.json").write_text('[{"id": [1]}, {"id": ""}, {"id": true}, {"id": null}, {"id": 7}]')
    pool = read_pool(tmp_path / "d.json")
    assert [r.id for r in pool.records] == ["0", "1", "2", "3", "7"]
    assert [(p.kind, p.index) for p in pool.problems] == [("missing_id", 3)]  # bad ids: validate's job
    report = validate_pool(pool, None)
    assert [(p.kind, p.index) for p in report.problems if p.kind.endswith("_id")] == [
        ("missing_id", 3), ("bad_id", 0), ("bad_id", 1), ("bad_id", 2)]


def test_json_with_bom(tmp_path):
    src = tmp_path / "p.json"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS, indent=2, ensure_ascii=False).encode("utf-8"))
    pool = read_pool(src)
    assert pool.problems == [] and [r.id for r in pool.records] == ["a", "b", "c", "d"]
    out = write_subset(pool, [1, 2], tmp_path / "o.json")
    assert out.read_text("utf-8").rstrip("\n") == json.dumps(RECORDS[1:3], indent=2, ensure_ascii=False)


def test_json_that_is_really_jsonl(tmp_path):
    src = tmp_path / "p.json"
    _write_jsonl(src, RECORDS)
    pool = read_pool(src)
    assert pool.format == "jsonl" and [r.id for r in pool.records] == ["a", "b", "c", "d"]


def test_bad_paths_and_indices(tmp_path):
    with pytest.raises(ValueError, match="unknown pool format"):
        read_pool(tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError):
        read_pool(tmp_path / "missing.jsonl")
    src = tmp_path / "p.jsonl"
    _write_jsonl(src, RECORDS)
    pool = read_pool(src)
    with pytest.raises(IndexError, match="outside the pool"):
        write_subset(pool, [0, 4], tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    src.write_text(src.read_text() + "\n")  # the source changed after reading: copying lines would be wrong
    with pytest.raises(RuntimeError, match="changed since it was read"):
        write_subset(pool, [0], tmp_path / "o.jsonl")
    assert list(tmp_path.glob("o.jsonl*")) == []  # no temporary file left behind


def test_parquet_values_json_cannot_hold(tmp_path):
    src = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "blob": b"\x00\x01", "conversations": []}]), src)
    with pytest.raises(TypeError, match="record 'a'.*bytes"):
        write_subset(read_pool(src), [0], tmp_path / "o.json")


def test_task_of(tmp_path):
    src = tmp_path / "p.json"
    recs = [
        {"id": "1", "image": "coco/train2017/x.jpg", "source": "vqa"},
        {"id": "2", "image": "x.jpg", "source": ""},
        {"id": "3"},
        {"id": "4", "images": ["./ocr_vqa/images/1.jpg", "coco/2.jpg"], "source": 7},
        {"id": "5", "image": "textvqa\\train\\1.jpg"},
    ]
    src.write_text(json.dumps(recs))
    pool = read_pool(src)
    assert [task_of(r) for r in pool.records] == ["coco", "all", "all", "ocr_vqa", "textvqa"]
    assert [task_of(r, "source") for r in pool.records] == ["vqa", "all", "all", "7", "textvqa"]
    assert [r.task for r in read_pool(src, task_field="source").records] == ["vqa", "all", "all", "7", "textvqa"]
