"""The bundled real pool: LLaVA-format records built from the ``easy-vqa`` package (shapes, colours, yes/no).

Each chosen image gives, per question type it has questions of (``shape``, ``color``, ``yesno``), one record:
a multi-turn conversation of that type's questions (2 to 4 rounds) when the image has at least two, and a
single-turn record otherwise. A record's ``source`` is its question type and its image path's top folder is the
same type, so :func:`mmsift.data.tasks.task_of` groups records by question type with or without
``task_field="source"``.

Layout written (pass ``out_dir / "images"`` as the images folder)::

    out_dir/easyvqa_<split>.json                   the pool (a JSON list)
    out_dir/images/<type>/<split>/<image id>.png   copies of the package's images
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

# The easy-vqa answer vocabulary (easy_vqa.get_answers()), by question type.
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
YES_NO = ("yes", "no")
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
MAX_ROUNDS = 4
# Short words and numbers for the OCR task: few enough that a tiny model can learn to read them.
OCR_WORDS = ("cat", "dog", "sun", "map", "red", "box", "key", "pen", "cup", "hat",
             "12", "47", "85", "306", "2024", "71")
IMAGE_SIZE = 64  # easy-vqa images are 64 x 64
OCR_QUESTION = "What text is written in the image?"
DESCRIBE_QUESTION = "Describe the image."
# The train split is cut in two by image id: pools (the demo's, the bench's) draw from the first 1,000 images,
# the pretrained base (mmsift.probe.pretrain) learns from the other 3,000, so no pool image is seen in pretraining.
POOL_IMAGE_IDS = range(0, 1000)
BASE_IMAGE_IDS = range(1000, 4000)
# Multiple choice in LLaVA-1.5's format: the question, one lettered option per line, this instruction.
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = ("A", "B", "C", "D", "E")


def question_type(answer: str) -> str:
    """``shape``, ``color`` or ``yesno``, read off the answer (easy-vqa answers are single words)."""
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    if answer in YES_NO:
        return "yesno"
    raise ValueError(f"answer {answer!r} is not an easy-vqa answer")


def options_for(qtype: str) -> tuple[str, ...]:
    return SHAPES if qtype == "shape" else COLORS if qtype == "color" else YES_NO


def mc_prompt(question: str, options: list[str], letters=LETTERS) -> str:
    lines = [question] + [f"{letter}. {opt}" for letter, opt in zip(letters, options)] + [MC_INSTRUCTION]
    return "\n".join(lines)


def make_mc_options(answer: str, rng: np.random.Generator) -> list[str]:
    """3 to 5 options (all 3 for shapes) including ``answer``, in random order."""
    pool = list(options_for(question_type(answer)))
    n = len(pool) if len(pool) <= 3 else int(rng.integers(3, 6))
    others = [o for o in pool if o != answer]
    chosen = [answer] + [others[i] for i in rng.permutation(len(others))[: n - 1]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _load(split: str):
    import easy_vqa

    if split == "train":
        return easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    if split == "test":
        return easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _conversation(qas: list[tuple[str, str]]) -> list[dict]:
    turns = []
    for k, (q, a) in enumerate(qas):
        question = q[:1].upper() + q[1:]
        prefix = "<image>\n" if k == 0 else ""
        turns.append({"from": "human", "value": f"{prefix}{question}{PROMPT_SUFFIX}"})
        turns.append({"from": "gpt", "value": a[:1].upper() + a[1:]})
    return turns


def _place(src: str, dst: Path) -> None:
    # A copy, never a hard link: callers corrupt pool images on purpose (the bench), which must not reach the
    # package's own files.
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def build_easyvqa_pool(out_dir: str | os.PathLike, *, n_images: int, seed: int = 0, split: str = "train") -> Path:
    """Write a LLaVA-format pool of ``n_images`` easy-vqa images (chosen with ``seed``); return the JSON path.

    Deterministic: the same ``n_images``, ``seed`` and ``split`` give the same file.
    """
    (texts, answers, image_ids), paths = _load(split)
    available = sorted(i for i in paths if split != "train" or i in POOL_IMAGE_IDS)
    if not 0 < n_images <= len(available):
        raise ValueError(f"n_images must be in 1..{len(available)} for split {split!r}, got {n_images}")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(available, n_images))
    by_image: dict[int, dict[str, list[tuple[str, str]]]] = {i: {} for i in chosen}
    for text, answer, image_id in zip(texts, answers, image_ids):
        groups = by_image.get(image_id)
        if groups is not None:
            groups.setdefault(question_type(answer), []).append((text, answer))

    out_dir = Path(out_dir)
    records = []
    for image_id in chosen:
        for qtype in sorted(by_image[image_id]):
            qas = by_image[image_id][qtype]
            rng.shuffle(qas)
            n_rounds = min(len(qas), rng.randint(2, MAX_ROUNDS)) if len(qas) >= 2 else 1
            relpath = f"{qtype}/{split}/{image_id}.png"
            _place(paths[image_id], out_dir / "images" / relpath)
            records.append({
                "id": f"easyvqa-{split}-{image_id}-{qtype}",
                "image": relpath,
                "conversations": _conversation(qas[:n_rounds]),
                "source": qtype,
            })
    out = out_dir / f"easyvqa_{split}.json"
    out.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d records over %d easy-vqa %s images to %s", len(records), n_images, split, out)
    return out


@dataclass
class ImageFacts:
    """What the easy-vqa questions reveal about one image: its shape and colour (None when no question says)."""

    shape: str | None
    color: str | None


def image_facts(questions: list[str], answers: list[str]) -> ImageFacts:
    shape = color = None
    for q, a in zip(questions, answers):
        t = question_type(a)
        if t == "shape":
            shape = a
            m = re.search(r"\b(" + "|".join(COLORS) + r")\b", q)
            color = color or (m.group(1) if m else None)
        elif t == "color":
            color = a
            m = re.search(r"\b(" + "|".join(SHAPES) + r")\b", q)
            shape = shape or (m.group(1) if m else None)
    return ImageFacts(shape, color)


def describe(facts: ImageFacts) -> str:
    return f"A {facts.color} {facts.shape}."


def render_text(word: str, rng: np.random.Generator, background: Image.Image | None = None) -> Image.Image:
    """``word`` in PIL's bundled font, dark on a light canvas (or on an easy-vqa image), at a random spot."""
    if background is None:
        shade = int(rng.integers(200, 256))
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (shade, shade, shade))
    else:
        img = background.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=18)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    w, h = right - left, bottom - top
    x = int(rng.integers(0, max(1, IMAGE_SIZE - w))) - left
    y = int(rng.integers(0, max(1, IMAGE_SIZE - h))) - top
    draw.rectangle((x + left - 1, y + top - 1, x + right + 1, y + bottom + 1), fill=(255, 255, 255))
    draw.text((x, y), word, fill=(0, 0, 0), font=font)
    return img
