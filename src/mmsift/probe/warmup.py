"""Training the bundled proxy: ``warmup`` builds it for a pool and trains it on a random slice of that pool.

:func:`train_proxy` is the reusable loop (the benchmark trains the same model on subsets from scratch with it):
AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, loss = mean cross-entropy over the answer
tokens of the batch, with exactly the answer masks the probe uses (``FamilyAdapter.encode``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    log_dir=None,
) -> TrainResult:
    """Train a model (a directory or a :class:`~mmsift.probe.models.LoadedModel`) on ``records``.

    Runs ``epochs`` passes, or exactly ``steps`` optimisation steps when given (cycling through reshuffled
    epochs). Batches are drawn with a generator seeded by ``seed``. When more than ``max_failure_rate`` of the
    records cannot be encoded, raises :class:`mmsift.failures.SystematicFailure` (traceback log in ``log_dir``). Returns the trained model and the loss curve.
    """
    import torch

    from mmsift.probe.models import LoadedModel, cpu_threads_for, load_model

    t0 = time.perf_counter()
    lm = model_dir_or_model if isinstance(model_dir_or_model, LoadedModel) else load_model(
        model_dir_or_model, device=device, dtype="float32")
    adapter, model = lm.adapter, lm.model
    encs, failed = encode_records(adapter, records, images_dir)
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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
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
        try:
            _train_loop(adapter, model, encs, lm.device, opt, sched, gen, batch_size, total, losses, epoch_losses)
        except Exception as e:  # every batch holds many records: a failing step is not one bad record
            raise step_failure("warmup", f"training step {len(losses) + 1}", e, log_dir) from e
    model.eval()
    return TrainResult(lm, losses, epoch_losses, len(encs), len(failed), time.perf_counter() - t0)


def _train_loop(adapter, model, encs, device, opt, sched, gen, batch_size, total, losses, epoch_losses) -> None:
    import torch

    step = 0
    while step < total:
        order = torch.randperm(len(encs), generator=gen).tolist()
        in_epoch = []
        for k in range(0, len(order), batch_size):
            if step >= total:
                break
            batch = adapter.collate([encs[i] for i in order[k:k + batch_size]]).to(device)
            loss = batch_answer_loss(adapter, model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            in_epoch.append(losses[-1])
            step += 1
        epoch_losses.append(float(np.mean(in_epoch)))
        log.info("epoch %d: mean answer loss %.4f (%d steps)", len(epoch_losses), epoch_losses[-1], step)


def warmup(
    data,
    *,
    images,
    out,
    n_samples: int = 256,
    epochs: int = 3,
    seed: int = 0,
    device: str = "cpu",
    lr: float = 3e-3,
    batch_size: int = 16,
    task_field: str | None = None,
    max_tokenizer_texts: int = 50_000,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
) -> Path:
    """Build the bundled proxy for the pool ``data`` and train it on ``n_samples`` random good records.

    The tokenizer is trained on the texts of (up to ``max_tokenizer_texts`` turns of) the pool's good records.
    Writes the model to ``out`` (``save_pretrained``) with ``warmup.json`` (settings and loss curve).
    """
    from mmsift.data.validate import read_and_validate
    from mmsift.probe.models import check_device
    from mmsift.probe.proxy import build_proxy

    check_device(device)
    if n_samples < 1 or epochs < 1 or batch_size < 1:
        raise ValueError(f"--n-samples, --epochs and --batch-size must be >= 1, got {n_samples}, {epochs}, {batch_size}")
    t0 = time.perf_counter()
    pool, images_dir, report = read_and_validate(data, images, task_field=task_field)
    good = report.good_records(pool)
    if not good:
        raise ValueError(f"{data}: no valid record to train on ({report.n_errors} errors; run mmsift validate)")
    texts = [t.text.replace("<image>", "") for r in good for t in r.turns][:max_tokenizer_texts]
    out = Path(out)
    build_proxy(out, texts=texts, seed=seed)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(good), size=min(n_samples, len(good)), replace=False))
    subset = [good[i] for i in chosen]
    result = train_proxy(out, subset, images_dir, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         device=device, max_failure_rate=max_failure_rate, log_dir=out)
    result.model.model.save_pretrained(out)
    info = {
        "pool": str(Path(pool.path).resolve()),
        "n_samples": result.n_samples,
        "n_failed": result.n_failed,
        "n_skipped_by_validation": len(report.bad_indices),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "device": device,
        "losses": result.losses,
        "epoch_losses": result.epoch_losses,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / WARMUP_LOG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("warm-up: answer loss %.3f -> %.3f over %d steps on %d samples (%.1fs)",
             result.losses[0], result.losses[-1], len(result.losses), result.n_samples, info["seconds"])
    return out


def read_warmup_log(model_dir: str | os.PathLike) -> dict | None:
    path = Path(model_dir) / WARMUP_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
