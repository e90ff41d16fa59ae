"""Bench pool and defect injection: rates, truth fields, what each defect does, determinism."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mmsift.bench.defects import DefectRates, corrupt_text, inject, rephrase
from mmsift.bench.pool import (COLORS, LETTERS, SHAPES, build_bench_pool, build_clean_records, question_type)


def _answers(rec):
    return [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]


def _questions(rec):
    return [t["value"] for t in rec["conversations"] if t["from"] == "human"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return out, build_clean_records(out, n_images=40, n_ocr=20, seed=3)


def test_clean_records_formats(clean):
    out, recs = clean
    kinds = {r["bench"]["kind"] for r in recs}
    assert kinds == {"multi", "single", "mc", "ocr"}
    for r in recs:
        assert (out / "images" / r["image"]).is_file()
        assert r["conversations"][0]["value"].startswith("<image>\n")
        assert r["bench"] == {"defect": "none", "dup_of": None, "kind": r["bench"]["kind"],
                              "qtypes": r["bench"]["qtypes"]}
        if r["bench"]["kind"] == "mc":
            q, a = _questions(r)[0], _answers(r)[0]
            opts = [line[3:] for line in q.split("\n") if line[:2] in {f"{x}." for x in LETTERS}]
            assert 3 <= len(opts) <= 5 and a in LETTERS[: len(opts)]
            assert q.endswith("Answer with the option's letter from the given choices directly.")
            # The lettered option is one of the type's answers, of the same type for every option.
            assert len({question_type(o) for o in opts}) == 1
        if "describe" in r["bench"]["qtypes"]:
            color, shape = _answers(r)[-1].rstrip(".").split()[-2:]
            assert color in COLORS and shape in SHAPES


def test_inject_rates_and_truth(tmp_path, clean):
    out, recs = clean
    import copy
    import shutil

    shutil.copytree(out / "images", tmp_path / "images")
    base = copy.deepcopy(recs)
    rates = DefectRates(wrong_answer=0.2, hallucination=0.25, ocr_corrupt=0.5, noise=0.1, duplicate=0.1,
                        near_duplicate=0.05)
    pool = inject(copy.deepcopy(recs), tmp_path / "images", rates=rates, seed=1)
    n = len(base)
    by_id = {r["id"]: r for r in base}
    defects = [r["bench"]["defect"] for r in pool]
    n_vqa = sum(r["bench"]["kind"] != "ocr" for r in base)
    n_desc = sum("describe" in r["bench"]["qtypes"] for r in base)
    n_ocr = sum(r["bench"]["kind"] == "ocr" for r in base)
    assert defects.count("wrong_answer") == round(0.2 * n_vqa)
    assert defects.count("hallucination") == round(0.25 * n_desc)
    assert defects.count("ocr_corrupt") == round(0.5 * n_ocr)
    assert defects.count("noise") == round(0.1 * n)
    assert defects.count("duplicate") == round(0.1 * n)
    assert defects.count("near_duplicate") == round(0.05 * n)
    assert len(pool) == n + round(0.1 * n) + round(0.05 * n)
    assert len({r["id"] for r in pool}) == len(pool)
    for r in pool:
        d = r["bench"]["defect"]
        orig = by_id.get(r["id"]) or by_id[r["bench"]["dup_of"]]
        if d == "none":
            assert r == orig
        elif d == "wrong_answer":
            changed = [(a, b) for a, b in zip(_answers(orig), _answers(r)) if a != b]
            assert changed and all(not a.startswith("A ") for a, _ in changed)
            for a, b in changed:
                assert (a in LETTERS and b in LETTERS) or question_type(a) == question_type(b)
        elif d == "hallucination":
            true_c, true_s = _answers(orig)[-1].rstrip(".").split()[-2:]
            c, s = _answers(r)[-1].rstrip(".").split()[-2:]
            assert c in COLORS and s in SHAPES and c != true_c and s != true_s
            assert _answers(r)[:-1] == _answers(orig)[:-1]
        elif d == "ocr_corrupt":
            assert _answers(r)[0] != _answers(orig)[0]
        elif d == "noise":
            assert all(b.startswith(a + " ") and len(b) > len(a) + 1 for a, b in zip(_answers(orig), _answers(r)))
        elif d == "duplicate":
            assert r["conversations"] == orig["conversations"] and r["image"] == orig["image"]
            assert orig["bench"]["defect"] == "none"
        elif d == "near_duplicate":
            assert _answers(r) == _answers(orig)
            assert _questions(r)[0] != _questions(orig)[0]
            a = np.asarray(Image.open(tmp_path / "images" / orig["image"]).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "images" / r["image"]).convert("RGB"), dtype=np.int16)
            assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 30
        if d not in ("duplicate", "near_duplicate"):
            assert r["bench"]["dup_of"] is None


def test_same_seed_same_pool(tmp_path):
    a = build_bench_pool(tmp_path / "a", n_images=15, n_ocr=5, seed=7)
    b = build_bench_pool(tmp_path / "b", n_images=15, n_ocr=5, seed=7)
    c = build_bench_pool(tmp_path / "c", n_images=15, n_ocr=5, seed=8)
    assert a.read_text() == b.read_text()
    assert a.read_text() != c.read_text()


def test_pool_reads_back_with_truth(tmp_path):
    from mmsift.data.io import read_pool

    path = build_bench_pool(tmp_path, n_images=10, n_ocr=4, seed=0)
    pool = read_pool(path)
    assert not pool.problems
    assert len(pool.records) == len(json.loads(path.read_text()))
    assert all("defect" in r.raw["bench"] for r in pool.records)
    assert {r.images[0].split("/")[0] for r in pool.records} == {"easyvqa", "ocr"}


def test_corrupt_text_and_rephrase():
    rng = np.random.default_rng(0)
    for word in ("cat", "2024", "12"):
        for _ in range(20):
            bad = corrupt_text(word, rng)
            assert bad != word and (bad.isdigit() == word.isdigit())
    assert rephrase("what color is the shape?") == "what is the color of the shape?"
    assert rephrase("is there a red shape?") == "does the image have a red shape?"
    assert rephrase("odd question?") == "Please answer: odd question?"


def test_bad_rate():
    with pytest.raises(ValueError, match="noise"):
        DefectRates(noise=1.5)


def test_validation_split_uses_pool_range_images_the_pool_does_not(tmp_path):
    """PresetConfig(validation=True): the evaluation items come from pool-range train images this pool leaves out."""
    import dataclasses

    from mmsift.bench.preset import PresetConfig, prepare_preset
    from mmsift.data.easyvqa import POOL_IMAGE_IDS

    cfg = SimpleNamespace(seed=3, preset=dataclasses.replace(PresetConfig(n_images=30, n_ocr=4, eval_per_type=20,
                                                                           eval_mc=0, eval_ocr=2),
                                                              validation=True))
    inputs = prepare_preset(cfg, tmp_path)
    pool = json.loads(inputs.pool_path.read_text())
    pool_ids = {int(Path(r["image"]).stem.split("_")[0]) for r in pool if r["image"].startswith("easyvqa/")}
    eval_ids = {int(Path(x.image).stem) for x in inputs.items if x.image.startswith("test/")}
    assert len(pool_ids) == 30 and len(eval_ids) >= 20
    assert eval_ids.isdisjoint(pool_ids) and eval_ids <= set(POOL_IMAGE_IDS)
    assert "validation" in inputs.eval_summary
    # Without the flag the items are easy-vqa test images (the test split, whose ids also start at 0).
    test = prepare_preset(SimpleNamespace(seed=3, preset=PresetConfig(n_images=30, n_ocr=4, eval_per_type=20,
                                                                       eval_mc=0, eval_ocr=2)), tmp_path / "t")
    assert "test items" in test.eval_summary
