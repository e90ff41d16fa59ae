"""Loading a vision-language model and its own processor from local disk, with the family adapter that feeds it."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mmsift.models.base import FamilyAdapter, ImageLimits
from mmsift.models.quirks import Quirks, UnsupportedFamily, quirks_for

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: object
    processor: object
    adapter: FamilyAdapter
    path: str
    model_type: str
    device: str
    dtype: str


# Below this many parameters a model's matmuls are too small to split across CPU threads.
SMALL_MODEL_PARAMS = 20_000_000


@contextmanager
def cpu_threads_for(model, device):
    """Run a small model on CPU with one intra-op thread (restored afterwards); larger models are left alone.

    Extra threads only spin on matmuls this small. Measured on the shared 2-core dev machine (load average ~5):
    ``train_proxy(proxy, 128 easy-vqa records, steps=16, batch_size=16)`` took 6.2 s and 7.5 s of wall time after
    ``torch.set_num_threads(1)``, 35.8 s and 17.5 s after ``torch.set_num_threads(2)`` (two runs each).
    """
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    if str(device) != "cpu" or not small or torch.get_num_threads() == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_device(device: str) -> None:
    """Raise a ValueError naming the problem when ``device`` is not a usable torch device on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return names[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}") from None


def load_model(path: str | os.PathLike, *, device: str = "cpu", dtype=None, attn_implementation: str = "sdpa",
               limits: ImageLimits | None = None) -> LoadedModel:
    """Load a vision-language model and its own processor from a local directory (never from a hub).

    The family (``config.model_type``) must have a row in :data:`mmsift.models.quirks.QUIRKS`; any other is refused
    before the weights are read, and a model whose structure is not what its row declares is refused after, both
    with :class:`~mmsift.models.quirks.UnsupportedFamily` naming the family and what is missing. ``limits``: the
    per-image bounds (``--max-pixels``, ``--max-image-tokens``) the adapter applies before the processor.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from mmsift.compat import warn_outside_window
    from mmsift.models.processors import load_processor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json); models are loaded from local "
                                "disk only (build one with `mmsift warmup`)")
    check_device(device)
    warn_outside_window()
    torch_dtype = resolve_dtype(dtype, device)
    model_type, arch = declared_family(path)
    quirks = quirks_for(model_type, architecture=arch)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    processor = load_processor(path, quirks, model_type=config.model_type)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch_dtype,
                                                        attn_implementation=attn_implementation)
    check_structure(model, quirks)
    model.to(device).eval()
    adapter = FamilyAdapter(processor, model.config, quirks=quirks, limits=limits)
    return LoadedModel(model, processor, adapter, str(path), model.config.model_type, str(device),
                       str(torch_dtype).replace("torch.", ""))


def declared_family(path: Path) -> tuple[str, str | None]:
    """``model_type`` and first architecture written in ``config.json`` (read before anything is loaded)."""
    import json

    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    arch = (data.get("architectures") or [None])[0]
    return str(data.get("model_type")), arch


def check_structure(model, quirks: Quirks) -> None:
    """:class:`UnsupportedFamily` naming what the generic adapter needs and this model lacks."""
    family = model.config.model_type
    body = getattr(model, "model", None)
    decoder = getattr(body, quirks.decoder, None)
    layers = getattr(decoder, "layers", None)
    missing = []
    if layers is None or len(layers) == 0:
        missing.append(f"decoder layers at model.model.{quirks.decoder}.layers")
    else:
        attn = getattr(layers[-1], "self_attn", None)
        for part in ("q_proj", "k_proj", "input_layernorm"):
            owner = layers[-1] if part == "input_layernorm" else attn
            if getattr(owner, part, None) is None:
                missing.append(f"{part} in its last decoder layer")
        if getattr(decoder, "rotary_emb", None) is None:
            missing.append("a rotary embedding on the decoder")
    if quirks.positions == "mrope" and not hasattr(body, "get_rope_index"):
        missing.append("model.model.get_rope_index (multi-axis positions)")
    if getattr(model, "get_output_embeddings", lambda: None)() is None:
        missing.append("output embeddings (the LM head)")
    if missing:
        raise UnsupportedFamily(f"model type {family!r} ({type(model).__name__}) cannot be probed: it has no "
                                + "; no ".join(missing))
