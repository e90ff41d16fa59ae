"""Judge with a local Hugging Face vision-language model (any checkpoint ``AutoModelForImageTextToText`` loads:
LLaVA, Qwen2-VL, Idefics3/SmolVLM...). Batched greedy generation with left padding; nothing is downloaded
(``local_files_only``). torch and transformers are imported only when this backend is built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from mmsift.judge.backends import JudgeBackend, JudgeRequest

log = logging.getLogger(__name__)


def judge_processor(model_dir: Path):
    """The checkpoint's processor as the probe loads it (no torchvision needed for the families mmsift supports,
    see docs/families.md); ``AutoProcessor`` for any other family."""
    from mmsift.models.loading import declared_family
    from mmsift.models.processors import load_processor
    from mmsift.models.quirks import QUIRKS

    model_type, _ = declared_family(model_dir)
    if model_type in QUIRKS:
        return load_processor(model_dir, QUIRKS[model_type], model_type=model_type)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir, local_files_only=True)


class HFBackend(JudgeBackend):
    """Loads ``model_dir`` with its own processor and chat template; answers ``batch_size`` requests at a time.

    Requests are batched with others that carry the same number of images (a processor needs the images of a
    batch to line up with the image placeholders of its texts), in their original order otherwise.
    """

    def __init__(self, *, model_dir: str | Path, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 64,
                 dtype: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"judge model folder not found: {self.model_dir} (a local model directory)")
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"{self.model_dir} is not a model directory (no config.json)")
        from mmsift.models.loading import check_device

        check_device(device)
        self.model_id = self.model_dir.name
        self.device = device
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.processor = judge_processor(self.model_dir)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, **kwargs).to(device).eval()
        self._torch = torch

    def _text(self, request: JudgeRequest) -> str:
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # No chat template: the LLaVA-1.5 layout.
        images = "".join("<image>\n" for _ in request.images)
        return f"USER: {images}{request.prompt} ASSISTANT:"

    def _batch(self, requests: Sequence[JudgeRequest]) -> list[str]:
        from PIL import Image

        texts = [self._text(r) for r in requests]
        images = []  # nested per request: a flat list is read as one image per text by some processors (OneVision)
        for r in requests:
            images.append([])
            for p in r.images:
                with Image.open(p) as im:
                    images[-1].append(im.convert("RGB"))
        bos = self.tokenizer.bos_token
        # A template that writes BOS gets none from the tokenizer (no double BOS).
        inputs = self.processor(text=texts, images=images if any(images) else None, return_tensors="pt",
                                padding=True, add_special_tokens=not (bos and texts[0].startswith(bos)))
        inputs = inputs.to(self.device)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def generate(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(len(r.images), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                try:
                    texts = self._batch([requests[i] for i in part])
                except OSError as e:  # an image that cannot be read: those requests get no answer
                    log.warning("judge batch skipped: %s", e)
                    continue
                for i, t in zip(part, texts):
                    answers[i] = t
        return answers

    def close(self) -> None:
        self.model = None
