"""The benchmark's target model: the pretrained base of the bundled proxy, instruction-tuned on each subset.

Every subset starts from the same checkpoint, the cached base (:mod:`mmsift.train.pretrain`: a perception-trained
vision tower and caption alignment on easy-vqa images that no pool uses), and is trained with the vision tower
frozen, as LLaVA-1.5 instruction-tunes. Training is the project's one loop (:func:`mmsift.train.loop.train_model`:
AdamW, linear warm-up then cosine decay, gradient clipping at 1.0, loss = mean answer-token cross-entropy with the
probe's own answer masks and chat template), so the target sees exactly the inputs the probe scores.

One fixed recipe (:class:`TargetRecipe`) for every subset:
``steps = clip(ceil(epochs * n_samples / batch_size), min_steps, max_steps)``: large subsets get ``epochs``
passes; small ones at least ``min_steps`` updates (more passes), so a 5% subset is not judged on an undertrained
model. Training is seeded and deterministic on CPU (``torch.use_deterministic_algorithms`` and a fixed thread
count): same subset and seed, same weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass

from mmsift.models.loading import LoadedModel
from mmsift.train.loop import TrainConfig, deterministic, train_model

log = logging.getLogger(__name__)


@dataclass
class TargetRecipe:
    epochs: float = 4.0
    min_steps: int = 120  # 60 left colour unlearned on small subsets (validation: mean 0.45 vs 0.82, docs)
    max_steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    threads: int = 1
    # ``--target scratch``: first a perception stage on the subset's own images (``train.perception``), then the
    # instruction tuning above with the tower frozen. ``perception_steps`` None: about 60 passes (100-1,500 steps).
    perception: bool = False
    perception_steps: int | None = None
    perception_min_steps: int = 100  # floor of the default step count (about 60 passes, at most 1,500)
    # LoRA (peft) on the language model's attention projections, the projector trained fully, everything else
    # frozen; 0: projector + language model fully trained (the bundled targets).
    lora_rank: int = 0
    lora_alpha: int = 16

    def steps_for(self, n_samples: int) -> int:
        steps = math.ceil(self.epochs * n_samples / self.batch_size)
        return int(min(self.max_steps, max(self.min_steps, steps)))

    def to_dict(self) -> dict:
        return asdict(self)


def train_target(init, records, images_dir, *, recipe: TargetRecipe, seed: int, device: str = "cpu",
                 encoded: list | None = None, steps: int | None = None, token_masks: dict | None = None):
    """Train a fresh copy of ``init`` (a model directory, or a ``LoadedModel`` that is copied, not changed) on
    ``records`` (``mmsift.data.records.Record``), vision tower frozen.

    Returns the loop's ``TrainResult`` (``.model`` is a ``LoadedModel``; ``.losses``, ``.seconds``,
    ``.n_failed``). Records the loop cannot encode are logged and counted there, never silently dropped.
    ``encoded``: the records already encoded (see ``train_model``; ``records`` may then be None);
    ``steps`` overrides the recipe's count. ``token_masks``: token cleaning masks (see ``train_model``; with
    ``encoded``, pass the encoded records as ``records`` too); the step count still follows the number of records.
    """
    n_samples = len(encoded) if encoded is not None else len(records or ())
    if not n_samples:
        raise ValueError("cannot train the target on an empty subset")
    steps = recipe.steps_for(n_samples) if steps is None else steps
    t0 = time.perf_counter()
    with deterministic(recipe.threads):
        if recipe.perception:
            init = _perceive(init, records, images_dir, recipe=recipe, seed=seed, device=device)
    t_perceive = time.perf_counter() - t0
    with deterministic(recipe.threads):
        config = TrainConfig(steps=steps, lr=recipe.lr, batch_size=recipe.batch_size, seed=seed, device=device,
                             freeze_vision=True)
        model = _with_lora(init, recipe, device) if recipe.lora_rank else _fresh(init)
        result = train_model(model, list(records or ()), images_dir, config, encoded=encoded,
                             token_masks=token_masks)
    result.seconds += t_perceive  # the whole training, perception stage included
    log.info("trained target on %d samples: %d steps, %.1fs, final loss %.3f", result.n_samples, steps,
             result.seconds, sum(result.losses[-10:]) / max(1, len(result.losses[-10:])))
    return result


LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)$"
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector")


def peft_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None


def _with_lora(init, recipe: TargetRecipe, device: str):
    """A fresh copy of ``init`` with LoRA layers injected in place (``peft.inject_adapter_in_model``, so the
    family's adapter sees the same module tree); only LoRA weights and the projector train."""
    from peft import LoraConfig, inject_adapter_in_model

    from mmsift.models.loading import load_model

    lm = _fresh(init)
    if not isinstance(lm, LoadedModel):
        lm = load_model(lm, device=device, dtype="float32")
    config = LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                        target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, lm.model)
    for name, p in lm.model.named_parameters():
        p.requires_grad_("lora_" in name or any(k in name for k in PROJECTOR_NAMES))
    lm.model.to(lm.device)
    return lm


def scratch_recipe() -> TargetRecipe:
    """``--target scratch``'s recipe: perception on the subset's images, then instruction tuning (docs/benchmark.md
    has the validation figures it was chosen on)."""
    return TargetRecipe(perception=True)


def build_scratch_init(out_dir, *, texts, seed: int = 0):
    """A fresh model of the bundled base's sizes with random weights and a tokenizer of ``texts`` (the pool's and
    the evaluation's), saved to ``out_dir``: every ``--target scratch`` run starts from this same checkpoint."""
    from mmsift.models.proxy import build_proxy
    from mmsift.train import pretrain

    return build_proxy(out_dir, texts=list(texts), seed=seed, size=pretrain.random_start_size())


def _perceive(init, records, images_dir, *, recipe: TargetRecipe, seed: int, device: str):
    """A fresh copy of ``init`` whose tower went through the perception stage on ``records``' images."""
    from mmsift.models.loading import load_model
    from mmsift.train.perception import train_pool_perception

    if records is None or images_dir is None:
        raise ValueError("a perception recipe needs the subset's records and their image folder")
    lm = _fresh(init)
    if not isinstance(lm, LoadedModel):
        lm = load_model(lm, device=device, dtype="float32")
    steps = recipe.perception_steps or int(min(1500, max(recipe.perception_min_steps,
                                                         math.ceil(60 * len(records) / 64))))
    summary = train_pool_perception(lm, list(records), images_dir, steps=steps, seed=seed, progress=None)
    log.info("target perception stage: %s", summary)
    return lm


def _fresh(init):
    """A directory as is (loaded fresh by the loop); a loaded model as a deep copy, so the caller's is kept."""
    if isinstance(init, LoadedModel):
        return dataclasses.replace(init, model=copy.deepcopy(init.model))
    return init
