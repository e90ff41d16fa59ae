"""Pools in the layouts trainers use: LLaMA-Factory/ShareGPT, typed content parts, renamed tags, and Parquet
(file, folder, glob) with embedded image bytes: read, validate, and written back unchanged."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsift.data.io import read_pool, write_subset
from mmsift.data.validate import validate_pool


def _png(color, size=(12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def lf_records():
    """Like LLaMA-Factory's mllm_demo.json: messages, images, <image> anywhere in a user turn, an image twice."""
    return [
        {"messages": [{"content": "<image>Who are they?", "role": "user"},
                      {"content": "Two players.", "role": "assistant"},
                      {"content": "What are they doing?<image>", "role": "user"},
                      {"content": "Celebrating.", "role": "assistant"}],
         "images": ["demo_data/1.png", "demo_data/1.png"]},
        {"messages": [{"content": "<image>Who is he?", "role": "user"},
                      {"content": "A <b>keeper</b>.", "role": "assistant"}],
         "images": ["demo_data/2.png"]},
        {"messages": [{"content": "Say hi.", "role": "user"}, {"content": "Hi!", "role": "assistant"}]},
    ]


@pytest.fixture
def lf_pool(tmp_path):
    (tmp_path / "demo_data").mkdir()
    (tmp_path / "demo_data" / "1.png").write_bytes(_png("red"))
    (tmp_path / "demo_data" / "2.png").write_bytes(_png("blue"))
    path = tmp_path / "mllm_demo.json"
    path.write_text(json.dumps(lf_records(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def test_llamafactory_pool_validates_and_round_trips(lf_pool, tmp_path):
    pool = read_pool(lf_pool)
    report = validate_pool(pool, tmp_path)
    assert report.n_errors == 0 and report.n_warnings == 3  # missing_id: the records use their pool index
    assert list(report.layouts) == ["sharegpt ('messages' of 'role'/'content' turns, images in 'images')"]
    assert "detected format: sharegpt" in report.format_text()
    r0 = pool.records[0]
    assert [t.role for t in r0.turns] == ["user", "assistant", "user", "assistant"]
    assert r0.images == ["demo_data/1.png", "demo_data/1.png"] and r0.task == "demo_data"
    out = write_subset(pool, range(3), tmp_path / "out.json")
    assert json.loads(out.read_text("utf-8")) == lf_records()


def test_typed_parts_openai_and_llamafactory(tmp_path):
    (tmp_path / "a.png").write_bytes(_png("red"))
    recs = [
        {"id": "lf", "messages": [
            {"role": "user", "content": [{"type": "image_url", "value": "a.png"}, {"type": "text", "value": "Who?"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "Me."}]}]},
        {"id": "oa", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"},
                                         {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}], "images": ["a.png"]},
        {"id": "url", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "content": "no"}]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    pool = read_pool(path)
    lf, oa, _ = pool.records
    assert lf.images == ["a.png"] and lf.turns[0].text == "<image>Who?" and lf.turns[1].text == "Me."
    assert oa.images == ["a.png"] and oa.turns[1].text == "Look:<image>what?"
    report = validate_pool(pool, tmp_path)
    assert [(p.kind, p.record_id) for p in report.problems if p.severity == "error"] == [("malformed_turn", "url")]
    assert "local image files only" in report.problems[0].message
    assert write_subset(pool, [0, 1, 2], tmp_path / "o.jsonl").read_text() == path.read_text()


def test_renamed_tags_from_dataset_info_beside_the_pool(tmp_path):
    recs = [{"id": "1", "dialog": [{"speaker": "H", "text": "<image>Hi?"}, {"speaker": "B", "text": "Yes."}],
             "pics": ["x.png"]}]
    (tmp_path / "x.png").write_bytes(_png("green"))
    (tmp_path / "mine.json").write_text(json.dumps(recs))
    # Without a layout the record fits none: the error names its fields and the known layouts.
    report = validate_pool(read_pool(tmp_path / "mine.json"), tmp_path)
    (problem,) = report.problems
    assert problem.kind == "unknown_format" and "'dialog'" in problem.message and "'pics'" in problem.message
    assert "sharegpt" in problem.message and "llava" in problem.message
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {
        "file_name": "mine.json", "formatting": "sharegpt", "columns": {"messages": "dialog", "images": "pics"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "H", "assistant_tag": "B"}}}))
    pool = read_pool(tmp_path / "mine.json")
    report = validate_pool(pool, tmp_path)
    assert report.n_errors == 0, report.format_text()
    assert [t.role for t in pool.records[0].turns] == ["user", "assistant"] and pool.records[0].images == ["x.png"]
    recs[0]["dialog"][1]["speaker"] = "gpt?"
    (tmp_path / "mine.json").write_text(json.dumps(recs))
    bad = validate_pool(read_pool(tmp_path / "mine.json"), tmp_path)
    assert [p.kind for p in bad.problems] == ["bad_role"] and "expected H, B or system" in bad.problems[0].message


