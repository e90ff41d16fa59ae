"""LLaVA-NeXT (LLaVA-1.6) family adapter, and the helpers for 5-D pixel tensors it shares with Idefics3.

What differs from LLaVA-1.5: "any-resolution" images. The processor cuts each image into a variable number of
crops, so ``pixel_values`` is ``(n_images, n_crops, C, H, W)`` with ``image_sizes`` per image, and the number of
image tokens depends on the image's size. The answer mask needs nothing special (the expansion is one run of
``<image>`` tokens per image, which the base class aligns). Batching pads the crop axis with zero crops: the model
reads only the first crops of each image, as many as ``image_sizes`` implies, so padding crops are never seen.
"""

from __future__ import annotations

import torch

from mmsift.models.base import Batch, Encoded, FamilyAdapter


def pad_cat(tensors: list[torch.Tensor], *, pad_dims: tuple[int, ...]) -> torch.Tensor:
    """Concatenate on dim 0 after zero-padding each tensor (at the end) to the largest size on ``pad_dims``."""
    ref = tensors[0]
    target = [max(t.shape[d] for t in tensors) for d in range(ref.dim())]
    out = []
    for t in tensors:
        if all(t.shape[d] == target[d] for d in pad_dims):
            out.append(t)
            continue
        padded = t.new_zeros([t.shape[0]] + [target[d] if d in pad_dims else t.shape[d] for d in range(1, t.dim())])
        padded[tuple(slice(0, s) for s in t.shape)] = t
        out.append(padded)
    return torch.cat(out, dim=0)


class LlavaNextAdapter(FamilyAdapter):
    """LLaVA-NeXT (``llava_next``, ``LlavaNextForConditionalGeneration``)."""

    # Nominal image side used only to estimate sequence lengths for length-sorted batching (no image is decoded then).
    NOMINAL_IMAGE_SIDE = 672


    def collate(self, encs: list[Encoded]) -> Batch:
        pixels = [e.extra["pixel_values"] for e in encs if "pixel_values" in e.extra]
        rest = [Encoded(e.input_ids, e.answer_mask, e.image_mask,
                        {k: v for k, v in e.extra.items() if k != "pixel_values"}, e.n_images) for e in encs]
        batch = super().collate(rest)
        if pixels:
            batch.extra["pixel_values"] = pad_cat(pixels, pad_dims=(1,))
        return batch

