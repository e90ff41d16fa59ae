"""The bundled easy-vqa pool: LLaVA format, clean under validate, deterministic, grouped by question type."""

from __future__ import annotations

from collections import Counter

import easy_vqa
import pytest

from mmsift.data.easyvqa import build_easyvqa_pool, question_type
from mmsift.data.io import read_pool
from mmsift.data.tasks import task_of
from mmsift.data.validate import validate_pool


def test_pool_is_valid_llava(tmp_path):
    path = build_easyvqa_pool(tmp_path, n_images=40, seed=3)
    pool = read_pool(path)
    report = validate_pool(pool, tmp_path / "images", decode_images=True)
    assert report.problems == [], report.format_text()
    assert len({r.images[0].rsplit("/", 1)[1] for r in pool.records}) == 40  # 40 distinct images
    for rec in pool.records:
        assert list(rec.raw) == ["id", "image", "conversations", "source"]
        assert rec.turns[0].text.startswith("<image>\n")
        assert sum(t.text.count("<image>") for t in rec.turns) == 1  # first human turn only
        assert task_of(rec) == task_of(rec, "source") == rec.raw["source"]
        # Every answer has the record's question type.
        answers = [t.text.lower() for t in rec.turns if t.role == "assistant"]
        assert {question_type(a) for a in answers} == {rec.raw["source"]}
    rounds = Counter(r.n_rounds for r in pool.records)
    assert rounds[1] > 0 and sum(v for k, v in rounds.items() if k > 1) > 0  # single- and multi-turn
    assert set(r.raw["source"] for r in pool.records) == {"shape", "color", "yesno"}


def test_answers_match_the_package(tmp_path):
    questions, answers, image_ids = easy_vqa.get_test_questions()
    truth = {(i, q[:1].upper() + q[1:]): a for q, a, i in zip(questions, answers, image_ids)}
    pool = read_pool(build_easyvqa_pool(tmp_path, n_images=10, seed=0, split="test"))
    for rec in pool.records:
        image_id = int(rec.images[0].rsplit("/", 1)[1][:-4])
        for q, a in zip(rec.turns[::2], rec.turns[1::2]):
            question = q.text.removeprefix("<image>\n").split("\n")[0]
            assert truth[(image_id, question)] == a.text.lower()


def test_deterministic(tmp_path):
    a = build_easyvqa_pool(tmp_path / "a", n_images=25, seed=7)
    b = build_easyvqa_pool(tmp_path / "b", n_images=25, seed=7)
    c = build_easyvqa_pool(tmp_path / "c", n_images=25, seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png")) == \
        sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))


def test_images_are_copies(tmp_path):
    # Corrupting a pool image (as the bench does) must leave the easy-vqa package's files alone.
    pool = read_pool(build_easyvqa_pool(tmp_path, n_images=3, seed=1))
    image = tmp_path / "images" / pool.records[0].images[0]
    original = easy_vqa.get_train_image_paths()[int(image.stem)]
    assert image.stat().st_nlink == 1 and not image.is_symlink()
    before = open(original, "rb").read()
    image.write_bytes(b"broken")
    assert open(original, "rb").read() == before


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        build_easyvqa_pool(tmp_path, n_images=5, split="val")
    with pytest.raises(ValueError, match="n_images"):
        build_easyvqa_pool(tmp_path, n_images=0)


def test_pools_never_use_the_base_images(tmp_path):
    """Pools draw from train ids 0-999; ids 1000-3999 pretrain the base (mmsift.probe.pretrain)."""
    from mmsift.bench.pool import build_clean_records
    from mmsift.data.easyvqa import BASE_IMAGE_IDS, POOL_IMAGE_IDS

    assert not set(POOL_IMAGE_IDS) & set(BASE_IMAGE_IDS)
    pool = read_pool(build_easyvqa_pool(tmp_path / "demo", n_images=len(POOL_IMAGE_IDS), seed=0))
    ids = {int(r.images[0].rsplit("/", 1)[1].split(".")[0]) for r in pool.records}
    assert ids == set(POOL_IMAGE_IDS)
    with pytest.raises(ValueError, match="n_images"):
        build_easyvqa_pool(tmp_path / "x", n_images=len(POOL_IMAGE_IDS) + 1, seed=0)
    bench = build_clean_records(tmp_path / "bench", n_images=50, n_ocr=2, seed=0)
    assert all(int(r["image"].split("/")[1].split(".")[0]) in POOL_IMAGE_IDS
               for r in bench if r["image"].startswith("easyvqa/"))
