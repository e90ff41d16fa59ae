"""A second real-image pool, unlike easy-vqa: scikit-learn's handwritten digits with part of the answers flipped.

scikit-learn ships 1,797 grey 8x8 scans of handwritten digits (``sklearn.datasets.load_digits``, no download).
Each becomes one single-turn record, ``"Which digit is written in the image?"`` -> ``"7"``, with the scan
upscaled to 64x64 (nearest neighbour, so the pixels stay blocky, as the scans are). A seeded share of the
records gets a wrong digit instead of the true one; each record carries its truth under ``digits`` (``{"defect":
"wrong_answer" | "none", "true_label": 7}``), readable with ``--truth-field digits``.

The pool is meant as the case the bundled proxy's pretrained base was not made for (it learnt shapes, colours
and printed words, never handwriting), so the warm-up's image-shuffle test and the cleaners can be checked on
images the base cannot read. The images are split by a seeded permutation into a pool part and an evaluation
part that share no scan.

Layout written::

    out_dir/pool.json            the pool (LLaVA JSON list)
    out_dir/eval.json            held-out records (clean answers), when ``n_eval > 0``
    out_dir/images/<i>.png       one PNG per scan, named by its index in ``load_digits``
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

QUESTION = "Which digit is written in the image?"
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_SIZE = 64
TRUTH_FIELD = "digits"


def _scan_to_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 scan with values 0..16 (ink high) as black ink on white, upscaled to ``IMAGE_SIZE``."""
    grey = (255 - np.round(pixels.reshape(8, 8) * (255 / 16))).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST)


def _record(index: int, answer: int, true_label: int) -> dict:
    return {
        "id": f"digit-{index:04d}",
        "image": f"{index}.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTION + PROMPT_SUFFIX},
            {"from": "gpt", "value": str(answer)},
        ],
        TRUTH_FIELD: {"defect": "none" if answer == true_label else "wrong_answer", "true_label": true_label},
    }


def _wrong_digit(label: int, rng: np.random.Generator) -> int:
    return int((label + rng.integers(1, 10)) % 10)


def build_digits_pool(out_dir: str | os.PathLike, *, n_eval: int = 300, flip_share: float = 0.2,
                      seed: int = 0) -> Path:
    """Write the digits pool (and an evaluation file of ``n_eval`` clean held-out records); return the pool path.

    ``flip_share`` of the pool's records (rounded down, chosen with ``seed``) answer a wrong digit, uniform over
    the nine others. The evaluation records are never flipped.
    """
    from sklearn.datasets import load_digits

    if not 0.0 <= flip_share < 1.0:
        raise ValueError(f"flip_share must be in [0, 1), got {flip_share}")
    digits = load_digits()
    n = len(digits.target)
    if not 0 <= n_eval < n:
        raise ValueError(f"n_eval must be in [0, {n}), got {n_eval}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    eval_part, pool_part = order[:n_eval], order[n_eval:]
    flipped = set(rng.choice(pool_part, size=int(flip_share * len(pool_part)), replace=False).tolist())
    for i in order:
        _scan_to_image(digits.images[i]).save(images / f"{i}.png")
    pool = []
    for i in sorted(pool_part.tolist()):
        label = int(digits.target[i])
        pool.append(_record(i, _wrong_digit(label, rng) if i in flipped else label, label))
    evaluation = [_record(i, int(digits.target[i]), int(digits.target[i])) for i in sorted(eval_part.tolist())]
    pool_path = out_dir / "pool.json"
    pool_path.write_text(json.dumps(pool, indent=1) + "\n", encoding="utf-8")
    if n_eval:
        (out_dir / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n", encoding="utf-8")
    log.info("digits pool: %d records (%d with a wrong digit), %d evaluation records, images under %s",
             len(pool), len(flipped), len(evaluation), images)
    return pool_path
