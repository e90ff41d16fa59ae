"""Perception stages: a vision tower trained directly on image labels, before any instruction tuning.

:func:`train_perception` trains a tower with one linear head per label set; the pretrained base's stage 0 uses it
on easy-vqa shapes, colours and rendered words (:mod:`mmsift.train.pretrain`), and :func:`train_pool_perception`
on a pool's own images, for a proxy that cannot start from the pretrained base.

The pool stage: ``mmsift warmup --base none`` builds the proxy with random weights. Trained on answer tokens alone, its vision
tower rarely learns to see (the image-shuffle test stays near 0). This stage gives the tower a direct signal from
the pool itself: each record's short answers (three words or fewer) are bags of words, and the tower, mean-pooled
into one linear head, learns to predict which of the pool's ``top_k`` most frequent short-answer words the
record's answers contain (cross-entropy against the uniform distribution over the record's words). Answers
that name what is in the image (a colour, a shape, an object, a word written) are learnable from the image;
answers that are not (yes/no, letters) only teach their base rate. The tower is then frozen and the language model instruction-tuned on the pool, as with the
base. Pools without short answers (long free-text only) get no labels and skip the stage, with a warning.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter

import numpy as np

from mmsift.train.loop import BestCheckpoint, optimizer_step

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


def answer_words(record, *, max_words: int = 3) -> set[str]:
    """Lower-cased words of the record's assistant turns that are at most ``max_words`` words long."""
    words: set[str] = set()
    for t in record.turns:
        if t.role == "assistant":
            ws = _WORD.findall(t.text.lower())
            if 0 < len(ws) <= max_words:
                words.update(ws)
    return words


def answer_vocabulary(records, *, top_k: int = 64, min_count: int = 5) -> list[str]:
    """The ``top_k`` most frequent short-answer words (in at least ``min_count`` records), stable order."""
    counts = Counter(w for r in records for w in answer_words(r))
    ranked = sorted(((c, w) for w, c in counts.items() if c >= min_count), key=lambda x: (-x[0], x[1]))
    return [w for _, w in ranked[:top_k]]


