"""Training the bundled proxy: ``warmup`` makes it for a pool (from the pretrained base) and trains it on the pool.

:func:`train_proxy` is the reusable loop (the benchmark trains the same model on subsets from scratch with it):
AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, loss = mean cross-entropy over the answer
tokens of the batch, with exactly the answer masks the probe uses (``FamilyAdapter.encode``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, FailureGuard, step_failure

log = logging.getLogger(__name__)

WARMUP_LOG = "warmup.json"


@dataclass
class TrainResult:
    model: object  # LoadedModel (model in eval mode after training)
    losses: list[float] = field(default_factory=list)  # mean answer loss per optimisation step
    epoch_losses: list[float] = field(default_factory=list)
    n_samples: int = 0
    n_failed: int = 0
    seconds: float = 0.0


def encode_records(adapter, records, images_dir) -> tuple[list, list[tuple[str, str, str, str | None]]]:
    """Encoded inputs of ``records``; records that cannot be encoded are returned as
    (id, kind, message, traceback text)."""
    from mmsift.probe.dataset import ProbeDataset

    ds = ProbeDataset(list(records), adapter, images_dir)
    encs, failed = [], []
    for i in range(len(ds)):
        item = ds[i]
        if "error" in item:
            failed.append((records[i].id, *item["error"], item.get("traceback")))
        else:
            encs.append(item["enc"])
    return encs, failed


def batch_answer_loss(adapter, model, batch):
    """Mean CE over every answer token of the batch (differentiable)."""
    from mmsift.probe.signals import token_losses

    last_hidden, _ = adapter.forward(model, batch)
    _, ce, _ = token_losses(adapter, model, last_hidden, batch, want_el2n=False)
    return ce.mean()


def train_proxy(
    model_dir_or_model,
    records,
    images_dir,
    *,
    epochs: int = 3,
    steps: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.1,
    freeze_vision: bool = False,
    progress: str | None = None,
    encoded: list | None = None,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    log_dir=None,
) -> TrainResult:
    """Train a model (a directory or a :class:`~mmsift.probe.models.LoadedModel`) on ``records``.

    Runs ``epochs`` passes, or exactly ``steps`` optimisation steps when given (cycling through reshuffled
    epochs). Batches are drawn with a generator seeded by ``seed``. When more than ``max_failure_rate`` of the
    records cannot be encoded, raises :class:`mmsift.failures.SystematicFailure` (traceback log in ``log_dir``).
    Returns the trained model and the loss curve.
    ``freeze_vision`` keeps the vision tower's weights fixed (LLaVA's stages 1 and 2: the pretrained tower is not
    trained on instruction data). ``progress``: a tqdm bar with that label over the steps (None: no bar).
    ``encoded``: the records' inputs already encoded by this model's adapter (``encode_records``), so a caller
    that trains many subsets of one pool encodes its images once.
    """
    import torch

    from mmsift.probe.models import LoadedModel, cpu_threads_for, load_model

    t0 = time.perf_counter()
    lm = model_dir_or_model if isinstance(model_dir_or_model, LoadedModel) else load_model(
        model_dir_or_model, device=device, dtype="float32")
    adapter, model = lm.adapter, lm.model
    encs, failed = (list(encoded), []) if encoded is not None else encode_records(adapter, records, images_dir)
    guard = FailureGuard("warmup", log_dir=log_dir, max_failure_rate=max_failure_rate)
    guard.ok(len(encs))
    for rid, kind, msg, tb in failed:
        guard.failed(rid, f"{kind}: {msg}", tb=tb)
    guard.check(final=True)
    for rid, kind, msg, _ in failed:
        log.warning("record %s not used for training: %s: %s", rid, kind, msg)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(encs) / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    tower = vision_tower(model)
    if tower is not None:
        tower.requires_grad_(not freeze_vision)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_warm = max(1, int(warmup_fraction * total))

    def schedule(step):
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses: list[float] = []
    epoch_losses: list[float] = []
    with cpu_threads_for(model, lm.device):
        bar = tqdm(total=total, desc=progress, unit="step", disable=progress is None, leave=False)
        try:
            with bar:
                _train_loop(adapter, model, params, encs, lm.device, opt, sched, gen, batch_size, total, losses,
                            epoch_losses, bar)
        except Exception as e:  # every batch holds many records: a failing step is not one bad record
            raise step_failure("warmup", f"training step {len(losses) + 1}", e, log_dir) from e
    model.eval()
    return TrainResult(lm, losses, epoch_losses, len(encs), len(failed), time.perf_counter() - t0)


def vision_tower(model):
    """The model's vision tower module, or None for a family whose tower is not at ``model.model.vision_tower``."""
    return getattr(getattr(model, "model", None), "vision_tower", None)


