"""The benchmark pool: easy-vqa train images and questions as LLaVA conversations, plus an OCR task.

Every image yields three records: a multi-turn conversation (up to three questions, and a "describe the image"
turn when the image's shape and colour are known), a single-turn question and, when the image has a shape or
colour question, a multiple-choice version of it (3 to 5 lettered options, the answer is the letter). The OCR
task renders a short word on a blank canvas or on an easy-vqa image. Each record carries its ground truth in a
``bench`` field (``defect``, ``dup_of``, ``kind``); mmsift keeps unknown fields, so the truth travels with the
records into every subset. Defects are added by :mod:`mmsift.bench.defects`.

The easy-vqa *test* split is the evaluation set (:mod:`mmsift.bench.evaluate`); nothing here reads it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mmsift.data.easyvqa import (COLORS, DESCRIBE_QUESTION, IMAGE_SIZE, LETTERS, OCR_QUESTION,  # noqa: F401
                                 OCR_WORDS, POOL_IMAGE_IDS, SHAPES, YES_NO, ImageFacts, describe, image_facts,
                                 make_mc_options, mc_prompt, question_type, render_text)

log = logging.getLogger(__name__)


def conversation(turns: list[tuple[str, str]]) -> list[dict]:
    """LLaVA ``conversations``: the image placeholder opens the first human turn."""
    out = []
    for i, (q, a) in enumerate(turns):
        out.append({"from": "human", "value": ("<image>\n" + q) if i == 0 else q})
        out.append({"from": "gpt", "value": a})
    return out


def truth(kind: str, qtypes: list[str]) -> dict:
    return {"defect": "none", "dup_of": None, "kind": kind, "qtypes": qtypes}


def ocr_items(n: int, *, seed: int, background_paths: list[str] = ()) -> list[tuple[str, Image.Image]]:
    """``n`` (word, image) pairs; every second one drawn on an easy-vqa image when backgrounds are given."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        word = OCR_WORDS[int(rng.integers(len(OCR_WORDS)))]
        bg = None
        if background_paths and i % 2 == 1:
            bg = Image.open(background_paths[int(rng.integers(len(background_paths)))])
        out.append((word, render_text(word, rng, bg)))
    return out


def _by_image(questions, answers, image_ids) -> dict[int, list[tuple[str, str]]]:
    grouped: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in zip(questions, answers, image_ids):
        grouped.setdefault(int(i), []).append((q, a))
    return grouped


def build_clean_records(out_dir: Path, *, n_images: int, n_ocr: int, seed: int) -> list[dict]:
    """Clean records (no defect yet) for ``n_images`` sampled easy-vqa train images and ``n_ocr`` OCR images.

    Images are copied (or rendered) into ``out_dir/images/{easyvqa,ocr}/`` so that the image path's top folder
    names the task (``mmsift.data.tasks.task_of``).
    """
    import easy_vqa

    rng = np.random.default_rng(seed)
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    grouped = _by_image(questions, answers, image_ids)
    # Only the pool share of the train images: the rest pretrains the bundled base (mmsift.probe.pretrain).
    all_ids = np.array(sorted(i for i in grouped if i in POOL_IMAGE_IDS))
    chosen = np.sort(rng.choice(all_ids, size=min(n_images, len(all_ids)), replace=False))
    img_dir = out_dir / "images"
    (img_dir / "easyvqa").mkdir(parents=True, exist_ok=True)
    (img_dir / "ocr").mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    for img_id in chosen:
        img_id = int(img_id)
        rel = f"easyvqa/{img_id}.png"
        shutil.copyfile(paths[img_id], img_dir / rel)
        qa = grouped[img_id]
        order = rng.permutation(len(qa))
        qa = [qa[i] for i in order]
        facts = image_facts([q for q, _ in qa], [a for _, a in qa])
        # The multi-turn record asks the image's shape and colour questions (up to three) where it has them:
        # easy-vqa is ~74% yes/no, and yes/no questions have a strong text-only prior (about 84% on the test
        # split), so a pool dominated by them trains a model that never looks at the image.
        by_type: dict[str, list[tuple[str, str]]] = {}
        for q, a in qa:
            by_type.setdefault(question_type(a), []).append((q, a))
        open_qs = by_type.get("shape", [])[:2] + by_type.get("color", [])[:2]
        multi = (open_qs or by_type.get("yesno", [])[:1])[:3]
        qa = multi + [x for x in qa if x not in multi]
        turns = list(multi)
        if facts.shape and facts.color:
            turns.append((DESCRIBE_QUESTION, describe(facts)))
        qtypes = [question_type(a) for _, a in multi] + (["describe"] if len(turns) > len(multi) else [])
        records.append({"id": f"vqa-{img_id}-multi", "image": rel, "conversations": conversation(turns),
                        "bench": truth("multi", qtypes)})
        rest = qa[len(multi):] or qa
        # The single-turn record also prefers an open (shape/colour) question, for the same reason.
        q, a = next((x for x in rest if question_type(x[1]) != "yesno"), rest[0])
        records.append({"id": f"vqa-{img_id}-single", "image": rel, "conversations": conversation([(q, a)]),
                        "bench": truth("single", [question_type(a)])})
        mc_cands = [(q, a) for q, a in rest[1:] + multi if question_type(a) != "yesno"]
        if mc_cands:
            q, a = mc_cands[0]
            opts = make_mc_options(a, rng)
            letter = LETTERS[opts.index(a)]
            records.append({"id": f"vqa-{img_id}-mc", "image": rel,
                            "conversations": conversation([(mc_prompt(q, opts), letter)]),
                            "bench": truth("mc", [question_type(a)])})

    backgrounds = [paths[int(i)] for i in chosen]
    for k, (word, img) in enumerate(ocr_items(n_ocr, seed=seed + 1, background_paths=backgrounds)):
        rel = f"ocr/{k}.png"
        img.save(img_dir / rel)
        records.append({"id": f"ocr-{k}", "image": rel, "conversations": conversation([(OCR_QUESTION, word)]),
                        "bench": truth("ocr", ["ocr"])})
    return records


def write_pool(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def build_bench_pool(out_dir, *, n_images: int = 400, n_ocr: int = 120, seed: int = 0,
                     rates=None) -> Path:
    """Clean pool + seeded defects (see :func:`mmsift.bench.defects.inject`), written as ``out_dir/pool.json``.

    Images land under ``out_dir/images``. Returns the pool path.
    """
    from mmsift.bench.defects import DefectRates, inject

    out_dir = Path(out_dir)
    records = build_clean_records(out_dir, n_images=n_images, n_ocr=n_ocr, seed=seed)
    records = inject(records, out_dir / "images", rates=rates or DefectRates(), seed=seed + 2)
    log.info("bench pool: %d records (%d images, %d OCR)", len(records), n_images, n_ocr)
    return write_pool(records, out_dir / "pool.json")
