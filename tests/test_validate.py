"""validate_pool: each defect kind reported once with the right record, no false alarms, unsafe paths never read."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from mmsift.cli.data import validate_command
from mmsift.data.io import read_pool
from mmsift.data.paths import UnsafePathError, resolve_image
from mmsift.data.validate import KINDS, validate_pool


def conv(*texts, roles=None):
    roles = roles or ["human" if k % 2 == 0 else "gpt" for k in range(len(texts))]
    return [{"from": r, "value": t} for r, t in zip(roles, texts)]


ONE = conv("<image>\nWhat is it?", "A box.")


def _images(root: Path) -> tuple[Path, Path]:
    """images/ with good, truncated and fake files; outside/ with a valid image the pool must never read."""
    images, outside = root / "images", root / "outside"
    (images / "set").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "set" / "good.png")
    noise = Image.effect_noise((64, 48), 60).convert("RGB")  # noisy, so that most of the file is scan data
    noise.save(images / "set" / "good.jpg", quality=90)
    Image.new("RGB", (64, 48), "blue").save(outside / "secret.png")
    png = (images / "set" / "good.png").read_bytes()
    (images / "set" / "cut.png").write_bytes(png[: len(png) // 2])
    jpg = (images / "set" / "good.jpg").read_bytes()
    (images / "set" / "cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    (images / "set" / "cuthead.jpg").write_bytes(jpg[:300])
    # Valid JPEG followed by padding: no end marker in the last bytes, but not broken. Must not be flagged.
    (images / "set" / "padded.jpg").write_bytes(jpg + b"\x00" * 200)
    (images / "set" / "text.png").write_text("not an image")
    (images / "set" / "folder.png").mkdir()
    os.symlink(outside / "secret.png", images / "set" / "link.png")
    return images, outside


def _jsonl(path: Path, entries: list) -> None:
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n", "utf-8")


def test_each_defect_reported_once(tmp_path, monkeypatch):
    images, outside = _images(tmp_path)
    secret = str(outside / "secret.png")
    entries = [
        {"id": "ok1", "image": "set/good.png", "conversations": ONE},                                   # 1
        "{oops",                                                                                          # 2
        "[1, 2]",                                                                                         # 3
        {"image": "set/good.jpg", "conversations": ONE},                                                 # 4 idx1
        {"id": ["x"], "conversations": conv("hi", "ho")},                                                 # 5 idx2
        {"id": "ok1", "conversations": conv("hi", "ho")},                                                 # 6
        {"id": "noconv", "image": "set/good.png"},                                                        # 7
        {"id": "malformed", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
        {"id": "empty", "conversations": conv("hi", "  ")},                                               # 9
        {"id": "role", "conversations": conv("hi", "ho", roles=["human", "bot"])},                        # 10
        {"id": "order", "conversations": conv("hi", "ho", "again", roles=["human", "gpt", "human"])},     # 11
        {"id": "ph", "images": ["set/good.png", "set/good.jpg"], "conversations": ONE},                   # 12
        {"id": "ph_warn", "image": "set/good.png", "conversations": conv("What is it?", "A box.")},      # 13
        {"id": "field", "image": 5, "conversations": conv("hi", "ho")},                                   # 14
        {"id": "abs", "image": secret, "conversations": ONE},                                             # 15
        {"id": "escape", "image": "set/../../outside/secret.png", "conversations": ONE},                  # 16
        {"id": "link", "image": "set/link.png", "conversations": ONE},                                    # 17
        {"id": "missing", "image": "set/nope.png", "conversations": ONE},                                 # 18
        {"id": "notimg", "image": "set/text.png", "conversations": ONE},                                  # 19
        {"id": "dir", "image": "set/folder.png", "conversations": ONE},                                   # 20
        {"id": "cutpng", "image": "set/cut.png", "conversations": ONE},                                   # 21
        {"id": "cutjpg", "image": "set/cut.jpg", "conversations": ONE},                                   # 22
        {"id": "padded", "image": "set/padded.jpg", "conversations": ONE},                                # 23
        {"id": "cuthead", "image": "set/cuthead.jpg", "conversations": ONE},                              # 24
    ]
    src = tmp_path / "pool.jsonl"
    _jsonl(src, entries)

    opened = []
    real_open, real_image_open = builtins.open, Image.open

    def spy_open(file, *a, **k):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *a, **k)

    def spy_image_open(fp, *a, **k):
        opened.append(os.path.realpath(fp) if isinstance(fp, (str, os.PathLike)) else fp)
        return real_image_open(fp, *a, **k)

    pool = read_pool(src)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(Image, "open", spy_image_open)
    report = validate_pool(pool, images, workers=2)
    monkeypatch.undo()

    got = sorted((p.kind, p.severity, p.record_id, p.line) for p in report.problems)
    expected = sorted([
        ("unparseable_line", "error", None, 2),
        ("not_an_object", "error", None, 3),
        ("missing_id", "warning", "1", 4),
        ("bad_id", "error", "2", 5),
        ("duplicate_id", "error", "ok1", 6),
        ("unknown_format", "error", "noconv", 7),
        ("malformed_turn", "error", "malformed", 8),
        ("empty_turn", "error", "empty", 9),
        ("bad_role", "error", "role", 10),
        ("roles_out_of_order", "error", "order", 11),
        ("image_placeholder_mismatch", "error", "ph", 12),
        ("image_placeholder_mismatch", "warning", "ph_warn", 13),
        ("bad_image_field", "error", "field", 14),
        ("unsafe_image_path", "error", "abs", 15),
        ("unsafe_image_path", "error", "escape", 16),
        ("unsafe_image_path", "error", "link", 17),
        ("missing_image", "error", "missing", 18),
        ("unreadable_image", "error", "notimg", 19),
        ("unreadable_image", "error", "dir", 20),
        ("corrupt_image", "error", "cutpng", 21),
        ("corrupt_image", "error", "cutjpg", 22),
        ("corrupt_image", "error", "cuthead", 24),
    ])
    assert got == expected
    bad_ids = {"2", "noconv", "malformed", "empty", "role", "order", "ph", "field", "abs", "escape",
               "link", "missing", "notimg", "dir", "cutpng", "cutjpg", "cuthead"}
    first_ok1, second_ok1 = [r.index for r in pool.records if r.id == "ok1"]
    # The duplicate (second "ok1") is bad, the first one is kept.
    assert report.bad_indices == {r.index for r in pool.records if r.id in bad_ids} | {second_ok1}
    assert first_ok1 not in report.bad_indices
    assert {r.id for r in report.good_records(pool)} == {"ok1", "1", "ph_warn", "padded"}
    assert report.n_errors == 20 and report.n_warnings == 2
    assert set(report.counts_by_kind()) <= set(KINDS)
    assert secret not in opened and not any(str(outside) in str(p) for p in opened)
    assert str(images / "set" / "good.png") in opened  # the spy did see the files that were checked
    json.dumps(report.to_dict())  # serialisable


def test_clean_pool_has_no_problems(tiny_llava_pool, tmp_path):
    path, images = tiny_llava_pool
    report = validate_pool(read_pool(path), images)
    assert report.problems == [] and report.bad_indices == set() and report.n_errors == 0
    assert report.checked_images and "OK: no problems in 6 records" in report.format_text()
    assert report.tasks == {"shapes": 3, "colors": 2, "all": 1}
    assert "tasks: shapes 3, colors 2, all 1" in report.format_text()
    # Same records as JSONL with a system turn and user/assistant spelled out: still clean.
    recs = json.loads(path.read_text())
    recs[5]["conversations"] = conv("Be brief.", "Say hi.", "Hi!", roles=["system", "user", "assistant"])
    _jsonl(tmp_path / "p.jsonl", recs)
    assert validate_pool(read_pool(tmp_path / "p.jsonl"), images, decode_images=True).problems == []


def test_placeholder_rules(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "a.png")
    recs = [
        {"id": "text_ph", "conversations": ONE},
        {"id": "in_answer", "image": "a.png", "conversations": conv("<image>\nQ", "see <image>")},
        {"id": "two_none", "images": ["a.png", "a.png"], "conversations": conv("Q", "A")},
        {"id": "later_turn", "image": "a.png", "conversations": conv("Q", "A", "<image> Q2", "A2")},
    ]
    (tmp_path / "p.json").write_text(json.dumps(recs))
    report = validate_pool(read_pool(tmp_path / "p.json"), images)
    assert [(p.record_id, p.severity) for p in report.problems] == [
        ("text_ph", "error"), ("in_answer", "error"), ("two_none", "error")]
    assert all(p.kind == "image_placeholder_mismatch" for p in report.problems)


def test_roles_rule(tmp_path):
    recs = [
        {"id": "starts_gpt", "conversations": conv("A", "Q", roles=["gpt", "human"])},
        {"id": "two_system", "conversations": conv("s", "s", "Q", "A", roles=["system", "system", "human", "gpt"])},
        {"id": "only_system", "conversations": conv("s", roles=["system"])},
        {"id": "ok_case", "conversations": conv("Q", "A", roles=["Human", "GPT"])},
    ]
    (tmp_path / "p.json").write_text(json.dumps(recs))
    report = validate_pool(read_pool(tmp_path / "p.json"), None)
    assert [(p.kind, p.record_id) for p in report.problems] == [
        ("roles_out_of_order", "starts_gpt"), ("roles_out_of_order", "two_system"),
        ("roles_out_of_order", "only_system")]


def test_without_file_checks(tmp_path):
    recs = [{"id": str(k), "image": p, "conversations": ONE}
            for k, p in enumerate(["x/missing.png", "/abs.png", "../up.png", "a/../../up.png", "a/../b.png"])]
    (tmp_path / "p.json").write_text(json.dumps(recs))
    pool = read_pool(tmp_path / "p.json")
    for report in (validate_pool(pool, None), validate_pool(pool, tmp_path, check_images=False)):
        assert [(p.kind, p.record_id) for p in report.problems] == [
            ("unsafe_image_path", "1"), ("unsafe_image_path", "2"), ("unsafe_image_path", "3")]
        assert not report.checked_images
    report = validate_pool(pool, tmp_path / "nowhere")
    assert f"the images folder {tmp_path / 'nowhere'} does not exist" in report.format_text()


def test_format_text_caps_listing(tmp_path):
    recs = [{"id": f"r{k}", "image": f"x/{k}.png", "conversations": ONE} for k in range(25)]
    (tmp_path / "p.json").write_text(json.dumps(recs))
    report = validate_pool(read_pool(tmp_path / "p.json"), tmp_path)
    text = report.format_text()
    assert "error missing_image (25):" in text and "... and 5 more" in text
    assert "'r19'" in text and "'r20'" not in text
    assert report.to_dict()["counts_by_kind"] == {"missing_image": 25}


def test_resolve_image(tmp_path):
    base = tmp_path / "imgs"
    (base / "a").mkdir(parents=True)
    assert resolve_image(base, "a/x.png") == (base / "a" / "x.png").resolve()
    assert resolve_image(base, "a/../y.png") == (base / "y.png").resolve()
    os.symlink(tmp_path, base / "up")
    os.symlink(base / "a", base / "inside")
    assert resolve_image(base, "inside/z.png") == (base / "a" / "z.png").resolve()
    # The OS follows a symlink before "..": "deep/../x" is the parent of where deep points, outside here.
    (tmp_path / "out" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "out" / "sub", base / "deep")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_image(base, "deep/../x.png")
    with pytest.raises(UnsafePathError, match="outside"):
        resolve_image(base, "deep/x.png")
    for bad in ["/etc/passwd", "../x.png", "a/../../x.png", "up/x.png", "C:\\x.png", "\\\\srv\\x.png", "", ".",
                "a\x00.png"]:
        with pytest.raises(UnsafePathError):
            resolve_image(base, bad)
    assert issubclass(UnsafePathError, ValueError)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(validate_command)
    return app


def test_validate_command_exit_codes(tiny_llava_pool, tmp_path):
    path, images = tiny_llava_pool
    runner = CliRunner()
    ok = runner.invoke(_app(), [str(path), "--images", str(images)])
    assert ok.exit_code == 0, ok.output
    assert "OK: no problems in 6 records" in ok.output

    recs = json.loads(path.read_text())
    recs[1]["image"] = "shapes/gone.jpg"
    recs[2]["id"] = recs[0]["id"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs))
    res = runner.invoke(_app(), [str(bad), "--images", str(images)])
    assert res.exit_code == 1
    assert "missing_image (1)" in res.output and "duplicate_id (1)" in res.output

    res = runner.invoke(_app(), [str(bad), "--images", str(images), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["counts_by_kind"] == {"duplicate_id": 1, "missing_image": 1} and report["n_bad_records"] == 2

    # Warnings only: exit 0.
    recs = json.loads(path.read_text())
    del recs[0]["id"]
    warn = tmp_path / "warn.json"
    warn.write_text(json.dumps(recs))
    res = runner.invoke(_app(), [str(warn), "--images", str(images)])
    assert res.exit_code == 0 and "missing_id (1)" in res.output

    # No --images: relative to the data file's folder, and said so (here images/ is one level down: all missing).
    res = runner.invoke(_app(), [str(path)])
    assert res.exit_code == 1 and "relative to the data file's folder" in res.output
    assert "missing_image (6)" in res.output and f"try --images {images.resolve()}" in res.output
    assert runner.invoke(_app(), [str(path), "--no-check-images"]).exit_code == 0

    res = runner.invoke(_app(), [str(tmp_path / "nope.json")])
    assert res.exit_code == 1 and "not found" in res.output
