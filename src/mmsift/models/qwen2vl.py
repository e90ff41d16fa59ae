"""Qwen2-VL and Qwen2.5-VL family adapter.

What differs from LLaVA:

- Loading: ``AutoProcessor`` cannot build a Qwen processor without torchvision (its video processor needs it, and
  mmsift never installs torchvision). :meth:`Qwen2VLAdapter.load_processor` builds the processor from its parts
  (tokenizer, the PIL image processor, the chat template) with ``video_processor=None``; mmsift never feeds video.
- Inputs: the processor returns ``pixel_values`` as flattened patches ``(n_patches, C * t * p * p)`` with
  ``image_grid_thw`` per image, plus ``mm_token_type_ids`` (B, T) that the model needs to build its
  multi-axis positions (M-RoPE). :meth:`collate` right-pads ``mm_token_type_ids`` with text (0).
- Positions: the decoder rotates q/k with 3-axis positions (time, height, width) that jump over image tokens, so the
  final token's attention must use those positions, not ``cumsum(attention_mask)``. :meth:`forward` computes them
  once with the model's own ``get_rope_index`` and :meth:`final_token_attention` reuses them.

The answer mask needs nothing special: the base class renders the model's own template and aligns runs of
``<|image_pad|>`` tokens, which is exactly how Qwen expands an image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mmsift.models.base import Batch, Encoded, EncodeError, FamilyAdapter, rotate_half

log = logging.getLogger(__name__)


def _chat_template(path: Path, tokenizer) -> str | None:
    """The model's chat template: ``chat_template.jinja``, else ``chat_template.json``, else the tokenizer's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = path / "chat_template.json"
    if js.is_file():
        return json.loads(js.read_text(encoding="utf-8")).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def _processor_class(model_type: str):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    base = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor

    class ImageOnlyProcessor(base):
        # The base class checks every sub-processor's class; the video one cannot even be looked up without
        # torchvision, so a missing (None) video processor is accepted here.
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
    return ImageOnlyProcessor


def build_processor(model_type: str, *, tokenizer, image_processor, chat_template: str | None):
    """A Qwen2-VL / Qwen2.5-VL processor without a video processor (no torchvision needed)."""
    cls = _processor_class(model_type)
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
               chat_template=chat_template)


def save_processor(processor, out_dir) -> None:
    """Save a processor built by :func:`build_processor` so :meth:`Qwen2VLAdapter.load_processor` reads it back.

    ``ProcessorMixin.save_pretrained`` cannot save a processor whose video processor is None, so the parts are
    saved one by one, the way Qwen checkpoints ship them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    if processor.chat_template:
        (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")


class Qwen2VLAdapter(FamilyAdapter):
    """Qwen2-VL (``qwen2_vl``) and Qwen2.5-VL (``qwen2_5_vl``)."""

    # Nominal image side used only to estimate sequence lengths for length-sorted batching (images are not decoded
    # when sorting); 448 px is the middle of Qwen's default pixel range.
    NOMINAL_IMAGE_SIDE = 448

    def __init__(self, processor, config):
        super().__init__(processor, config)
        self._positions: torch.Tensor | None = None

    @classmethod
    def load_processor(cls, path):
        """Tokenizer + PIL image processor + chat template from a local model directory, no video processor."""
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        path = Path(path)
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # Without torchvision, transformers picks the *ImageProcessorPil class (and logs that it did).
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        template = _chat_template(path, tokenizer)
        if not template:
            raise EncodeError(f"{path}: no chat template (chat_template.jinja, chat_template.json or the "
                              "tokenizer's); the answer mask follows the model's own template")
        return build_processor(model_type, tokenizer=tokenizer, image_processor=image_processor,
                               chat_template=template)

    # ---- inputs ----------------------------------------------------------------------------------------------

    def collate(self, encs: list[Encoded]) -> Batch:
        types = [e.extra.get("mm_token_type_ids") for e in encs]
        rest = [Encoded(e.input_ids, e.answer_mask, e.image_mask,
                        {k: v for k, v in e.extra.items() if k != "mm_token_type_ids"}, e.n_images) for e in encs]
        batch = super().collate(rest)
        if any(t is not None for t in types):
            mm = torch.zeros(batch.input_ids.shape, dtype=torch.long)
            for r, (e, t) in enumerate(zip(encs, types)):
                if t is not None:
                    mm[r, : len(e)] = t.reshape(-1)
                else:  # text tokens are type 0; image tokens are found by id as the processor does
                    mm[r, : len(e)] = e.image_mask.long()
            batch.extra["mm_token_type_ids"] = mm
        return batch

    # ---- model side ------------------------------------------------------------------------------------------
    def rope_positions(self, model, batch: Batch) -> torch.Tensor:
        """(3, B, T) M-RoPE positions of a right-padded batch, as the model itself computes them."""
        grid = batch.extra.get("image_grid_thw")
        if grid is not None:
            positions, _ = model.model.get_rope_index(
                input_ids=batch.input_ids, mm_token_type_ids=batch.extra["mm_token_type_ids"],
                image_grid_thw=grid, attention_mask=batch.attention_mask)
            return positions
        pos = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0).expand(3, -1, -1)

    def body_inputs(self, model, batch: Batch) -> dict:
        positions = self.rope_positions(model, batch)
        # Kept for final_token_attention, whose signature carries no batch; it checks the shape before use.
        self._positions = positions
        return {**super().body_inputs(model, batch), "position_ids": positions}

    def final_token_attention(self, model, h_in: torch.Tensor, attention_mask: torch.Tensor,
                              last_pos: torch.Tensor) -> torch.Tensor:
        """As the base class, with the batch's M-RoPE positions (from :meth:`forward`) instead of 1-D ones."""
        positions = self._positions
        b, t = attention_mask.shape
        if positions is None or tuple(positions.shape[1:]) != (b, t):
            raise RuntimeError("Qwen2VLAdapter.final_token_attention needs the positions of the batch that "
                               "forward() just ran; call forward first")
        lm, layers = self.decoder_layers(model)
        attn = layers[-1].self_attn
        x = layers[-1].input_layernorm(h_in)
        hd = attn.head_dim
        rows = torch.arange(b, device=x.device)
        q = attn.q_proj(x[rows, last_pos]).view(b, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, KV, T, hd)
        cos, sin = lm.rotary_emb(x, positions.to(x.device))  # (B, T, hd), sections already interleaved
        q = rotate_half(q, cos[rows, last_pos][:, None, None, :], sin[rows, last_pos][:, None, None, :])
        k = rotate_half(k, cos[:, None], sin[:, None])
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # (B, H, T)
        allowed = attention_mask.bool() & (torch.arange(t, device=x.device)[None, :] <= last_pos[:, None])
        scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1)
