"""The one training loop of mmsift: answer-masked instruction tuning of a loaded vision-language model.

Every training in the project goes through :func:`train_model`: the pretrained base's alignment stages, the proxy's
warm-up on a pool, and the benchmark's target on each subset. AdamW, linear warm-up then cosine decay, gradient
clipping at 1.0; the loss is the mean cross-entropy over the answer tokens of the batch, with exactly the answer
masks the probe uses (``FamilyAdapter.encode``), so a trained model is scored on the inputs it was trained on.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, FailureGuard, step_failure
from mmsift.models.encode import encode_records
from mmsift.models.loading import LoadedModel, cpu_threads_for, load_model
from mmsift.models.losses import batch_answer_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train_model` trains.

    ``steps``: exactly this many optimisation steps (cycling through reshuffled epochs) instead of ``epochs``
    passes. ``freeze_vision`` keeps the vision tower's weights fixed (LLaVA's stages 1 and 2: the pretrained tower
    is not trained on instruction data). ``max_failure_rate``: the share of records that may fail to encode
    before the run stops as a systematic error.
    """

    epochs: int = 3
    steps: int | None = None
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    freeze_vision: bool = False
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE


@dataclass
class TrainResult:
    model: LoadedModel  # in eval mode after training
    losses: list[float] = field(default_factory=list)  # mean answer loss per optimisation step
    epoch_losses: list[float] = field(default_factory=list)
    n_samples: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    token_masks: dict = field(default_factory=dict)  # counts from train.masks.masked_inputs when masks were given


def train_model(model, records, images_dir, config: TrainConfig, *, encoded: list | None = None,
                progress: str | None = None, log_dir=None, token_masks: dict | None = None,
                watch: "BestCheckpoint | None" = None) -> TrainResult:
    """Train ``model`` (a model directory, or a :class:`~mmsift.models.loading.LoadedModel` trained in place) on
    ``records`` with ``config``.

    Batches are drawn with a generator seeded by ``config.seed``. When more than ``config.max_failure_rate`` of
    the records cannot be encoded, raises :class:`mmsift.failures.SystematicFailure` (traceback log in
    ``log_dir``). ``encoded``: the records' inputs already encoded by this model's adapter
    (:func:`mmsift.models.encode.encode_records`), so a caller that trains many subsets of one pool encodes its
    images once. ``progress``: a tqdm bar with that label over the steps (None: no bar). ``token_masks``: record
    id -> assistant turn -> masked character spans (a token cleaning sidecar,
    :func:`mmsift.token_select.read_sidecar`); the masked answer tokens leave the loss (``train.masks``), records
    without an entry train on every answer token; with ``encoded``, ``records`` must be the encoded records.
    ``watch``: a :class:`BestCheckpoint` whose ``records`` (held out, never trained on) are scored every
    ``watch.every`` steps; the weights with their lowest answer loss are the ones returned.
    """
    import torch

    t0 = time.perf_counter()
    lm = model if isinstance(model, LoadedModel) else load_model(model, device=config.device, dtype="float32")
    encs, failed = _encoded_inputs(lm, records, images_dir, encoded, config, log_dir)
    mask_counts: dict = {}
    if token_masks is not None:
        from mmsift.train.masks import masked_inputs

        failed_ids = {f[0] for f in failed}
        encs, mask_counts = masked_inputs(lm.adapter, [r for r in records if r.id not in failed_ids], encs,
                                          token_masks)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    total = config.steps if config.steps is not None else config.epochs * math.ceil(len(encs) / config.batch_size)
    params, opt, sched = _optimizer(lm, config, total)
    lm.model.train()
    losses: list[float] = []
    epoch_losses: list[float] = []
    if watch is not None and watch.records:
        held, _ = encode_records(lm.adapter, watch.records, images_dir)
        watch.track([lm.model], lambda: heldout_answer_loss(lm, held, config.batch_size))
    with cpu_threads_for(lm.model, lm.device):
        bar = tqdm(total=total, desc=progress, unit="step", disable=progress is None, leave=False)

        def after_step() -> bool:
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            return watch is not None and watch.after_step(len(losses), last=len(losses) == total)
        stop = False
        try:
            with bar:
                while len(losses) < total and not stop:
                    epoch, stop = _train_epoch(lm, params, encs, opt, sched, gen, config.batch_size, total, losses,
                                               after_step)
                    epoch_losses.append(epoch)
                    log.info("epoch %d: mean answer loss %.4f (%d steps)", len(epoch_losses), epoch, len(losses))
        except Exception as e:  # every batch holds many records: a failing step is not one bad record
            raise step_failure("warmup", f"training step {len(losses) + 1}", e, log_dir) from e
    if watch is not None:
        watch.restore()
    lm.model.eval()
    return TrainResult(lm, losses, epoch_losses, len(encs), len(failed), time.perf_counter() - t0, mask_counts)