def train_pool_perception(lm, records, images_dir, *, steps: int | None = None, batch: int = 64,
                          lr: float = 2e-3, seed: int = 0, top_k: int = 64,
                          progress: str | None = "perception", heldout_ids: set | None = None) -> dict:
    """Train ``lm``'s vision tower on the pool's single-image records (see the module docstring).

    ``steps`` (default): about 60 passes over the records, between 100 and 1,500 steps, but the tower and head
    kept are those with the lowest loss on held-out records (``heldout_ids``, the warm-up's held-out records, or
    a seeded 10%), and training stops after 6 measurements without improvement: trained to the end, the tower
    learns the pool's wrong answers by heart (on the digits pool, 20% wrong, the proxy then fitted them and
    self-check could no longer find them; docs/warmup.md).

    Returns a summary for ``warmup.json``: the vocabulary size, records used, final training loss, the step
    kept and the held-out losses measured and, on the held-out records with at least one labelled word, the head's cross-entropy next to that of the words' base
    rates (what a tower that sees nothing would score).
    """
    import torch
    from PIL import Image

    from mmsift.data.paths import resolve_image

    vocab = answer_vocabulary(records, top_k=top_k)
    # Single-image records with the image on disk (embedded images are left to the instruction-tuning stage).
    usable = [r for r in records if len(r.images) == 1 and not any(r.embedded)]
    if not vocab or len(usable) < 20:
        log.warning("pool perception stage skipped: %d short-answer words, %d single-image records",
                    len(vocab), len(usable))
        return {"skipped": True, "vocabulary": len(vocab), "n_records": len(usable)}
    steps = steps or int(min(1500, max(100, math.ceil(60 * len(usable) / batch))))
    index = {w: k for k, w in enumerate(vocab)}
    y = torch.zeros((len(usable), len(vocab)))
    for i, r in enumerate(usable):
        for w in answer_words(r):
            if w in index:
                y[i, index[w]] = 1.0
    ip = lm.processor.image_processor
    pixels = []
    for s in range(0, len(usable), 256):
        imgs = [Image.open(resolve_image(images_dir, r.images[0])).convert("RGB") for r in usable[s:s + 256]]
        pixels.append(ip(images=imgs, return_tensors="pt")["pixel_values"].to(torch.float16))
    pixels = torch.cat(pixels).to(lm.device)
    y = y.to(lm.device)
    val, train = _split(usable, heldout_ids, seed)
    tower = lm.adapter.vision_tower(lm.model)
    watch = BestCheckpoint(every=max(20, steps // 40), patience=6, records=[pixels[val], {"words": y[val]}])
    with torch.random.fork_rng():
        heads, final = train_perception(tower, pixels[train], {"words": y[train]}, steps=steps, batch=batch,
                                        lr=lr, seed=seed, n_classes={"words": len(vocab)}, progress=progress,
                                        watch=watch)
    log.info("perception stage: kept step %d of %d (lowest held-out loss %.3f)", watch.best_step, steps,
             watch.best_loss)
    with torch.no_grad():
        logits = heads["words"](tower(pixel_values=pixels[val].float()).last_hidden_state[:, 1:].mean(1))
    yv = y[val]
    has = yv.sum(1) > 0
    if not bool(has.any()):
        return {"skipped": False, "vocabulary": len(vocab), "n_records": len(usable), "steps": steps,
                "final_loss": round(final, 4), "heldout_loss": None, "base_rate_loss": None, **watch.summary()}
    target = yv[has] / yv[has].sum(1, keepdim=True)
    model_ce = -(target * torch.log_softmax(logits[has], -1)).sum(1).mean()
    freq = y[train].sum(0) + 1e-3
    prior_ce = -(target * torch.log(freq / freq.sum())).sum(1).mean()  # the words' base rates, no image
    return {"skipped": False, "vocabulary": len(vocab), "n_records": len(usable), "steps": steps,
            "final_loss": round(final, 4),
            "heldout_loss": round(float(model_ce), 4), "base_rate_loss": round(float(prior_ce), 4), **watch.summary()}


def _split(usable, heldout_ids, seed: int):
    """Held-out and training positions: the records whose id is in ``heldout_ids`` (the warm-up's held-out
    records), else a seeded 10%."""
    import torch

    if heldout_ids:
        val = [i for i, r in enumerate(usable) if r.id in heldout_ids]
        if val:
            train = [i for i, r in enumerate(usable) if r.id not in heldout_ids]
            return torch.as_tensor(val), torch.as_tensor(train)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(usable)))
    n_val = max(1, len(usable) // 10)
    return order[:n_val], order[n_val:]


def train_perception(tower, pixels, labels: dict, *, steps: int, batch: int, lr: float, seed: int,
                     n_classes: dict, progress: str | None = "perception", watch=None):
    """Stage 0: train ``tower`` (a CLIP vision model) with one linear head per label on mean-pooled patch tokens.

    ``labels``: name -> (N,) long tensor, -1 where unknown (cross-entropy), or (N, K) float tensor of 0/1
    (a set of labels per item: cross-entropy against the uniform distribution over the item's labels; items
    with none are skipped). Returns (heads, mean loss of the last 50 steps).
    ``watch``: a :class:`~mmsift.train.loop.BestCheckpoint` whose ``records`` are the held-out items as
    ``(pixels, labels)``: the tower and heads with the lowest held-out loss are kept, and training stops when the
    watch says so.
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    dim = tower.config.hidden_size
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, n) for k, n in n_classes.items()})
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    ce = torch.nn.CrossEntropyLoss(ignore_index=-1)

    def head_loss(k, feats, idx):
        y = labels[k][idx]
        if y.ndim == 2:
            # Soft targets: binary cross-entropy over dozens of rare words let the head predict "none" and stop.
            has = y.sum(1) > 0
            return ce(heads[k](feats[has]), y[has] / y[has].sum(1, keepdim=True)) if bool(has.any()) else None
        return ce(heads[k](feats), y) if bool((y >= 0).any()) else None
    if watch is not None and watch.records:
        watch.track([tower, heads], lambda: _heldout_loss(tower, heads, tuple(watch.records)))
    tower.train()
    recent: list[float] = []
    for step in tqdm(range(steps), desc=progress, unit="step", disable=progress is None, leave=False):
        idx = torch.randint(len(pixels), (batch,), generator=gen)
        feats = tower(pixel_values=pixels[idx].float()).last_hidden_state[:, 1:].mean(1)
        loss = sum(x for x in (head_loss(k, feats, idx) for k in heads) if x is not None)
        recent.append(optimizer_step(loss, params, opt, sched))
        if watch is not None and watch.after_step(step + 1, last=step + 1 == steps):
            break
    if watch is not None:
        watch.restore()
    tower.eval()
    return heads, float(np.mean(recent[-50:]))


def _heldout_loss(tower, heads, val: tuple) -> float:
    """Sum of the heads' losses on held-out ``val`` = (pixels, labels), the tower back in training mode after."""
    import torch

    pixels, labels = val
    tower.eval()
    with torch.no_grad():
        feats = tower(pixel_values=pixels.float()).last_hidden_state[:, 1:].mean(1)
        total = 0.0
        for k in heads:
            y = labels[k]
            if y.ndim == 2:
                has = y.sum(1) > 0
                if bool(has.any()):
                    target = y[has] / y[has].sum(1, keepdim=True)
                    total += float(-(target * torch.log_softmax(heads[k](feats[has]), -1)).sum(1).mean())
            elif bool((y >= 0).any()):
                total += float(torch.nn.functional.cross_entropy(heads[k](feats), y, ignore_index=-1))
    tower.train()
    return total


def evaluate_perception(tower, heads, pixels, labels: dict, *, batch: int = 256) -> dict[str, float]:
    """Accuracy of each head on the items whose label is known."""
    import torch

    preds = {k: [] for k in heads}
    with torch.no_grad():
        for s in range(0, len(pixels), batch):
            feats = tower(pixel_values=pixels[s:s + batch].float()).last_hidden_state[:, 1:].mean(1)
            for k in heads:
                preds[k].append(heads[k](feats).argmax(-1))
    out = {}
    for k in heads:
        p, y = torch.cat(preds[k]), labels[k]
        known = y >= 0
        out[k] = float((p[known] == y[known]).float().mean()) if bool(known.any()) else float("nan")
    return out