def _holds_bytes(value) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return True
    if isinstance(value, dict):
        return any(_holds_bytes(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_bytes(v) for v in value)
    return False


def hf_table(n: int, *, list_column: bool = False, start: int = 0) -> pa.Table:
    """Rows as Hugging Face datasets writes them: an image struct column {bytes, path} and a messages column."""
    colors = ["red", "green", "blue", "white"]
    rows = []
    for i in range(start, start + n):
        img = {"bytes": _png(colors[i % 4], (10 + i % 3, 9)), "path": f"{i}.png"}
        rows.append({"id": f"r{i}", "image": [img] if list_column else img,
                     "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                       {"from": "gpt", "value": colors[i % 4]}]})
    table = pa.Table.from_pylist(rows)
    return table.replace_schema_metadata({b"huggingface": b'{"info": {"features": {}}}'})


@pytest.mark.parametrize("list_column", [False, True])
def test_parquet_embedded_images_round_trip(tmp_path, list_column):
    table = hf_table(10, list_column=list_column)
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=4)
    pool = read_pool(path)
    assert pool.format == "parquet" and len(pool) == 10
    rec = pool.records[5]
    assert rec.images == ["5.png"] and rec.embedded[0].nbytes == len(_png("green", (12, 9)))
    assert not _holds_bytes(rec.raw)  # no image bytes are kept in the record
    report = validate_pool(pool, None)
    assert report.n_errors == 0, report.format_text()
    from mmsift.data.images import load_images

    assert load_images(rec, None)[0].size == (12, 9)
    out = write_subset(pool, range(10), tmp_path / "all.parquet")
    back = pq.read_table(out)
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    sub = pq.read_table(write_subset(pool, [7, 2], tmp_path / "sub.parquet"))
    assert sub.equals(table.take([2, 7]))
    with pytest.raises(TypeError, match="embedded image bytes cannot be written as JSON"):
        write_subset(pool, [1], tmp_path / "sub.json")


def test_parquet_folder_and_glob_of_shards(tmp_path):
    shards = tmp_path / "data"
    shards.mkdir()
    for k in range(3):
        pq.write_table(hf_table(5, start=5 * k), shards / f"train-{k:05d}-of-00003.parquet", row_group_size=2)
    for source in (shards, str(shards / "train-*.parquet")):
        pool = read_pool(source)
        assert [r.id for r in pool.records] == [f"r{i}" for i in range(15)]
        assert validate_pool(pool, None).n_errors == 0
    out = write_subset(pool, [0, 6, 14], tmp_path / "sub.parquet")
    assert pq.read_table(out).column("id").to_pylist() == ["r0", "r6", "r14"]


def test_parquet_corrupt_embedded_image_is_reported(tmp_path):
    table = hf_table(3)
    rows = table.to_pylist()
    rows[1]["image"]["bytes"] = rows[1]["image"]["bytes"][:45]  # header kept, data cut short
    rows[2]["image"]["bytes"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    report = validate_pool(read_pool(tmp_path / "p.parquet"), None)
    assert [(p.kind, p.record_id) for p in report.problems] == [("unreadable_image", "r2"), ("corrupt_image", "r1")]
