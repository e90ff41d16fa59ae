"""Idefics3 family adapter (Idefics3 and SmolVLM checkpoints whose ``model_type`` is ``idefics3``).

What differs from LLaVA:

- Image expansion inserts other tokens: each ``<image>`` becomes, per crop, ``<fake_token_around_image>``, a
  ``<row_i_col_j>`` tag and ``image_seq_len`` image tokens, with newlines between crop rows, then the global view
  ``<fake_token_around_image><global-img>`` + image tokens + ``<fake_token_around_image>``. :meth:`expand_mask`
  therefore maps one template ``<image>`` token to that whole block (never an answer token).
- ``pixel_values`` is ``(1, n_crops, C, H, W)`` per sample with a ``pixel_attention_mask`` (1, n_crops, H, W);
  batching zero-pads the crop axis (the model drops all-zero crops) and the pixel axes (masked out).
- The decoder is ``model.model.text_model`` (a Llama), not ``language_model``.

The chat template writes ``<|im_start|>`` (the BOS) itself and then ``User:`` / ``Assistant:`` turns ending in
``<end_of_utterance>``; the base class's rendering rule gives answer spans from the content to
``<end_of_utterance>`` inclusive.
"""

from __future__ import annotations

from mmsift.models.base import Batch, Encoded, EncodeError, FamilyAdapter
from mmsift.models.llava_next import pad_cat


class Idefics3Adapter(FamilyAdapter):
    """Idefics3 / SmolVLM (``idefics3``, ``Idefics3ForConditionalGeneration``)."""

    # Nominal image side used only to estimate sequence lengths for length-sorted batching (no image is decoded then).
    NOMINAL_IMAGE_SIDE = 512

    def __init__(self, processor, config):
        super().__init__(processor, config)
        tok = self.tokenizer
        self.fake_token_id = tok.convert_tokens_to_ids(processor.fake_image_token)
        self.global_token_id = tok.convert_tokens_to_ids(processor.global_image_tag)

    def messages(self, turns, n_images: int) -> list[dict]:
        # Idefics3/SmolVLM templates read ``content[0]`` of every message; an emptied user turn (the IFD
        # "answer alone" variant) must still have one (empty) text part.
        msgs = super().messages(turns, n_images)
        for m in msgs:
            if not m["content"]:
                m["content"] = [{"type": "text", "text": ""}]
        return msgs


    def skip_image_block(self, raw_ids: list[int], i: int, ids: list[int], j: int) -> tuple[int, int]:
        # One placeholder -> crops ... <fake><global-img><image>*n<fake>; the block ends at the fake token that
        # closes the global view.
        if j >= len(ids) or ids[j] != self.fake_token_id:
            raise EncodeError("processor output lost an image placeholder")
        while j < len(ids) and ids[j] != self.global_token_id:
            j += 1
        while j + 1 < len(ids) and ids[j + 1] == self.image_token_id:
            j += 1
        if j + 1 >= len(ids) or ids[j + 1] != self.fake_token_id:
            raise EncodeError("image block does not end with <fake_token_around_image>")
        return i + 1, j + 2

    def collate(self, encs: list[Encoded]) -> Batch:
        keys = ("pixel_values", "pixel_attention_mask")
        with_images = [e for e in encs if "pixel_values" in e.extra]
        rest = [Encoded(e.input_ids, e.answer_mask, e.image_mask,
                        {k: v for k, v in e.extra.items() if k not in keys}, e.n_images) for e in encs]
        batch = super().collate(rest)
        if not with_images:
            return batch
        # One (zero) crop row per text-only sample keeps pixel rows aligned with samples; the model drops
        # all-zero crops, so they cost nothing but padding.
        ref = with_images[0].extra
        for key in keys:
            if key not in ref:
                continue
            parts = [e.extra[key] if key in e.extra else ref[key].new_zeros((1, 1) + tuple(ref[key].shape[2:]))
                     for e in encs]
            batch.extra[key] = pad_cat(parts, pad_dims=tuple(range(1, ref[key].dim())))
        return batch

    @staticmethod
    def decoder_layers(model):
        lm = model.model.text_model
        return lm, lm.layers

