"""Known defects injected into the benchmark pool, with the truth recorded on every record.

Each rate is a fraction of the *eligible clean* records (rounded to nearest); a record gets at most one defect:

- ``wrong_answer`` (easy-vqa records): every short answer is swapped for another answer of the same type
  (another shape, colour, yes<->no; another option letter for multiple choice). The description turn is left.
- ``hallucination`` (records with a "Describe the image." turn): the description names a shape and a colour
  that are not the image's.
- ``ocr_corrupt`` (OCR records): the transcription gets one or two character edits.
- ``noise`` (any record): DataTailor-style noise disturbance, each answer is joined with the answer of another
  random record ("rectangle" -> "rectangle yes").
- ``duplicate`` (any clean record): an exact copy is added under a new id, ``dup_of`` names the original.
- ``near_duplicate`` (any clean record): a copy with the first question re-phrased and the image slightly
  altered (brightness scaled by 0.9-1.1 and a few pixels changed), saved as a new file.

Copies are added on top of the clean pool; the final pool is shuffled so copies are not next to their originals.
Everything is drawn from one seeded generator: same seed, same pool.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from mmsift.data.easyvqa import (COLORS, DESCRIBE_QUESTION, LETTERS, OCR_QUESTION, SHAPES, options_for,
                                 question_type)

log = logging.getLogger(__name__)

DEFECTS = ("none", "wrong_answer", "hallucination", "ocr_corrupt", "duplicate", "near_duplicate", "noise")
# Phrasings that mean the same question, used by the near-duplicate re-phrasing.
_REPHRASE = (
    ("what color is the shape?", "what is the color of the shape?"),
    ("what shape is in the image?", "what shape does the image contain?"),
    ("what shape is present?", "which shape is shown?"),
    ("is there a ", "does the image have a "),
    ("is there not a ", "is it true that there is no "),
    ("does the image contain a ", "is there a "),
    ("what color is the ", "what is the color of the "),
    ("what is the color of the ", "which color is the "),
)


@dataclass
class DefectRates:
    # Chosen on the validation split (benchmarks/preset_power_validation.py, docs/benchmark.md): at the earlier
    # 8% / 8% / 25% / 5% the base-trained target could not tell an oracle subset from a random one at 5% and
    # full-clean from full at all; at these rates it tells both apart at 5%, 15% and 30%.
    wrong_answer: float = 0.3
    hallucination: float = 0.3
    ocr_corrupt: float = 0.5
    noise: float = 0.1
    duplicate: float = 0.08
    near_duplicate: float = 0.08

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"defect rate {name}={value} must be in [0, 1]")


def _answers(rec: dict) -> list[int]:
    return [i for i, t in enumerate(rec["conversations"]) if t["from"] == "gpt"]


def _question_of(rec: dict, answer_pos: int) -> str:
    return rec["conversations"][answer_pos - 1]["value"]


def _wrong(rec: dict, rng: np.random.Generator) -> None:
    for pos in _answers(rec):
        turn = rec["conversations"][pos]
        q = _question_of(rec, pos)
        if q.endswith(DESCRIBE_QUESTION):
            continue
        if rec["bench"]["kind"] == "mc":
            n_opts = sum(1 for line in q.split("\n") if line[:2] in {f"{l}." for l in LETTERS})
            others = [l for l in LETTERS[:n_opts] if l != turn["value"]]
        else:
            others = [o for o in options_for(question_type(turn["value"])) if o != turn["value"]]
        turn["value"] = others[int(rng.integers(len(others)))]


def _hallucinate(rec: dict, rng: np.random.Generator) -> None:
    for pos in _answers(rec):
        if _question_of(rec, pos).endswith(DESCRIBE_QUESTION):
            true = rec["conversations"][pos]["value"].rstrip(".").split()
            shapes = [s for s in SHAPES if s != true[-1]]
            colors = [c for c in COLORS if c != true[-2]]
            rec["conversations"][pos]["value"] = (
                f"A {colors[int(rng.integers(len(colors)))]} {shapes[int(rng.integers(len(shapes)))]}."
            )


def corrupt_text(word: str, rng: np.random.Generator) -> str:
    """One or two character edits (substitute, delete or insert), always different from ``word``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz" if word.isalpha() else "0123456789"
    out = word
    while out == word:
        out = word
        for _ in range(int(rng.integers(1, 3))):
            op = int(rng.integers(3)) if len(out) > 1 else 2
            pos = int(rng.integers(len(out)))
            ch = alphabet[int(rng.integers(len(alphabet)))]
            out = (out[:pos] + ch + out[pos + 1:] if op == 0 else
                   out[:pos] + out[pos + 1:] if op == 1 else out[:pos] + ch + out[pos:])
    return out


