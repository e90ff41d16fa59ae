"""The pretrained base of the bundled proxy, built the way LLaVA is built, and cached on disk.

Trained from scratch on a small pool, the bundled LLaVA learns colour but not shape or text: its vision tower
never gets a signal strong enough to learn them from answer tokens alone. Real LLaVA starts from a pretrained
vision encoder; this module gives the bundled proxy one, on easy-vqa *train* images that no pool uses
(:data:`mmsift.data.easyvqa.BASE_IMAGE_IDS`) plus rendered words:

- **stage 0, perception:** the CLIP vision tower alone, its patch tokens (the layer the LLaVA projector reads)
  mean-pooled into three linear heads: the image's shape (3 classes), its colour (8) and, for rendered-text
  images, the word written (:data:`BASE_WORDS`). Supervised classification rather than contrastive
  image-caption training: the labels are known exactly, a batch of 64 images covers only 24 shape-colour
  combinations (a contrastive batch would be full of false negatives), and it learns in about a minute of CPU.
  Reading is learned as whole-word recognition over a vocabulary larger than the bench's OCR words, in random
  positions and on plain or picture backgrounds.
- **stage 1, alignment:** the tower frozen inside the LLaVA proxy; projector and language model trained on
  captions, "Describe the image." -> "A red circle." / "Text: cat.".
- **stage 2, answer formats** (``format_steps``; 0 = off, the default): the same images' easy-vqa yes/no
  questions ("is there not a red shape?" -> "no") and their shape/colour questions as multiple choice (lettered
  options, the answer is the letter), with a share of the captions repeated. LLaVA's language model arrives
  from text pretraining knowing how to answer a yes/no question; this one is trained from scratch, and without
  this stage the bench's target does not learn yes/no in its budget. With it, yes/no is learned (and the
  self-check proxy finds more wrong yes/no answers), but targets instruction-tuned on small subsets became
  unstable (colour questions answered with shape words) and multiple choice was still not learned; the
  measurements are in docs/benchmark.md. It stays available for experiments.

The result is a LLaVA checkpoint (``save_pretrained``) plus ``base.json`` (recipe, measured accuracies, times),
stored under ``$MMSIFT_CACHE/base/<key>`` (default ``~/.cache/mmsift``) where ``key`` hashes the recipe and the
data it is built from, so the demo, ``mmsift warmup`` and ``mmsift bench`` pay for it once. Instruction tuning
(``warmup``, the bench's target) starts from it with the tower frozen, as LLaVA-1.5 does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmsift.models.loading import load_model
from mmsift.models.proxy import ProxySize, build_proxy, train_tokenizer
from mmsift.train.loop import TrainConfig, deterministic, train_model
from mmsift.train.perception import evaluate_perception, train_perception

log = logging.getLogger(__name__)

BASE_INFO = "base.json"
# Bumped whenever the data or the code that builds the base changes in a way the recipe does not show.
BUILD_THREADS = 1  # torch threads of a base build (results depend on the thread count, not on the load)
BASE_FORMAT = 5  # 2: answers with a leading space in the tokenizer texts; 3: stage 2 (answer formats);
# 4: stage 2 repeats word captions too; 5: built on BUILD_THREADS threads with deterministic algorithms
# Words the perception stage learns to read: the bench's OCR words and as many others, so the tower learns to
# tell rendered words apart rather than 16 fixed pictures.
EXTRA_WORDS = ("fish", "tree", "star", "moon", "bird", "car", "bus", "book", "door", "lamp", "ball", "ship",
               "milk", "rain", "wind", "fire", "9", "33", "58", "64", "120", "415", "777", "1999", "3000", "250")


def base_words() -> tuple[str, ...]:
    from mmsift.data.easyvqa import OCR_WORDS

    return tuple(OCR_WORDS) + tuple(w for w in EXTRA_WORDS if w not in OCR_WORDS)


@dataclass(frozen=True)
class BaseRecipe:
    """Everything the base is built from; its hash names the cache entry."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 2048
    n_shape_images: int = 3000  # easy-vqa train images from BASE_IMAGE_IDS
    n_text_images: int = 6000  # rendered words, every second one on a base image (1,500 with 1,500 steps: held-out word acc 0.36)
    perception_steps: int = 2000
    perception_batch: int = 64
    perception_lr: float = 2e-3
    align_steps: int = 300
    align_batch: int = 16
    align_lr: float = 3e-3
    # Stage 2, yes/no and multiple-choice questions on the base images: off (0) by default, because it made the
    # bench's target unstable on small subsets (docs/benchmark.md, "Answer-format stage").
    format_steps: int = 0
    format_batch: int = 16
    format_lr: float = 3e-3
    format_caption_share: float = 0.3  # share of the stage-1 captions (shapes and words) repeated in stage 2
    seed: int = 0

    def size(self) -> ProxySize:
        """The proxy's shape (:func:`mmsift.models.proxy.build_proxy`)."""
        return ProxySize(image_size=self.image_size, patch_size=self.patch_size,
                         vision_hidden_size=self.vision_hidden_size, vision_layers=self.vision_layers,
                         vision_heads=self.vision_heads, hidden_size=self.hidden_size, num_layers=self.num_layers,
                         num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                         intermediate_size=self.intermediate_size, vocab_size=self.vocab_size,
                         # The tower's last layer is the one the perception heads train, so the projector reads it.
                         vision_feature_layer=-1)

    def key(self) -> str:
        import easy_vqa

        from mmsift.data.easyvqa import BASE_IMAGE_IDS

        data = {"format": BASE_FORMAT, "easy_vqa": getattr(easy_vqa, "__version__", "?"),
                "images": [BASE_IMAGE_IDS.start, BASE_IMAGE_IDS.stop], "words": base_words()}
        blob = json.dumps({"recipe": asdict(self), "data": data}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def cache_root() -> Path:
    """``$MMSIFT_CACHE`` or ``~/.cache/mmsift``."""
    env = os.environ.get("MMSIFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmsift"


# The recipe used when none is given. The test suite swaps in a tiny one (tests/conftest.py).
DEFAULT_RECIPE = BaseRecipe()


def random_start_size():
    """The sizes of a proxy or target that starts from random weights (warm-up with ``base="none"``, the bench's
    ``--target scratch``): the base's (64 px, patch 8, tower 64 x 3, projector reading the tower's last layer, the
    one the perception stage trains) with the proxy's vocabulary, for a tokenizer of the pool's own texts. Read at
    call time: the default recipe can be swapped (the test suite uses a tiny one)."""
    from dataclasses import replace

    return replace(DEFAULT_RECIPE.size(), vocab_size=ProxySize.vocab_size)


def base_path(recipe: BaseRecipe | None = None) -> Path:
    return cache_root() / "base" / (recipe or DEFAULT_RECIPE).key()


def ensure_base(recipe: BaseRecipe | None = None, *, device: str = "cpu") -> Path:
    """The cached base for ``recipe`` (:data:`DEFAULT_RECIPE` when None), built first if the cache lacks it."""
    recipe = recipe or DEFAULT_RECIPE
    path = base_path(recipe)
    if (path / BASE_INFO).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Shown without -v: the bars that follow run for minutes on a CPU, and the user should know why.
    log.warning("building the pretrained base of the bundled proxy, once (cached at %s for every later warm-up, "
                "demo and bench): a vision tower taught to see shapes, colours and printed words (stage "
                "'perception'), then aligned to captions (stage 'alignment'); several minutes on a CPU", path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        # A fixed thread count and deterministic ops: two builds of one recipe give the same weights whatever
        # else the machine runs (checked by benchmarks/base_build_hash.py; docs/benchmark.md).
        with deterministic(BUILD_THREADS):
            build_base(tmp, recipe, device=device)
        try:
            tmp.rename(path)  # atomic: a reader never sees a half-written base
        except OSError:
            if not (path / BASE_INFO).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_base_info(path) -> dict:
    return json.loads((Path(path) / BASE_INFO).read_text(encoding="utf-8"))


def _base_data(work: Path, recipe: BaseRecipe) -> tuple[list[dict], list[dict], list[dict]]:
    """Write the base's images under ``work/images`` and return (perception items, caption records, answer-format
    records).

    Perception item: {"image", "shape", "color", "word"} with -1 for an unknown label. Answer-format records
    (stage 2), per base image: one of its easy-vqa yes/no questions, one of its shape or colour questions as
    multiple choice; and a ``format_caption_share`` of all captions (so alignment and reading are kept).
    """
    import easy_vqa

    from mmsift.data.easyvqa import (BASE_IMAGE_IDS, COLORS, DESCRIBE_QUESTION, SHAPES, describe, image_facts,
                                     render_text)
    from PIL import Image

    rng = np.random.default_rng(recipe.seed)
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    grouped: dict[int, tuple[list, list]] = {}
    for q, a, i in zip(questions, answers, image_ids):
        if int(i) in BASE_IMAGE_IDS:
            grouped.setdefault(int(i), ([], []))[0].append(q)
            grouped[int(i)][1].append(a)
    ids = sorted(grouped)
    chosen = sorted(int(i) for i in rng.choice(ids, size=min(recipe.n_shape_images, len(ids)), replace=False))
    (work / "images" / "shape").mkdir(parents=True, exist_ok=True)
    (work / "images" / "text").mkdir(parents=True, exist_ok=True)
    items, captions = [], []
    for i in chosen:
        facts = image_facts(*grouped[i])
        rel = f"shape/{i}.png"
        shutil.copyfile(paths[i], work / "images" / rel)
        items.append({"image": rel, "shape": SHAPES.index(facts.shape) if facts.shape else -1,
                      "color": COLORS.index(facts.color) if facts.color else -1, "word": -1})
        if facts.shape and facts.color:
            captions.append(_single_turn(f"base-{i}", rel, DESCRIBE_QUESTION, describe(facts)))
    words = base_words()
    for k in range(recipe.n_text_images):
        w = int(rng.integers(len(words)))
        bg = Image.open(paths[chosen[int(rng.integers(len(chosen)))]]) if k % 2 else None
        rel = f"text/{k}.png"
        render_text(words[w], rng, bg).save(work / "images" / rel)
        items.append({"image": rel, "shape": -1, "color": -1, "word": w})
        captions.append(_single_turn(f"text-{k}", rel, DESCRIBE_QUESTION, f"Text: {words[w]}."))
    formats = _answer_format_records(grouped, chosen, captions, recipe) if recipe.format_steps else []
    return items, captions, formats


def _answer_format_records(grouped: dict, chosen: list[int], captions: list[dict], recipe: BaseRecipe) -> list[dict]:
    """Stage 2's records; drawn with their own generator, so stages 0 and 1 see the same data with or without."""
    from mmsift.data.easyvqa import LETTERS, make_mc_options, mc_prompt, question_type

    rng = np.random.default_rng(recipe.seed + 1)
    formats = []
    for i in chosen:
        qa = list(zip(*grouped[i]))
        yes_no = [x for x in qa if question_type(x[1]) == "yesno"]
        open_qa = [x for x in qa if question_type(x[1]) != "yesno"]
        if yes_no:
            formats.append(_single_turn(f"yesno-{i}", f"shape/{i}.png", *yes_no[int(rng.integers(len(yes_no)))]))
        if open_qa:
            q, a = open_qa[int(rng.integers(len(open_qa)))]
            options = make_mc_options(a, rng)
            formats.append(_single_turn(f"mc-{i}", f"shape/{i}.png", mc_prompt(q, options),
                                        LETTERS[options.index(a)]))
    # Captions of both kinds go on in stage 2: with shape captions alone, the reading learned in stage 1 faded
    # (the bench's OCR column fell from 0.74 to 0.37 on the quick grid).
    keep = rng.random(len(captions)) < recipe.format_caption_share
    return formats + [c for c, k in zip(captions, keep) if k]


def _single_turn(rid: str, image: str, question: str, answer: str) -> dict:
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": "<image>\n" + question},
                                                         {"from": "gpt", "value": answer}]}


def tokenizer_texts() -> list[str]:
    """What the base's tokenizer is trained on: every easy-vqa train question and answer, the captions' and the
    bundled pools' fixed phrases and the readable words (byte-level BPE: any other text still encodes)."""
    import easy_vqa

    from mmsift.data.easyvqa import DESCRIBE_QUESTION, OCR_QUESTION, PROMPT_SUFFIX

    questions, answers, _ = easy_vqa.get_train_questions()
    fixed = [DESCRIBE_QUESTION, OCR_QUESTION, PROMPT_SUFFIX, "Answer with the option's letter from the given "
             "choices directly.", "A. B. C. D. E.", "Text:"]
    # Answers follow "ASSISTANT: ", so each needs its own space-prefixed token: without " yes" in the corpus,
    # "yes" became "Ġ" + "yes", and the bare "Ġ" was neither trained (not an answer token) nor told options apart.
    short = sorted(set(answers) | set(base_words()) | set("ABCDE"))
    spaced = [f" {a}" for a in short] + [f" {a[:1].upper() + a[1:]}" for a in short]
    words = [f"Text: {w}." for w in base_words()]
    caps = [q[:1].upper() + q[1:] for q in questions] + [a[:1].upper() + a[1:] for a in answers]
    return list(questions) + list(answers) + caps + fixed * 50 + words * 20 + spaced * 50


def _pixels(processor, work: Path, items: list[dict], batch: int = 256):
    import torch
    from PIL import Image

    out = []
    for k in range(0, len(items), batch):
        imgs = [Image.open(work / "images" / it["image"]).convert("RGB") for it in items[k:k + batch]]
        out.append(processor.image_processor(images=imgs, return_tensors="pt")["pixel_values"])
    return torch.cat(out).to(torch.float16)  # half the memory; batches go back to float32 in training


def build_base(out_dir, recipe: BaseRecipe, *, device: str = "cpu") -> Path:
    """Build the base into ``out_dir`` (stage 0 perception, stage 1 alignment); see the module docstring."""
    import torch

    from mmsift.data.easyvqa import COLORS, SHAPES
    from mmsift.data.io import read_pool

    t0 = time.perf_counter()
    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="mmsift-base-data-"))
    try:
        items, captions, formats = _base_data(work, recipe)
        tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=recipe.vocab_size)
        build_proxy(out, tokenizer=tokenizer, seed=recipe.seed, size=recipe.size())
        lm = load_model(out, device=device, dtype="float32")
        t_data = time.perf_counter() - t0

        # Stage 0: perception, 90% of the items to train, 10% held out to report what the tower learned.
        t1 = time.perf_counter()
        pixels = _pixels(lm.processor, work, items).to(lm.device)
        labels = {k: torch.tensor([it[k] for it in items], dtype=torch.long, device=lm.device)
                  for k in ("shape", "color", "word")}
        order = np.random.default_rng(recipe.seed).permutation(len(items))
        n_val = len(items) // 10
        val, train = torch.as_tensor(order[:n_val]), torch.as_tensor(order[n_val:])
        tower = lm.adapter.vision_tower(lm.model)
        n_classes = {"shape": len(SHAPES), "color": len(COLORS), "word": len(base_words())}
        with torch.random.fork_rng():
            heads, final_loss = train_perception(tower, pixels[train], {k: v[train] for k, v in labels.items()},
                                     steps=recipe.perception_steps, batch=recipe.perception_batch,
                                     lr=recipe.perception_lr, seed=recipe.seed, n_classes=n_classes)
        perception = evaluate_perception(tower, heads, pixels[val], {k: v[val] for k, v in labels.items()})
        t_perc = time.perf_counter() - t1
        log.info("base stage 0 (perception): held-out accuracy %s in %.0fs", perception, t_perc)

        # Stage 1: alignment on captions, the tower frozen.
        t2 = time.perf_counter()
        (work / "captions.json").write_text(json.dumps(captions), encoding="utf-8")
        caption_pool = read_pool(work / "captions.json")
        align = TrainConfig(steps=recipe.align_steps, lr=recipe.align_lr, batch_size=recipe.align_batch,
                            seed=recipe.seed, device=device, freeze_vision=True)
        result = train_model(lm, caption_pool.records, work / "images", align, progress="alignment")
        t_align = time.perf_counter() - t2

        # Stage 2 (off by default): answer formats (yes/no, option letters), the tower still frozen.
        t3 = time.perf_counter()
        format_loss = None
        if formats:
            (work / "formats.json").write_text(json.dumps(formats), encoding="utf-8")
            format_pool = read_pool(work / "formats.json")
            fmt = TrainConfig(steps=recipe.format_steps, lr=recipe.format_lr, batch_size=recipe.format_batch,
                              seed=recipe.seed, device=device, freeze_vision=True)
            formatted = train_model(lm, format_pool.records, work / "images", fmt, progress="answer formats")
            format_loss = [float(np.mean(formatted.losses[:10])), float(np.mean(formatted.losses[-10:]))]
        lm.model.save_pretrained(out)
        t_format = time.perf_counter() - t3
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"key": recipe.key(), "format": BASE_FORMAT, "recipe": asdict(recipe), "words": list(base_words()),
            "perception_heldout_accuracy": perception, "perception_final_loss": final_loss,
            "n_perception_items": len(items), "n_captions": len(captions),
            "alignment_loss": [float(np.mean(result.losses[:10])), float(np.mean(result.losses[-10:]))],
            "n_format_records": len(formats),
            "format_loss": format_loss,
            "seconds": {"data": round(t_data, 1), "perception": round(t_perc, 1), "alignment": round(t_align, 1),
                        "formats": round(t_format, 1), "total": round(time.perf_counter() - t0, 1)}}
    (out / BASE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("base built in %.0fs: %s", info["seconds"]["total"], perception)
    return out