def optimizer_step(loss, params, opt, sched) -> float:
    """One update from ``loss``: gradients clipped to norm 1, then the optimiser and the schedule step."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def _train_loop(adapter, model, params, encs, device, opt, sched, gen, batch_size, total, losses, epoch_losses,
                bar) -> None:
    import torch

    step = 0
    while step < total:
        order = torch.randperm(len(encs), generator=gen).tolist()
        in_epoch = []
        for k in range(0, len(order), batch_size):
            if step >= total:
                break
            batch = adapter.collate([encs[i] for i in order[k:k + batch_size]]).to(device)
            losses.append(optimizer_step(batch_answer_loss(adapter, model, batch), params, opt, sched))
            in_epoch.append(losses[-1])
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        epoch_losses.append(float(np.mean(in_epoch)))
        log.info("epoch %d: mean answer loss %.4f (%d steps)", len(epoch_losses), epoch_losses[-1], step)


def image_shuffle_test(lm, records, images_dir, *, n: int = 256, seed: int = 0, batch_size: int = 16) -> dict:
    """Does the model read the images? Mean answer-token loss of up to ``n`` records with their own image and
    with the image of another record (each image moved one place along a seeded random order, so every record
    gets a different record's image); ``increase`` = shuffled - own. Near 0: the answers are predicted from the
    text alone. Only single-image records take part, swapped between records whose image tensors have the same
    shapes.
    """
    import torch

    from mmsift.probe.models import cpu_threads_for

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
    verdict = ("the proxy reads the images" if test["increase"] >= 0.1 else
               "the proxy barely uses the images: image-based signals will describe the text, not the images")
    return (f"image-shuffle test on {test['n_records']} records: answer loss {test['loss_own']:.3f} with their own "
            f"image, {test['loss_shuffled']:.3f} with another record's (+{test['increase']:.3f}): {verdict}")


def warmup(
    data,
    *,
    images,
    out,
    n_samples: int | None = None,
    epochs: int = 3,
    seed: int = 0,
    device: str = "cpu",
    lr: float | None = None,
    batch_size: int = 16,
    task_field: str | None = None,
    base: str = "bundled",
    base_recipe=None,
    max_tokenizer_texts: int = 50_000,
    progress: bool = True,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    min_steps: int = 300,
) -> Path:
    """Make a proxy for the pool ``data`` that reads its images, trained on the whole pool (or ``n_samples``
    random good records).

    ``base="bundled"`` (default): start from the pretrained base (:mod:`mmsift.probe.pretrain`, built once and
    cached; ``base_recipe`` picks another recipe than the default) and instruction-tune projector and language
    model on the pool with the vision tower frozen, as LLaVA-1.5 does; lr defaults to 1e-3.
    ``base="none"`` (a pool the base does not fit): a proxy with random weights and a tokenizer trained on the
    pool's texts (up to ``max_tokenizer_texts`` turns); first a perception stage on the pool's own images
    (:mod:`mmsift.probe.pool_perception`: the tower learns to predict the records' short-answer words), then the
    tower is frozen and the rest trained on the pool; lr defaults to 3e-3. Whether the proxy reads its images
    is what the image-shuffle test in ``warmup.json`` says.

    Trains ``epochs`` passes, but at least ``min_steps`` steps: on a small pool a few passes are a few dozen
    updates, too few for the proxy to learn to use the image (the demo's 770-record pool after 2 epochs, 96 steps:
    image-shuffle increase 0.007; see docs/benchmark.md).
    Writes the model to ``out`` (``save_pretrained``) with ``warmup.json`` (settings, loss curve and the
    image-shuffle test, :func:`image_shuffle_test`).
    """
    from mmsift.data.validate import read_and_validate
    from mmsift.probe.models import check_device
    from mmsift.probe.proxy import build_proxy

    check_device(device)
    if base not in ("bundled", "none"):
        raise ValueError(f"--base must be 'bundled' or 'none', got {base!r}")
    if (n_samples is not None and n_samples < 1) or epochs < 1 or batch_size < 1 or min_steps < 1:
        raise ValueError(f"--n-samples, --epochs, --batch-size and --min-steps must be >= 1, got {n_samples}, "
                         f"{epochs}, {batch_size}, {min_steps}")
    t0 = time.perf_counter()
    pool, images_dir, report = read_and_validate(data, images, task_field=task_field)
    good = report.good_records(pool)
    if not good:
        raise ValueError(f"{data}: no valid record to train on ({report.n_errors} errors; run mmsift validate)")
    out = Path(out)
    base_info, perception, model_in = None, None, out
    if base == "bundled":
        from mmsift.probe.pretrain import ensure_base, read_base_info

        base_dir = ensure_base(base_recipe, device=device)
        base_info = read_base_info(base_dir)
        if out.exists() and out.resolve() == base_dir.resolve():
            raise ValueError(f"--out {out} is the cached base itself; write the proxy elsewhere")
        shutil.copytree(base_dir, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("base.json", WARMUP_LOG))
        lr = 1e-3 if lr is None else lr
    else:
        from mmsift.probe.models import load_model
        from mmsift.probe.pool_perception import train_pool_perception

        texts = [t.text.replace("<image>", "") for r in good for t in r.turns][:max_tokenizer_texts]
        # The base's sizes (64 px, patch 8, tower 64 x 3, projector reading the tower's last layer, the one the
        # perception stage trains), with a tokenizer of the pool's own texts.
        from mmsift.probe.pretrain import DEFAULT_RECIPE

        size = {k: v for k, v in DEFAULT_RECIPE.size().items() if k != "vocab_size"}
        build_proxy(out, texts=texts, seed=seed, **size)
        model_in = load_model(out, device=device, dtype="float32")
        perception = train_pool_perception(model_in, good, images_dir, seed=seed,
                                           progress="perception" if progress else None)
        lr = 3e-3 if lr is None else lr
    if n_samples is None or n_samples >= len(good):
        subset = good
    else:
        rng = np.random.default_rng(seed)
        subset = [good[i] for i in np.sort(rng.choice(len(good), size=n_samples, replace=False))]
    frozen = base == "bundled" or (perception is not None and not perception["skipped"])
    steps = max(min_steps, epochs * math.ceil(len(subset) / batch_size))
    result = train_proxy(model_in, subset, images_dir, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                         device=device, freeze_vision=frozen,
                         progress="warm-up" if progress else None,
                         max_failure_rate=max_failure_rate, log_dir=out)
    result.model.model.save_pretrained(out)
    shuffle = image_shuffle_test(result.model, subset, images_dir, seed=seed, batch_size=batch_size)
    info = {
        "pool": str(Path(pool.path).resolve()),
        "base": "none" if base_info is None else {"key": base_info["key"],
                                                  "perception_heldout_accuracy":
                                                      base_info["perception_heldout_accuracy"]},
        "n_samples": result.n_samples,
        "n_failed": result.n_failed,
        "n_skipped_by_validation": len(report.bad_indices),
        "epochs": epochs,
        "steps": len(result.losses),
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "vision_frozen": frozen,
        "pool_perception": perception,
        "image_shuffle": shuffle,
        "losses": result.losses,
        "epoch_losses": result.epoch_losses,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / WARMUP_LOG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("warm-up: answer loss %.3f -> %.3f over %d steps on %d samples (%.1fs); %s",
             result.losses[0], result.losses[-1], len(result.losses), result.n_samples, info["seconds"],
             shuffle_line(info))
    return out


def read_warmup_log(model_dir: str | os.PathLike) -> dict | None:
    path = Path(model_dir) / WARMUP_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
