"""A LLaMA-Factory-style JSON pool and a Parquet pool with embedded image bytes, each through the commands a user
runs (validate -> warmup -> probe -> select): ``--budget 1.0`` writes back records equal to the input."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmsift.cli import app

pytest.importorskip("torch").set_num_threads(1)
runner = CliRunner()
COLORS = ["red", "green", "blue", "white", "black", "yellow"]


def _png(color: str, k: int) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (32 + 4 * k, 30), color)
    ImageDraw.Draw(im).rectangle((4, 4, 14, 14), fill="gray")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _messages(k: int, color: str) -> list[dict]:
    msgs = [{"role": "user", "content": "<image>What colour is the background?"},
            {"role": "assistant", "content": color.capitalize() + "."}]
    if k % 3 == 0:
        msgs += [{"role": "user", "content": "Is there a square?"}, {"role": "assistant", "content": "Yes, a grey one."}]
    return msgs


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _flow(pool, images, tmp_path, out_name):
    report = _run("validate", pool, "--images", images, "--json")
    assert json.loads(report)["n_errors"] == 0
    _run("warmup", pool, "--images", images, "--out", tmp_path / "proxy", "--n-samples", 8, "--epochs", 1,
         "--batch-size", 4)
    _run("probe", pool, "--images", images, "--model", tmp_path / "proxy", "--out", tmp_path / "run",
         "--methods", "perplexity", "--batch-size", 4)
    out = tmp_path / out_name
    text = _run("select", tmp_path / "run", "-m", "perplexity", "-b", "1.0", "-o", out)
    assert "kept 12 of 12" in text and "lower perplexity kept" in text
    return out


@pytest.mark.slow
def test_llamafactory_json_through_every_command(tmp_path):
    (tmp_path / "demo_data").mkdir()
    records = []
    for k in range(12):
        color = COLORS[k % 6]
        (tmp_path / "demo_data" / f"{k}.png").write_bytes(_png(color, k))
        records.append({"messages": _messages(k, color), "images": [f"demo_data/{k}.png"]})
    pool = tmp_path / "demo.json"
    pool.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    out = _flow(pool, tmp_path, tmp_path, "subset.json")
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got == records and [list(r) for r in got] == [list(r) for r in records]
    assert out.read_text(encoding="utf-8") == pool.read_text(encoding="utf-8") + "\n"  # same indentation


@pytest.mark.slow
def test_parquet_with_embedded_images_through_every_command(tmp_path):
    rows = [{"id": f"p{k}", "messages": _messages(k, COLORS[k % 6]),
             "images": [{"bytes": _png(COLORS[k % 6], k), "path": f"{k}.png"}]} for k in range(12)]
    table = pa.Table.from_pylist(rows)
    shards = tmp_path / "data"
    shards.mkdir()
    pq.write_table(table.slice(0, 7), shards / "train-00000-of-00002.parquet", row_group_size=3)
    pq.write_table(table.slice(7), shards / "train-00001-of-00002.parquet", row_group_size=3)
    out = _flow(shards, tmp_path, tmp_path, "subset.parquet")
    back = pq.read_table(out)
    assert back.schema.equals(table.schema) and back.equals(table)