def _encoded_inputs(lm, records, images_dir, encoded, config: TrainConfig, log_dir) -> tuple[list, list]:
    """The training inputs, and the records that could not be encoded as (id, kind, message, traceback)
    (reported; too many stop the run)."""
    encs, failed = (list(encoded), []) if encoded is not None else encode_records(lm.adapter, records, images_dir)
    guard = FailureGuard("warmup", log_dir=log_dir, max_failure_rate=config.max_failure_rate)
    guard.ok(len(encs))
    for rid, kind, msg, tb in failed:
        guard.failed(rid, f"{kind}: {msg}", tb=tb)
    guard.check(final=True)
    for rid, kind, msg, _ in failed:
        log.warning("record %s not used for training: %s: %s", rid, kind, msg)
    return encs, failed


def _optimizer(lm, config: TrainConfig, total: int):
    """Trainable parameters (the tower frozen on request), AdamW and the warm-up + cosine schedule."""
    import torch

    tower = lm.adapter.vision_tower(lm.model)
    if tower is not None:
        tower.requires_grad_(not config.freeze_vision)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n_warm = max(1, int(config.warmup_fraction * total))

    def schedule(step):
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))

    return params, opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _train_epoch(lm, params, encs, opt, sched, gen, batch_size: int, total: int, losses: list,
                 after_step) -> tuple[float, bool]:
    """One reshuffled pass (or what is left of ``total`` steps); returns its mean loss and whether
    ``after_step()`` asked to stop."""
    import torch

    order = torch.randperm(len(encs), generator=gen).tolist()
    in_epoch = []
    for k in range(0, len(order), batch_size):
        if len(losses) >= total:
            break
        batch = lm.adapter.collate([encs[i] for i in order[k:k + batch_size]]).to(lm.device)
        losses.append(optimizer_step(batch_answer_loss(lm.adapter, lm.model, batch), params, opt, sched))
        in_epoch.append(losses[-1])
        if after_step():
            return float(np.mean(in_epoch)), True
    return float(np.mean(in_epoch)), False


def heldout_answer_loss(lm, encs: list, batch_size: int) -> float:
    """Mean answer-token loss of the encoded inputs ``encs`` (token-weighted), without training; the model is
    put back in training mode after."""
    import torch

    lm.model.eval()
    total, n_tok = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(encs), batch_size):
            batch = lm.adapter.collate(encs[s:s + batch_size]).to(lm.device)
            n = int(batch.answer_mask.sum())
            total += float(batch_answer_loss(lm.adapter, lm.model, batch)) * n
            n_tok += n
    lm.model.train()
    return total / max(1, n_tok)


def optimizer_step(loss, params, opt, sched) -> float:
    """One update from ``loss``: gradients clipped to norm 1, then the optimiser and the schedule step."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


class BestCheckpoint:
    """Keep the weights with the lowest held-out loss seen during training (early stopping on held-out records).

    A trainer calls :meth:`track` once with the modules it trains and a function returning the held-out loss,
    (or, for :func:`train_model`, the held-out ``records``, which it encodes and scores itself), then
    :meth:`after_step` after each optimisation step: every ``every`` steps the held-out loss is measured and
    the weights are copied when it is the lowest so far; ``after_step`` returns True once ``patience``
    measurements in a row brought no improvement (``patience=0``: never stop, only keep the best).
    :meth:`restore` puts the best weights back. On a pool with wrong answers, a model keeps fitting them after
    its held-out loss stops falling: the best held-out point is the one that learnt the pool's rule, not its
    exceptions.
    """

    def __init__(self, *, every: int, patience: int = 0, records: list | None = None):
        self.every, self.patience, self.records = max(1, int(every)), int(patience), list(records or ())
        self.best_loss, self.best_step, self.history = float("inf"), 0, []
        self._state, self._modules, self._evaluate, self._bad = None, [], None, 0

    def track(self, modules, evaluate) -> None:
        self._modules, self._evaluate = list(modules), evaluate

    def after_step(self, step: int, *, last: bool = False) -> bool:
        if self._evaluate is None or (step % self.every and not last):
            return False
        import copy

        loss = float(self._evaluate())
        self.history.append((step, round(loss, 4)))
        if loss < self.best_loss:
            self.best_loss, self.best_step, self._bad = loss, step, 0
            self._state = [copy.deepcopy(m.state_dict()) for m in self._modules]
        else:
            self._bad += 1
        return bool(self.patience) and self._bad >= self.patience

    def restore(self) -> None:
        if self._state is not None:
            for m, st in zip(self._modules, self._state):
                m.load_state_dict(st)

    def summary(self) -> dict:
        return {"best_step": self.best_step, "best_heldout_loss": round(self.best_loss, 4),
                "heldout_losses": self.history}


@contextmanager
def deterministic(threads: int):
    """Deterministic torch ops and a fixed CPU thread count for the block; restores the previous settings."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