def _ocr_corrupt(rec: dict, rng: np.random.Generator) -> None:
    for pos in _answers(rec):
        rec["conversations"][pos]["value"] = corrupt_text(rec["conversations"][pos]["value"], rng)


def _noise(rec: dict, rng: np.random.Generator, clean: list[dict]) -> None:
    for pos in _answers(rec):
        other = clean[int(rng.integers(len(clean)))]
        extra = other["conversations"][_answers(other)[0]]["value"]
        rec["conversations"][pos]["value"] = f"{rec['conversations'][pos]['value']} {extra}"


def rephrase(question: str) -> str:
    """A question with the same meaning, worded differently."""
    head, sep, body = question.rpartition("\n")
    for old, new in _REPHRASE:
        if body.startswith(old):
            return head + sep + new + body[len(old):]
    if body == OCR_QUESTION:
        return head + sep + "Read the text in the image."
    return head + sep + "Please answer: " + body


def alter_image(src: Path, dst: Path, rng: np.random.Generator, n_pixels: int = 4) -> None:
    img = Image.open(src).convert("RGB")
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    px = img.load()
    for _ in range(n_pixels):
        x, y = int(rng.integers(img.width)), int(rng.integers(img.height))
        px[x, y] = tuple(int(v) for v in rng.integers(0, 256, size=3))
    img.save(dst)


def _near_duplicate(rec: dict, images_dir: Path, rng: np.random.Generator, k: int) -> dict:
    dup = copy.deepcopy(rec)
    first = dup["conversations"][0]
    prefix = "<image>\n" if first["value"].startswith("<image>\n") else ""
    first["value"] = prefix + rephrase(first["value"][len(prefix):])
    stem, suffix = rec["image"].rsplit(".", 1)
    dup["image"] = f"{stem}_nd{k}.{suffix}"
    alter_image(images_dir / rec["image"], images_dir / dup["image"], rng)
    return dup


def inject(records: list[dict], images_dir, *, rates: DefectRates, seed: int) -> list[dict]:
    """Apply the defects to clean ``records`` (changed in place, copies added) and return the shuffled pool."""
    images_dir = Path(images_dir)
    rng = np.random.default_rng(seed)
    clean_snapshot = copy.deepcopy(records)
    free = set(range(len(records)))
    kinds = [r["bench"]["kind"] for r in records]
    eligible = {
        "wrong_answer": [i for i, k in enumerate(kinds) if k in ("multi", "single", "mc")],
        "hallucination": [i for i, r in enumerate(records) if "describe" in r["bench"]["qtypes"]],
        "ocr_corrupt": [i for i, k in enumerate(kinds) if k == "ocr"],
        "noise": list(range(len(records))),
    }
    for name, idx in eligible.items():
        n = int(round(getattr(rates, name) * len(idx)))
        cands = [i for i in idx if i in free]
        pick = [cands[j] for j in np.sort(rng.permutation(len(cands))[:n])]
        for i in pick:
            free.discard(i)
            rec = records[i]
            if name == "wrong_answer":
                _wrong(rec, rng)
            elif name == "hallucination":
                _hallucinate(rec, rng)
            elif name == "ocr_corrupt":
                _ocr_corrupt(rec, rng)
            else:
                _noise(rec, rng, clean_snapshot)
            rec["bench"]["defect"] = name

    clean_idx = sorted(free)
    n_base = len(records)
    copies: list[dict] = []
    for name in ("duplicate", "near_duplicate"):
        n = int(round(getattr(rates, name) * n_base))
        sources = [clean_idx[j] for j in rng.choice(len(clean_idx), size=min(n, len(clean_idx)), replace=False)]
        for k, i in enumerate(sources):
            orig = records[i]
            dup = copy.deepcopy(orig) if name == "duplicate" else _near_duplicate(orig, images_dir, rng, k)
            dup["id"] = f"{orig['id']}-{'dup' if name == 'duplicate' else 'near'}{k}"
            dup["bench"]["defect"] = name
            dup["bench"]["dup_of"] = orig["id"]
            copies.append(dup)
    pool = records + copies
    order = rng.permutation(len(pool))
    return [pool[i] for i in order]


def defect_labels(records: list[dict]) -> np.ndarray:
    """The ``bench.defect`` of each record ("none" when the field is missing)."""
    return np.array([(r.get("bench") or {}).get("defect", "none") for r in records], dtype=object)
