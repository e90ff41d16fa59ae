"""A checkpoint's own processor, loaded from local disk without torchvision (mmsift never installs it).

``AutoProcessor`` works for families whose processor has no video part. For the others (LLaVA-OneVision, Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, InternVL) it raises ``ImportError`` because the bundled video processor needs torchvision;
:func:`build_video_free` builds the same processor class from its image processor (transformers picks the PIL one),
tokenizer, chat template and saved keyword arguments, with no video processor. Mistral 3's ``PixtralProcessor``
cannot be imported without torchvision at all: :class:`PixtralImageProcessor` does its image expansion here.
Which family takes which path is declared in :mod:`mmsift.models.quirks`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def chat_template(path: Path, tokenizer) -> str | None:
    """The model's chat template: ``chat_template.jinja``, ``chat_template.json``, ``processor_config.json`` or
    the tokenizer's (where it lives depends on when the checkpoint was saved)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json"):
        f = path / name
        if f.is_file():
            template = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
            if template:
                return template
    return getattr(tokenizer, "chat_template", None)


def saved_kwargs(path: Path) -> dict:
    """The processor's own keyword arguments saved in ``processor_config.json`` (its non-dict entries)."""
    f = path / "processor_config.json"
    if not f.is_file():
        return {}
    data = json.loads(f.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in ("processor_class", "chat_template", "auto_map")
            and not isinstance(v, dict)}


def load_processor(path, quirks, *, model_type: str):
    """The processor of the checkpoint at ``path`` (family ``model_type`` with ``quirks``)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    path = Path(path)
    needs_parts = quirks.own_processor or (quirks.video_free_processor and not has_torchvision())
    if not needs_parts:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Without torchvision, transformers picks the *ImageProcessorPil class.
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    template = chat_template(path, tokenizer)
    if not template:
        raise ValueError(f"{path}: model type {model_type!r} has no chat template (chat_template.jinja, "
                         "chat_template.json or the tokenizer's); the answer mask follows the model's own template")
    kwargs = saved_kwargs(path)
    if quirks.own_processor == "pixtral":
        return PixtralImageProcessor.from_parts(image_processor=image_processor, tokenizer=tokenizer,
                                                chat_template=template, saved=kwargs)
    return build_video_free(quirks.video_free_processor, tokenizer=tokenizer, image_processor=image_processor,
                            chat_template=template, kwargs=kwargs)


def video_free_class(processor_class: str):
    """``processor_class`` accepting ``video_processor=None`` (its class check would look the video class up,
    which fails without torchvision)."""
    import transformers

    base = getattr(transformers, processor_class)

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return base.check_argument_for_proper_class(self, argument_name, argument)

    return type(processor_class, (base,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def build_video_free(processor_class: str, *, tokenizer, image_processor, chat_template: str | None,
                     kwargs: dict | None = None):
    """A ``processor_class`` processor without a video processor (mmsift never feeds video)."""
    import inspect

    cls = video_free_class(processor_class)
    accepted = set(inspect.signature(cls.__init__).parameters)
    extra = {k: v for k, v in (kwargs or {}).items() if k in accepted}
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
               chat_template=chat_template, **extra)


def save_parts(processor, out_dir) -> None:
    """Save a processor built from parts the way such checkpoints ship it (tokenizer, image processor, template);
    ``ProcessorMixin.save_pretrained`` cannot save one whose video processor is None."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    if processor.chat_template:
        (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")


class PixtralImageProcessor:
    """Mistral 3's image expansion without ``PixtralProcessor`` (whose module imports torchvision).

    Each ``[IMG]`` placeholder becomes, per row of merged patches, ``[IMG]`` x columns + ``[IMG_BREAK]``, with the
    image's last token replaced by ``[IMG_END]``; the image processor resizes so that both sides are multiples of
    ``patch_size * spatial_merge_size``. It answers the calls the adapter makes of a transformers processor,
    including the text replacement offsets the answer mask is built from.
    """

    def __init__(self, *, image_processor, tokenizer, chat_template: str, patch_size: int, spatial_merge_size: int,
                 image_token: str, image_break_token: str, image_end_token: str):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template
        self.block = int(patch_size) * int(spatial_merge_size)
        self.image_token, self.image_break_token, self.image_end_token = \
            image_token, image_break_token, image_end_token

    @classmethod
    def from_parts(cls, *, image_processor, tokenizer, chat_template: str, saved: dict):
        patch = saved.get("patch_size", image_processor.patch_size)
        patch = patch["height"] if isinstance(patch, dict) else patch
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                   patch_size=int(patch), spatial_merge_size=int(saved.get("spatial_merge_size", 1)),
                   image_token=saved.get("image_token", "[IMG]"),
                   image_break_token=saved.get("image_break_token", "[IMG_BREAK]"),
                   image_end_token=saved.get("image_end_token", "[IMG_END]"))

    def apply_chat_template(self, messages, *, tokenize=False, add_generation_prompt=False):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt)

    def _pixels(self, flat: list) -> dict:
        return dict(self.image_processor(flat, patch_size={"height": self.block, "width": self.block},
                                         return_tensors="pt"))

    def __call__(self, *, text, images=None, return_tensors="pt", add_special_tokens=True, padding=False,
                 padding_side=None, return_offsets_mapping=False, return_text_replacement_offsets=False):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        pixels, replaced = {}, [[] for _ in texts]
        if images:
            flat = [im for group in images for im in group] if isinstance(images[0], (list, tuple)) else images
            pixels = self._pixels(flat)
            blocks = iter(self._image_block(int(h), int(w)) for h, w in pixels["image_sizes"])
            texts = [self._expand(t, blocks, replaced[n]) for n, t in enumerate(texts)]
        side = {"padding_side": padding_side} if padding_side else {}
        enc = self.tokenizer(texts, return_tensors=return_tensors, add_special_tokens=add_special_tokens,
                             padding=padding, return_offsets_mapping=return_offsets_mapping, **side)
        out = {**enc, **pixels}
        if return_text_replacement_offsets:
            out["text_replacement_offsets"] = replaced
        return BatchFeature(out)

    def _expand(self, text: str, blocks, replaced: list) -> str:
        pieces = text.split(self.image_token)
        out, src = pieces[0], len(pieces[0])
        for piece in pieces[1:]:
            block = next(blocks)
            replaced.append({"span": (src, src + len(self.image_token)),
                             "new_span": (len(out), len(out) + len(block))})
            out += block + piece
            src += len(self.image_token) + len(piece)
        return out

    def _image_block(self, height: int, width: int) -> str:
        rows, cols = height // self.block, width // self.block
        tokens = ([self.image_token] * cols + [self.image_break_token]) * rows
        tokens[-1] = self.image_end_token
        return "".join(tokens)

    def _get_num_multimodal_tokens(self, image_sizes):
        """Image tokens per ``(height, width)``, by the image processor's resize rule (no pixels touched)."""
        from types import SimpleNamespace

        from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

        size = self.image_processor.size
        longest = size["longest_edge"] if isinstance(size, dict) else getattr(size, "longest_edge", size)
        counts = []
        for h, w in image_sizes:
            shape = (int(h), int(w), 3)
            nh, nw = get_resize_output_image_size(_Shape(shape), size=longest, patch_size=self.block,
                                                  input_data_format="channels_last")
            counts.append((nh // self.block) * (nw // self.block + 1))
        return SimpleNamespace(num_image_tokens=counts)


class _Shape:
    """Stands in for an image array where only its shape is read."""

    def __init__(self, shape):
        self.shape = shape
        self.ndim = len(shape)
