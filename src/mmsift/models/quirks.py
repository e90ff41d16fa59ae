"""What differs between model families, declared as data: one :class:`Quirks` row per ``config.model_type``.

Everything else is the generic adapter (:mod:`mmsift.models.base`): ``AutoModelForImageTextToText``, the checkpoint's
own processor and chat template, answer masks from the rendered template, image placement by the processor, hidden
states through pre-hooks on the decoder layers. A family is supported when it has a row here and passed the
reference test (``tests/test_generic_adapter.py``); ``docs/families.md`` explains how to add one.

What the generic path finds by itself and is therefore *not* declared: whether the template writes BOS (the
tokenizer then adds none), which tokens the processor inserts around an image (from its text replacement offsets),
the extra tensors the processor returns (all are passed to the model; per-token ones are right-padded with 0, the
others concatenated after zero-padding their trailing dimensions), q/k norms, ``attn.scaling``, a layer's sliding
window, logit soft-capping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quirks:
    """One family's declared overrides.

    ``decoder`` / ``vision_tower``: attribute names under ``model.model`` of the language model (with ``.layers``)
    and of the vision tower (frozen in instruction tuning). ``inputs``: tensors the processor must return for the
    model body to run correctly (an encoding without them is refused: Qwen2.5-VL and Gemma 3 run without theirs but
    compute something else). ``positions``: ``"cumsum"`` (1-D positions of a right-padded batch) or ``"mrope"``
    (3-axis positions from ``model.model.get_rope_index``, passed to the body explicitly). ``rope_by_layer_type``:
    the rotary embedding takes the layer's type (Gemma 3 has one RoPE base per attention type).
    ``video_free_processor``: the processor class to build from the image processor, tokenizer and template when
    its bundled video processor needs torchvision. ``own_processor``: the family's processor cannot be imported
    without torchvision at all, so mmsift's own image-only one is used (``"pixtral"``). ``nominal_image_side``: a
    square image of this side stands in for every image when sorting by length before images are read.
    """

    decoder: str = "language_model"
    vision_tower: str = "vision_tower"
    inputs: tuple[str, ...] = ()
    positions: str = "cumsum"
    rope_by_layer_type: bool = False
    video_free_processor: str | None = None
    own_processor: str | None = None
    nominal_image_side: int = 336


_QWEN = dict(vision_tower="visual", inputs=("image_grid_thw", "mm_token_type_ids"), positions="mrope",
             nominal_image_side=448)

QUIRKS: dict[str, Quirks] = {
    "llava": Quirks(),
    "llava_next": Quirks(inputs=("image_sizes",), nominal_image_side=672),
    "llava_onevision": Quirks(inputs=("image_sizes",), video_free_processor="LlavaOnevisionProcessor",
                              nominal_image_side=672),
    "qwen2_vl": Quirks(video_free_processor="Qwen2VLProcessor", **_QWEN),
    "qwen2_5_vl": Quirks(video_free_processor="Qwen2_5_VLProcessor", **_QWEN),
    "qwen3_vl": Quirks(video_free_processor="Qwen3VLProcessor", **_QWEN),
    "idefics3": Quirks(decoder="text_model", vision_tower="vision_model", nominal_image_side=512),
    "gemma3": Quirks(inputs=("token_type_ids",), rope_by_layer_type=True, nominal_image_side=896),
    "internvl": Quirks(video_free_processor="InternVLProcessor", nominal_image_side=448),
    "mistral3": Quirks(inputs=("image_sizes",), own_processor="pixtral", nominal_image_side=1024),
}

# What the reference test ran on (tests/test_generic_adapter.py; docs/families.md): the window mmsift declares.
TESTED_TRANSFORMERS = ("5.18.0", "5.24.0")


class UnsupportedFamily(ValueError):
    """A checkpoint whose family mmsift cannot feed; the message names the family and what is missing."""


def quirks_for(model_type: str, *, architecture: str | None = None) -> Quirks:
    """The declared quirks of ``model_type``; :class:`UnsupportedFamily` naming it and what is missing otherwise."""
    try:
        return QUIRKS[model_type]
    except KeyError:
        what = f"model type {model_type!r}" + (f" ({architecture})" if architecture else "")
        raise UnsupportedFamily(
            f"{what} is not supported: mmsift has no quirk entry for it, so its decoder, vision tower, position "
            f"rule and required inputs are unknown (supported: {', '.join(sorted(QUIRKS))}); a family is added with "
            "one row in mmsift/models/quirks.py and a tiny checkpoint in the reference test (docs/families.md)"
        ) from None
