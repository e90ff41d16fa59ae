"""Evaluation of a trained target on the easy-vqa *test* split (never part of the pool).

- Open questions: the negative log-likelihood of each of the 13 easy-vqa answers (every token after the prompt the
  options share, i.e. the answer tokens, their eos and any template piece a BPE merge tied to the answer, with
  the probe's chat template) is computed; the lowest-loss answer is the prediction. Summed, not averaged: a mean over
  tokens favours options the tokenizer splits into several easily predicted pieces. No generation, so a tiny model is scored on what it prefers, not on what it can spell.
  Accuracy overall and per question type (shape / color / yesno), and for rendered-text items (ocr, ranked over
  the OCR word list).
- Multiple choice (ARDS's four columns): test shape and colour questions with 3-5 lettered options, scored by
  the loss of each option label, in four versions: clean, permutation attack (options reordered, the answer's
  label follows its option), symbol attack (labels A, B, C... replaced by Q, W, E...) and both. The attacks
  are the probe's own (:mod:`mmsift.probe.perturb`), so the bench measures what ARDS's signals perturb.

The evaluation items are built once per benchmark (:func:`build_eval_set`) and stored as JSON beside their
images, so every subset is scored on the same items.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mmsift.bench.pool import ocr_items
from mmsift.train.loop import deterministic
from mmsift.data.easyvqa import LETTERS, OCR_QUESTION, OCR_WORDS, make_mc_options, mc_prompt, question_type
from mmsift.data.records import Turn

log = logging.getLogger(__name__)

MC_VARIANTS = ("clean", "perm", "sym", "both")


@dataclass
class EvalItem:
    image: str  # relative to the eval images folder
    question: str
    answer: str
    options: list[str]
    kind: str  # shape | color | yesno | ocr | mc_clean | mc_perm | mc_sym | mc_both
    group: int = -1  # MC items: the test question all four versions come from
    chance: float | None = None  # expected accuracy without the image; None: the easy-vqa type-aware value


def mc_versions(question: str, options: list[str], answer: str, *, seed: int, key: str) -> dict[str, tuple]:
    """The four ARDS versions of one MC item: variant -> (prompt, option labels, answer label).

    Uses the probe's :func:`~mmsift.probe.perturb.permutation_attack` and :func:`~mmsift.probe.perturb.symbol_attack`
    on the clean conversation; "both" is the symbol attack applied to the permuted conversation.
    """
    from mmsift.probe.perturb import ATTACK_SYMBOLS, permutation_attack, symbol_attack

    letters = list(LETTERS[: len(options)])
    clean = [Turn("user", mc_prompt(question, options, letters)), Turn("assistant", letters[options.index(answer)])]
    perm = permutation_attack(clean, seed=seed, key=key)
    versions = {"clean": clean, "perm": perm, "sym": symbol_attack(clean), "both": symbol_attack(perm)}
    symbols = list(ATTACK_SYMBOLS[: len(options)])
    out = {}
    for name, turns in versions.items():
        if turns is None:
            raise ValueError(f"MC item {key!r} was not recognised as multiple choice by the probe's attacks")
        out[name] = (turns[0].text, symbols if name in ("sym", "both") else letters, turns[1].text)
    return out


def build_eval_set(out_dir, *, n_per_type: int = 150, n_mc: int = 150, n_ocr: int = 80, seed: int = 0,
                   mc_attacks: bool = True, validation_ids=None, open_types=("shape", "color", "yesno")) -> Path:
    """Sample test items (``n_per_type`` shape, colour and yes/no questions each), MC items and OCR items.

    ``mc_attacks``: also the permutation / symbol / both versions of every MC item (else only ``mc_clean``).
    ``open_types``: the open question types to sample (``n_mc=0`` leaves out multiple choice).
    ``validation_ids``: draw from these easy-vqa *train* image ids instead of the test split (a validation set
    for choosing the target's recipe, so that the test split is never used to tune anything).
    Writes ``out_dir/eval.json`` and the images under ``out_dir/images``; returns the JSON path.
    """
    import shutil

    import easy_vqa

    out_dir = Path(out_dir)
    (out_dir / "images" / "test").mkdir(parents=True, exist_ok=True)
    (out_dir / "images" / "ocr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if validation_ids is None:
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        allowed = set(int(i) for i in validation_ids)
        questions, answers, image_ids = zip(*[(q, a, i) for q, a, i in zip(*easy_vqa.get_train_questions())
                                              if int(i) in allowed])
        paths = {i: p for i, p in easy_vqa.get_train_image_paths().items() if i in allowed}
    all_answers = list(easy_vqa.get_answers())
    types = np.array([question_type(a) for a in answers])
    items: list[EvalItem] = []
    used_images: set[int] = set()
    for t in open_types:
        rows = np.flatnonzero(types == t)
        for i in np.sort(rng.choice(rows, size=min(n_per_type, len(rows)), replace=False)):
            used_images.add(int(image_ids[i]))
            items.append(EvalItem(f"test/{image_ids[i]}.png", questions[i], answers[i], all_answers, t))
    mc_rows = np.flatnonzero(types != "yesno")
    for g, i in enumerate(np.sort(rng.choice(mc_rows, size=min(n_mc, len(mc_rows)), replace=False))):
        used_images.add(int(image_ids[i]))
        opts = make_mc_options(answers[i], rng)
        versions = mc_versions(questions[i], opts, answers[i], seed=seed, key=f"test-{i}")
        for variant, (prompt, labels, label) in versions.items():
            if variant != "clean" and not mc_attacks:
                continue
            items.append(EvalItem(f"test/{image_ids[i]}.png", prompt, label, labels, f"mc_{variant}", g))
    for i in sorted(used_images):
        shutil.copyfile(paths[i], out_dir / "images" / "test" / f"{i}.png")
    test_backgrounds = [paths[i] for i in sorted(paths)[:200]]
    for k, (word, img) in enumerate(ocr_items(n_ocr, seed=seed + 7919, background_paths=test_backgrounds)):
        img.save(out_dir / "images" / "ocr" / f"{k}.png")
        items.append(EvalItem(f"ocr/{k}.png", OCR_QUESTION, word, list(OCR_WORDS), "ocr"))
    path = out_dir / "eval.json"
    path.write_text(json.dumps([asdict(x) for x in items], indent=1) + "\n", encoding="utf-8")
    return path


def load_eval_set(path) -> list[EvalItem]:
    return [EvalItem(**d) for d in json.loads(Path(path).read_text(encoding="utf-8"))]


def eval_texts(items: list[EvalItem]) -> list[str]:
    """Every text the evaluation feeds the model (for the shared tokenizer)."""
    return [x.question for x in items] + sorted({o for x in items for o in x.options})


@dataclass
class EncodedItem:
    """One item in model inputs: the shared prompt, its image tensors, and each option's continuation."""

    prompt: torch.Tensor  # (P,) ids shared by every option (image tokens expanded)
    extra: dict  # processor tensors of the image (pixel_values...)
    options: list[torch.Tensor]  # per option: the token ids after the prompt
    scored: list[torch.Tensor]  # per option: bool, which of those ids are answer tokens (the probe's mask)


def encode_items(lm, items: list[EvalItem], images_dir) -> list[EncodedItem]:
    """Encode every item once with the target's adapter (the tokenizer is shared by every trained subset).

    The probe's encoding of (question, option) marks the answer tokens. The prompt is the longest prefix all
    options share before their first answer token (a BPE merge may pull the space after "ASSISTANT:" into one
    option's answer token and not into another's); the rest of each option is fed after it and all of it is
    scored.
    """
    from PIL import Image

    adapter = lm.adapter
    images_dir = Path(images_dir)
    out = []
    for item in items:
        img = Image.open(images_dir / item.image).convert("RGB")
        user = Turn("user", "<image>\n" + item.question)
        raw = [adapter.text_ids_and_mask(adapter.messages([user, Turn("assistant", opt)], 1))
               for opt in item.options]
        shared = min(mask.index(True) for _, mask in raw)
        while any(ids[:shared] != raw[0][0][:shared] for ids, _ in raw):
            shared -= 1
        full = adapter.encode([user, Turn("assistant", item.options[0])], [img])
        cut = len(full) - (len(raw[0][0]) - shared)
        if full.input_ids[cut:].tolist() != raw[0][0][shared:]:
            raise ValueError(f"eval item {item.question!r}: text-only and processor encodings disagree")
        out.append(EncodedItem(
            prompt=full.input_ids[:cut], extra=dict(full.extra),
            options=[torch.tensor(ids[shared:], dtype=torch.long) for ids, _ in raw],
            # Every continuation token counts: an unscored one (e.g. a bare "Ġ" before an answer the tokenizer
            # has no spaced token for) would carry the choice between options without being scored.
            scored=[torch.ones(len(ids) - shared, dtype=torch.bool) for ids, _ in raw],
        ))
    return out


@torch.no_grad()
def option_losses(lm, encoded: list[EncodedItem], *, batch_size: int = 32, threads: int = 1) -> list[np.ndarray]:
    """Answer loss summed over the answer tokens + eos of every option of every item (one array per item).

    The prompt (image + question) is run once per item and its key/value cache is shared by the item's options,
    so 13 options cost one prompt pass plus 13 short continuations (checked against full sequences in the tests).
    Items are batched by equal prompt length, so prompts need no padding; continuations are right-padded and
    their padding is masked out of the loss.
    """
    if lm.model_type not in CACHED_FAMILIES:
        return _option_losses_full(lm, encoded, threads=threads)
    model, dev = lm.model, lm.device
    cache_key = cache_keyword(model)
    groups: dict[int, list[int]] = {}
    for k, e in enumerate(encoded):
        groups.setdefault(len(e.prompt), []).append(k)
    out: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    model.eval()
    with deterministic(threads):
        for plen in sorted(groups):
            members = groups[plen]
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                ids = torch.stack([encoded[k].prompt for k in chunk]).to(dev)
                extra = {key: torch.cat([encoded[k].extra[key] for k in chunk]).to(dev)
                         for key in encoded[chunk[0]].extra}
                if "pixel_values" in extra:
                    extra["pixel_values"] = extra["pixel_values"].to(model.dtype)
                first = model(input_ids=ids, use_cache=True, **extra)
                first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
                rows = [j for j, k in enumerate(chunk) for _ in encoded[k].options]
                conts = [c for k in chunk for c in encoded[k].options]
                scored = [m for k in chunk for m in encoded[k].scored]
                rows_t = torch.tensor(rows, device=dev)
                cache = getattr(first, cache_key)
                cache.batch_select_indices(rows_t)
                width = max(len(c) for c in conts)
                cont = torch.zeros((len(conts), width), dtype=torch.long, device=dev)
                cmask = torch.zeros((len(conts), width), dtype=torch.long, device=dev)
                smask = torch.zeros((len(conts), width), dtype=torch.bool, device=dev)
                for i, c in enumerate(conts):
                    cont[i, : len(c)] = c.to(dev)
                    cmask[i, : len(c)] = 1
                    smask[i, : len(c)] = scored[i].to(dev)
                attn = torch.cat([torch.ones((len(conts), plen), dtype=torch.long, device=dev), cmask], dim=1)
                pos = torch.arange(plen, plen + width, device=dev).expand(len(conts), width)
                second = model(input_ids=cont, attention_mask=attn, position_ids=pos, use_cache=False,
                               **{cache_key: cache})
                logp = torch.log_softmax(second.logits.float(), dim=-1)
                # Token 0 of an option is predicted by the prompt's last position, token t by continuation t-1.
                tok_nll = torch.zeros((len(conts), width), device=dev)
                tok_nll[:, 0] = -first_logp[rows_t, cont[:, 0]]
                if width > 1:
                    tok_nll[:, 1:] = -logp[:, :-1].gather(-1, cont[:, 1:, None])[..., 0]
                mask = smask.float()
                per_opt = (tok_nll * mask).sum(1).cpu().numpy()
                pos_in = 0
                for k in chunk:
                    n = len(encoded[k].options)
                    out[k] = per_opt[pos_in:pos_in + n]
                    pos_in += n
    return out


# Families whose prompt cache can be shared by the options with plain 1-D positions (the bundled proxy's LLaVA).
# Others (Qwen2-VL's 3-D rotary positions, ...) are scored on full sequences, one option at a time.
CACHED_FAMILIES = ("llava",)


@torch.no_grad()
def _option_losses_full(lm, encoded: list[EncodedItem], *, threads: int = 1) -> list[np.ndarray]:
    """Same values as :func:`option_losses`, from one forward pass of prompt + option per option (any family)."""
    model, dev = lm.model, lm.device
    model.eval()
    out = []
    with deterministic(threads):
        for e in encoded:
            extra = {k: v.to(dev) for k, v in e.extra.items()}
            if "pixel_values" in extra:
                extra["pixel_values"] = extra["pixel_values"].to(model.dtype)
            losses = []
            for cont, scored in zip(e.options, e.scored):
                ids = torch.cat([e.prompt, cont]).to(dev)[None]
                logp = torch.log_softmax(model(input_ids=ids, **extra).logits[0].float(), dim=-1)
                p = len(e.prompt)
                nll = -logp[p - 1:p - 1 + len(cont)].gather(-1, cont.to(dev)[:, None])[:, 0]
                losses.append(float((nll * scored.to(dev).float()).sum()))
            out.append(np.asarray(losses))
    return out


def item_correct(items: list[EvalItem], losses: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per kind, whether each item's lowest-loss option is its answer (ties go to the first option), in item order."""
    correct: dict[str, list[bool]] = {}
    for item, loss in zip(items, losses):
        correct.setdefault(item.kind, []).append(item.options[int(np.argmin(loss))] == item.answer)
    return {k: np.asarray(v, dtype=bool) for k, v in correct.items()}


def accuracy_table(items: list[EvalItem], losses: list[np.ndarray]) -> dict[str, float]:
    """Accuracy per kind, ``vqa`` (shape+color+yesno) and ``all_open`` (vqa + ocr)."""
    return accuracies(item_correct(items, losses))


def accuracies(correct: dict[str, np.ndarray]) -> dict[str, float]:
    acc = {k: float(np.mean(v)) for k, v in correct.items()}
    vqa = np.concatenate([correct[k] for k in ("shape", "color", "yesno") if k in correct] or [np.zeros(0)])
    if len(vqa):
        acc["vqa"] = float(np.mean(vqa))
    open_ = np.concatenate([vqa, correct.get("ocr", np.zeros(0, dtype=bool))])
    if len(open_):
        acc["all_open"] = float(np.mean(open_))
    return acc


def chance_table(items: list[EvalItem]) -> dict[str, float]:
    """Expected accuracy of a model that knows each question's type but not the image (uniform within type)."""
    per: dict[str, list[float]] = {}
    for item in items:
        if item.chance is not None:
            n = 1.0 / item.chance
        elif item.kind in ("shape", "color", "yesno"):
            n = 3 if item.kind == "shape" else 8 if item.kind == "color" else 2
        else:
            n = len(item.options)
        per.setdefault(item.kind, []).append(1.0 / n)
    out = {k: float(np.mean(v)) for k, v in per.items()}
    vqa = [p for k in ("shape", "color", "yesno") for p in per.get(k, [])]
    if vqa:
        out["vqa"] = float(np.mean(vqa))
    return out


def evaluate(lm, items: list[EvalItem], encoded: list[EncodedItem], *, threads: int = 1) -> dict[str, float]:
    """Accuracy table of the trained target ``lm`` (a ``LoadedModel``) on the encoded evaluation items."""
    return accuracy_table(items, option_losses(lm, encoded, threads=threads))


def evaluate_items(lm, items: list[EvalItem], encoded: list[EncodedItem], *, threads: int = 1):
    """Per-kind item correctness (for intervals and paired comparisons) and the accuracy table."""
    correct = item_correct(items, option_losses(lm, encoded, threads=threads))
    return correct, accuracies(correct)


def cache_keyword(model) -> str:
    """The name of the key/value cache argument and output field: transformers 5.24 renamed ``past_key_values`` to
    ``cache`` (the old name still works there, with a deprecation warning); earlier releases of the tested window
    know only ``past_key_values``. Read from the model's public forward signature."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
