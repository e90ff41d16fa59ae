"""Warm-up: a proxy for a pool that reads its images, instruction-tuned on the pool.

:func:`warmup` starts from the pretrained base (:mod:`mmsift.train.pretrain`) or, with ``base="none"``, from random
weights and a perception stage on the pool's own images (:mod:`mmsift.train.perception`), then trains on the pool
with the project's one loop (:func:`mmsift.train.loop.train_model`). :func:`image_shuffle_test` says whether the
result reads the images at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsift.failures import DEFAULT_MAX_FAILURE_RATE
from mmsift.models.encode import encode_records
from mmsift.models.loading import check_device, cpu_threads_for, load_model
from mmsift.models.losses import batch_answer_loss
from mmsift.models.proxy import build_proxy
from mmsift.train.loop import BestCheckpoint, TrainConfig, train_model
from mmsift.train.perception import train_pool_perception
from mmsift.train import pretrain

log = logging.getLogger(__name__)

WARMUP_LOG = "warmup.json"
BASES = ("auto", "bundled", "none")
SHUFFLE_MIN = 0.1  # image-shuffle increase under which the proxy is said not to read the images
SMALL_POOL = 100  # fewer valid records than this: warn that the proxy's signals mean little


@dataclass(frozen=True)
class WarmupConfig:
    """Settings of :func:`warmup` (the options of ``mmsift warmup``).

    ``images``: the folder image paths are relative to (default: the pool file's folder). ``out``: the model
    directory written. ``n_samples``: random good records to train on (default: all). Training runs ``epochs``
    passes but at least ``min_steps`` steps. ``lr``: default 1e-3 from the base, 3e-3 with ``base="none"``.
    ``base``: "auto" (the base, or "none" when the base does not read the pool's images), "bundled" or "none".
    ``holdout``: share of the training records held out to choose the step kept (0: keep the last step).
    ``base_recipe``: a :class:`~mmsift.train.pretrain.BaseRecipe` other than the default. ``token_masks``: a token
    cleaning sidecar (``mmsift tokens``); the masked answer tokens leave the warm-up's loss.
    """

    out: str
    images: str | None = None
    n_samples: int | None = None
    epochs: int = 3
    min_steps: int = 300
    lr: float | None = None
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"
    task_field: str | None = None
    base: str = "auto"
    holdout: float = 0.1
    base_recipe: object = None
    max_tokenizer_texts: int = 50_000
    progress: bool = True
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    token_masks: str | None = None

    def check(self) -> None:
        """Raise a ValueError naming the first setting out of range."""
        check_device(self.device)
        if self.base not in BASES:
            raise ValueError(f"--base must be 'auto', 'bundled' or 'none', got {self.base!r}")
        if not 0.0 <= self.holdout < 0.5:
            raise ValueError(f"holdout must be in [0, 0.5), got {self.holdout}")
        if (self.n_samples is not None and self.n_samples < 1) or min(self.epochs, self.batch_size,
                                                                          self.min_steps) < 1:
            raise ValueError(f"--n-samples, --epochs, --batch-size and --min-steps must be >= 1, got "
                             f"{self.n_samples}, {self.epochs}, {self.batch_size}, {self.min_steps}")

    def learning_rate(self, base: str | None = None) -> float:
        """``lr``, else the default of ``base`` (the base the warm-up starts from; default ``self.base``)."""
        if self.lr is not None:
            return self.lr
        return 3e-3 if (base or self.base) == "none" else 1e-3


def image_shuffle_test(lm, records, images_dir, *, n: int = 256, seed: int = 0, batch_size: int = 16) -> dict:
    """Does the model read the images? Mean answer-token loss of up to ``n`` records with their own image and
    with the image of another record (each image moved one place along a seeded random order, so every record
    gets a different record's image); ``increase`` = shuffled - own. Near 0: the answers are predicted from the
    text alone. Only single-image records take part, swapped between records whose image tensors have the same
    shapes.
    """
    import torch

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))[: 2 * n]  # spares for records that are not single-image
    encs, _ = encode_records(lm.adapter, [records[i] for i in order], images_dir)
    encs = [e for e in encs if e.n_images == 1 and e.extra][:n]
    groups: dict[tuple, list[int]] = {}
    for k, e in enumerate(encs):
        groups.setdefault(tuple((key, tuple(v.shape)) for key, v in sorted(e.extra.items())), []).append(k)
    swapped = list(encs)
    for members in groups.values():
        for a, b in zip(members, members[1:] + members[:1]):
            swapped[a] = type(encs[a])(encs[a].input_ids, encs[a].answer_mask, encs[a].image_mask,
                                       dict(encs[b].extra), encs[a].n_images)
    pairs = sum(len(m) for m in groups.values() if len(m) > 1)
    if pairs < 2:
        return {"n_records": 0, "loss_own": float("nan"), "loss_shuffled": float("nan"), "increase": float("nan")}
    keep = [k for m in groups.values() if len(m) > 1 for k in m]
    model = lm.model
    model.eval()
    sums = {"own": [], "shuffled": []}
    with torch.no_grad(), cpu_threads_for(model, lm.device):
        for name, pool in (("own", encs), ("shuffled", swapped)):
            for s in range(0, len(keep), batch_size):
                batch = lm.adapter.collate([pool[k] for k in keep[s:s + batch_size]]).to(lm.device)
                n_tok = int(batch.answer_mask.sum())
                sums[name].append((float(batch_answer_loss(lm.adapter, model, batch)) * n_tok, n_tok))
    own = sum(a for a, _ in sums["own"]) / sum(b for _, b in sums["own"])
    shuffled = sum(a for a, _ in sums["shuffled"]) / sum(b for _, b in sums["shuffled"])
    return {"n_records": len(keep), "loss_own": round(own, 4), "loss_shuffled": round(shuffled, 4),
            "increase": round(shuffled - own, 4)}


def shuffle_line(info: dict) -> str:
    """One line for users: the image-shuffle figure of a ``warmup.json`` and what it means."""
    test = info.get("image_shuffle") or {}
    if not test.get("n_records"):
        return "image-shuffle test: not enough single-image records to run it"
    verdict = ("the proxy reads the images" if test["increase"] >= SHUFFLE_MIN else
               "the proxy barely uses the images: image-based signals will describe the text, not the images")
    return (f"image-shuffle test on {test['n_records']} records: answer loss {test['loss_own']:.3f} with their own "
            f"image, {test['loss_shuffled']:.3f} with another record's (+{test['increase']:.3f}): {verdict}")


def reads_images(test: dict | None) -> bool:
    """Whether an image-shuffle test (:func:`image_shuffle_test`) says the model reads the images."""
    return bool(test and test.get("n_records")) and test["increase"] >= SHUFFLE_MIN


def warmup(data, config: WarmupConfig) -> Path:
    """Make a proxy for the pool ``data`` that reads its images, trained on the pool (or ``n_samples`` random
    good records).

    ``base="auto"`` (default): first the pretrained base, as with ``"bundled"``; when the image-shuffle test then
    says the proxy does not read the pool's images (increase under :data:`SHUFFLE_MIN`: the base never learnt
    images like these), it is discarded and the proxy is made again as with ``"none"``, and ``warmup.json``
    keeps both figures (``switched_from``). ``base="bundled"``: start from the pretrained base (built once and
    cached) and instruction-tune projector and language model on the pool with the vision tower frozen, as
    LLaVA-1.5 does. ``base="none"``: a proxy with random weights and a tokenizer trained on the pool's texts (up
    to ``max_tokenizer_texts`` turns); first a perception stage on the pool's own images (the tower learns to
    predict the records' short-answer words), then the tower is frozen and the rest trained on the pool.

    Held-out records (``holdout``, default 10% of the training records, never trained on) choose the weights
    kept: the step with their lowest answer loss (:class:`~mmsift.train.loop.BestCheckpoint`), measured about 30
    times during training. A proxy trained until its training loss is near 0 has learnt the pool's wrong answers
    too, and self-check can no longer tell them from right ones (docs/warmup.md).

    Trains ``epochs`` passes, but at least ``min_steps`` steps: on a small pool a few passes are a few dozen
    updates, too few for the proxy to learn to use the image (the demo's 770-record pool after 2 epochs, 96 steps:
    image-shuffle increase 0.007; see docs/benchmark.md).
    Writes the model to ``out`` (``save_pretrained``) with ``warmup.json`` (settings, loss curve, the step kept,
    the image-shuffle test (:func:`image_shuffle_test`) and ``warning`` when the proxy does not read the images).
    """
    from mmsift.data.validate import read_and_validate

    config.check()
    t0 = time.perf_counter()
    pool, images_dir, report = read_and_validate(data, config.images, task_field=config.task_field)
    good = report.good_records(pool)
    if not good:
        raise ValueError(f"{data}: no valid record to train on ({report.n_errors} errors; run mmsift validate)")
    if len(good) < SMALL_POOL:
        log.warning("the pool has only %d valid records: a proxy trained on so few learns little, and its signals "
                    "(losses, image-shuffle test) mean little; %d or more are advised", len(good), SMALL_POOL)
    out = Path(config.out)
    masks = None
    if config.token_masks is not None:
        from mmsift.token_select import read_sidecar

        masks = read_sidecar(config.token_masks)
    subset = _training_slice(good, config)
    train_recs, heldout = _holdout_split(subset, config)
    first = "bundled" if config.base in ("auto", "bundled") else "none"
    info = _warm_once(first, good, (train_recs, heldout), images_dir, out, config, masks)
    if config.base == "auto" and not reads_images(info["image_shuffle"]) and info["image_shuffle"].get("n_records"):
        log.warning("the pretrained base does not read this pool's images (%s); making the proxy again from random "
                    "weights with a perception stage on the pool's own images (--base none), which takes longer",
                    shuffle_line(info).split(": ", 1)[-1])
        switched = {"base": info["base"], "image_shuffle": info["image_shuffle"], "seconds": info["seconds"]}
        _remove_base_copy(out, config)
        info = _warm_once("none", good, (train_recs, heldout), images_dir, out, config, masks)
        info["switched_from"] = switched
    mask_counts = info.pop("token_mask_counts")
    info.update({"pool": str(Path(pool.path).resolve()), "base_option": config.base,
                 "n_skipped_by_validation": len(report.bad_indices), "epochs": config.epochs,
                 "min_steps": config.min_steps, "batch_size": config.batch_size, "seed": config.seed,
                 "device": config.device, "n_pool_records": len(good),
                 "token_masks": None if masks is None else {"sidecar": str(config.token_masks), **mask_counts},
                 "seconds": round(time.perf_counter() - t0, 2)})
    info["warning"] = None if reads_images(info["image_shuffle"]) else proxy_warning(info)
    (out / WARMUP_LOG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("warm-up: answer loss %.3f -> %.3f over %d steps on %d samples (%.1fs); %s",
             info["losses"][0], info["losses"][-1], info["steps"], info["n_samples"], info["seconds"],
             shuffle_line(info))
    return out


def proxy_warning(info: dict) -> str:
    """The one-line warning ``probe`` and ``select`` repeat for a proxy that does not read its pool's images."""
    test = info.get("image_shuffle") or {}
    if not test.get("n_records"):
        return ("the image-shuffle test could not run (too few single-image records): whether the proxy reads "
                "the images is unknown")
    return (f"the proxy barely reads the images (image-shuffle increase {test['increase']:+.3f}, under "
            f"{SHUFFLE_MIN}): image-based signals describe the text, not the images, and loss-based cleaning "
            f"cannot check answers against the images" +
            ("" if info.get("base") == "none" else "; try mmsift warmup --base none"))


def _warm_once(base: str, good, split: tuple, images_dir, out: Path, config: WarmupConfig, masks) -> dict:
    """One warm-up from ``base`` ('bundled' or 'none'); ``split`` = (training records, held-out records).
    Saves the model to ``out`` and returns its part of ``warmup.json``."""
    t0 = time.perf_counter()
    train_recs, heldout = split
    model_in, base_info, perception = _starting_model(base, good, images_dir, out, config,
                                                      {r.id for r in heldout})
    frozen = base == "bundled" or (perception is not None and not perception["skipped"])
    steps = max(config.min_steps, config.epochs * math.ceil(len(train_recs) / config.batch_size))
    lr = config.learning_rate(base)
    train = TrainConfig(steps=steps, lr=lr, batch_size=config.batch_size, seed=config.seed,
                        device=config.device, freeze_vision=frozen, max_failure_rate=config.max_failure_rate)
    watch = BestCheckpoint(every=max(10, steps // 30), records=heldout) if heldout else None
    result = train_model(model_in, train_recs, images_dir, train, progress="warm-up" if config.progress else None,
                         log_dir=out, token_masks=masks, watch=watch)
    result.model.model.save_pretrained(out)
    shuffle = image_shuffle_test(result.model, train_recs + heldout, images_dir, seed=config.seed,
                                 batch_size=config.batch_size)
    return {
        "base": "none" if base_info is None else {"key": base_info["key"],
                                                  "perception_heldout_accuracy":
                                                      base_info["perception_heldout_accuracy"]},
        "n_samples": result.n_samples, "n_failed": result.n_failed, "n_heldout": len(heldout),
        "steps": len(result.losses), "steps_planned": steps,
        "step_kept": watch.best_step if watch else len(result.losses),
        "heldout": watch.summary() if watch else None,
        "lr": lr, "vision_frozen": frozen, "pool_perception": perception, "image_shuffle": shuffle,
        "token_mask_counts": result.token_masks, "losses": result.losses, "epoch_losses": result.epoch_losses,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _remove_base_copy(out: Path, config: WarmupConfig) -> None:
    """Remove the files a warm-up from the base wrote to ``out`` (before making the proxy again there)."""
    base_dir = pretrain.ensure_base(config.base_recipe, device=config.device)
    for name in sorted(set(os.listdir(base_dir)) | {WARMUP_LOG}):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _holdout_split(records, config: WarmupConfig) -> tuple[list, list]:
    """(training records, held-out records): a seeded ``holdout`` share, none when that is under 8 records."""
    n_held = int(config.holdout * len(records))
    if n_held < 8:
        return list(records), []
    rng = np.random.default_rng(config.seed + 1)
    held = set(rng.choice(len(records), size=n_held, replace=False).tolist())
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def _starting_model(base: str, good, images_dir, out: Path, config: WarmupConfig, heldout_ids: set):
    """What the warm-up trains: the base copied to ``out`` (a directory), or a new proxy at ``out`` whose tower
    went through the pool perception stage (a loaded model). Returns (model, base info or None, perception
    summary or None)."""
    if base == "bundled":
        base_dir = pretrain.ensure_base(config.base_recipe, device=config.device)
        if out.exists() and out.resolve() == base_dir.resolve():
            raise ValueError(f"--out {out} is the cached base itself; write the proxy elsewhere")
        shutil.copytree(base_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("base.json", WARMUP_LOG))
        return out, pretrain.read_base_info(base_dir), None
    texts = [t.text.replace("<image>", "") for r in good for t in r.turns][: config.max_tokenizer_texts]
    build_proxy(out, texts=texts, seed=config.seed, size=pretrain.random_start_size())
    lm = load_model(out, device=config.device, dtype="float32")
    perception = train_pool_perception(lm, good, images_dir, seed=config.seed,
                                       progress="perception" if config.progress else None,
                                       heldout_ids=heldout_ids)
    return lm, None, perception


def _training_slice(good, config: WarmupConfig):
    if config.n_samples is None or config.n_samples >= len(good):
        return good
    rng = np.random.default_rng(config.seed)
    return [good[i] for i in np.sort(rng.choice(len(good), size=config.n_samples, replace=False))]


def read_warmup_log(model_dir: str | os.PathLike) -> dict | None:
    path = Path(model_dir) / WARMUP_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
