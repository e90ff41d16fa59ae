"""The benchmark's target model: the bundled small LLaVA, trained from the same initial weights on each subset.

The initial checkpoint is built once per benchmark with :func:`mmsift.probe.proxy.build_proxy` from the texts
of the whole pool *and* of the evaluation set, so every subset is trained with the same tokenizer and starts
from the same random weights. Training reuses the probe's loop (:func:`mmsift.probe.warmup.train_proxy`: AdamW,
linear warm-up then cosine decay, gradient clipping at 1.0, loss = mean answer-token cross-entropy with the
probe's own answer masks and chat template), so the target sees exactly the inputs the probe scores.

One fixed recipe (:class:`Recipe`) for every subset:
``steps = clip(ceil(epochs * n_samples / batch_size), min_steps, max_steps)`` so that every subset is seen the
same number of times while a tiny subset still gets enough updates to move off its initialisation. Training is
seeded and deterministic on CPU (``torch.use_deterministic_algorithms`` and a fixed thread count): same subset
and seed, same weights.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    epochs: float = 8.0
    min_steps: int = 150
    max_steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    threads: int = 1

    def steps_for(self, n_samples: int) -> int:
        steps = math.ceil(self.epochs * n_samples / self.batch_size)
        return int(min(self.max_steps, max(self.min_steps, steps)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TargetSize:
    """Size of the target (keyword arguments of ``build_proxy``)."""

    hidden_size: int = 64
    num_layers: int = 4
    intermediate_size: int = 128
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_layers: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def deterministic(threads: int):
    """Deterministic torch ops and a fixed CPU thread count for the block; restores the previous settings."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def build_target_init(out_dir, *, texts: list[str], seed: int, size: TargetSize | None = None) -> Path:
    """The initial checkpoint every subset starts from: the bundled proxy with random weights (its projector
    initialised so that image features get through, see ``build_proxy``) and a tokenizer trained on ``texts``."""
    from mmsift.probe.proxy import build_proxy

    return Path(build_proxy(out_dir, texts=texts, seed=seed, **(size or TargetSize()).to_dict()))


def train_target(init_dir, records, images_dir, *, recipe: Recipe, seed: int, device: str = "cpu"):
    """Train a fresh copy of ``init_dir`` on ``records`` (``mmsift.data.records.Record``).

    Returns the probe's ``TrainResult`` (``.model`` is a ``LoadedModel``; ``.losses``, ``.seconds``,
    ``.n_failed``). Records the loop cannot encode are logged and counted there, never silently dropped.
    """
    from mmsift.probe.warmup import train_proxy

    if not records:
        raise ValueError("cannot train the target on an empty subset")
    steps = recipe.steps_for(len(records))
    with deterministic(recipe.threads):
        result = train_proxy(init_dir, list(records), images_dir, steps=steps, lr=recipe.lr,
                             batch_size=recipe.batch_size, seed=seed, device=device)
    log.info("trained target on %d samples: %d steps, %.1fs, final loss %.3f", result.n_samples, steps,
             result.seconds, sum(result.losses[-10:]) / max(1, len(result.losses[-10:])))
    return result
