"""The family adapter: how a vision-language model family is fed, and which of its tokens are answer tokens.

A :class:`FamilyAdapter` knows how one model family turns a record's turns and images into model inputs, and which
input tokens are *answer tokens* (the only ones the loss counts).

How the answer mask is built (every family, no per-template parsing): the conversation is rendered with the
model's own chat template; for assistant turn k the template is also rendered for the messages before it with
``add_generation_prompt=True`` (prefix P_k) and for the messages up to and including it (S_k). S_k[len(P_k):] is
what the template emits for that turn; its answer span starts where the turn's content starts and ends at the end
of that emission with trailing whitespace removed, so it covers the content plus the end-of-turn token(s) the
template writes (``</s>``, ``<|im_end|>``) and nothing of the next turn. The rendered text is tokenised with
offsets and a token is an answer token when its characters overlap an answer span. The processor expands each
image placeholder (inserting whatever its family writes around the image tokens) and reports where
(``return_text_replacement_offsets``): :func:`answer_mask_from_offsets` maps its tokens back to the rendered text,
so the mask needs no per-family code.

One :class:`FamilyAdapter` serves every supported family; what differs (decoder and vision tower names, positions,
inputs the model needs) is declared in :mod:`mmsift.models.quirks`. The adapter holds the processor only (it is
picklable for DataLoader workers); methods that run the model take it as an argument.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from mmsift.data.records import IMAGE_PLACEHOLDER, Turn
from mmsift.models.capture import hidden_state_taps, record_inputs
from mmsift.models.quirks import Quirks, quirks_for

log = logging.getLogger(__name__)


class EncodeError(ValueError):
    """A record cannot be turned into model inputs (bad turns, template mismatch, too long...)."""


@dataclass
class Encoded:
    """One sample's model inputs. ``extra`` holds per-sample tensors concatenated on dim 0 by :meth:`collate`."""

    input_ids: torch.Tensor  # (T,) long
    answer_mask: torch.Tensor  # (T,) bool: position t is an answer token (predicted from t-1)
    image_mask: torch.Tensor  # (T,) bool: position t is an image token
    extra: dict = field(default_factory=dict)
    n_images: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Batch:
    """Right-padded model inputs of B samples; masks are False on padding."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) long
    answer_mask: torch.Tensor  # (B, T) bool
    image_mask: torch.Tensor  # (B, T) bool
    extra: dict = field(default_factory=dict)

    def to(self, device, dtype=None) -> "Batch":
        def move(v):
            if not torch.is_tensor(v):
                return v
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device)

        return Batch(move(self.input_ids), move(self.attention_mask), move(self.answer_mask),
                     move(self.image_mask), {k: move(v) for k, v in self.extra.items()})

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def split_image_placeholders(text: str) -> list[dict]:
    """User text with ``<image>`` placeholders -> chat-template content parts, in order.

    The newline that LLaVA pools write right after a placeholder is dropped: templates add their own.
    """
    parts: list[dict] = []
    pieces = text.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
            if piece.startswith("\n"):
                piece = piece[1:]
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


@dataclass(frozen=True)
class ImageLimits:
    """Per-image bounds applied before the processor: at most ``max_pixels`` pixels and at most
    ``max_image_tokens`` image tokens (as the processor counts them). An image above a bound is scaled down, aspect
    kept (bicubic); ``None`` leaves the processor's own sizing alone."""

    max_pixels: int | None = None
    max_image_tokens: int | None = None

    def check(self) -> None:
        for name in ("max_pixels", "max_image_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


# Per-token inputs some processors return: right-padded with 0 (text) when batching.
PER_TOKEN_INPUTS = ("mm_token_type_ids", "token_type_ids")
# Processor outputs that describe the text, not model inputs.
NOT_MODEL_INPUTS = ("input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets")


class FamilyAdapter:
    """Inputs, answer masks and model-side access for any family with a row in :data:`mmsift.models.quirks.QUIRKS`.

    One class serves every family; what differs is declared in its :class:`~mmsift.models.quirks.Quirks`.
    """

    def __init__(self, processor, config, *, quirks: Quirks | None = None, limits: ImageLimits | None = None):
        self.processor = processor
        self.config = config
        self.family = config.model_type
        self.quirks = quirks or quirks_for(config.model_type)
        self.limits = limits or ImageLimits()
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token = getattr(processor, "image_token", IMAGE_PLACEHOLDER)
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.image_token_id = int(token_id)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id or 0
        bos = self.tokenizer.bos_token
        probe = self.render([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                            add_generation_prompt=True)
        # Templates that write the BOS token themselves must not get a second one from the tokenizer.
        self.add_special_tokens = not (bos and probe.startswith(bos))
        self._positions: torch.Tensor | None = None
        self._token_counts: dict = {}

    # ---- text side -------------------------------------------------------------------------------------------
    def messages(self, turns: list[Turn], n_images: int) -> list[dict]:
        """Chat messages for the template. Images without a placeholder go before the first user text; a message
        left without parts (the IFD "answer alone" variant) gets one empty text part (templates read
        ``content[0]``)."""
        n_placeholders = sum(t.text.count(IMAGE_PLACEHOLDER) for t in turns if t.role == "user")
        if n_placeholders > n_images:
            raise EncodeError(f"{n_placeholders} <image> placeholders but {n_images} images")
        missing = n_images - n_placeholders
        msgs = []
        for t in turns:
            if t.role == "user":
                text = t.text
                if missing:
                    text = IMAGE_PLACEHOLDER * missing + "\n" + text
                    missing = 0
                msgs.append({"role": "user", "content": split_image_placeholders(text)})
            else:
                if IMAGE_PLACEHOLDER in t.text:
                    raise EncodeError(f"<image> placeholder in a {t.role} turn")
                msgs.append({"role": t.role, "content": [{"type": "text", "text": t.text}]})
        if missing:
            raise EncodeError("record has images but no user turn to put them in")
        for m in msgs:
            if not m["content"]:
                m["content"] = [{"type": "text", "text": ""}]
        return msgs

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its assistant answers (see module doc)."""
        full = self.render(messages)
        spans = []
        for k, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prefix = self.render(messages[:k], add_generation_prompt=True) if k else ""
            upto = self.render(messages[: k + 1])
            if not upto.startswith(prefix) or not full.startswith(upto):
                raise EncodeError("chat template does not render conversation prefixes as prefixes; "
                                  "answer tokens cannot be located")
            content = "".join(p.get("text", "") for p in msg["content"]).strip()
            emitted = upto[len(prefix):]
            at = emitted.find(content) if content else -1
            start = len(prefix) + (at if at >= 0 else len(emitted) - len(emitted.lstrip()))
            end = len(prefix) + len(emitted.rstrip())
            if end > start:
                spans.append((start, end))
        return full, spans

    def text_ids_and_mask(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Token ids of the rendered conversation (image placeholders unexpanded) and the answer mask."""
        text, spans = self.answer_spans(messages)
        enc = self.tokenizer(text, add_special_tokens=self.add_special_tokens, return_offsets_mapping=True)
        mask = []
        for s, e in enc["offset_mapping"]:
            mask.append(e > s and any(s < b and e > a for a, b in spans))
        return list(enc["input_ids"]), mask

    # ---- inputs ----------------------------------------------------------------------------------------------
    def encode(self, turns: list[Turn], images: list) -> Encoded:
        """Model inputs of one conversation with its (already decoded, RGB) PIL images."""
        messages = self.messages(turns, len(images))
        text, spans = self.answer_spans(messages)
        kwargs = {"text": [text], "return_tensors": "pt", "add_special_tokens": self.add_special_tokens,
                  "return_offsets_mapping": True, "return_text_replacement_offsets": True}
        if images:
            kwargs["images"] = [[self.limit_image(im) for im in images]]  # nested: the images of one sample
        out = self.processor(**kwargs)
        ids = out["input_ids"][0]
        replaced = out.get("text_replacement_offsets")  # absent (or empty) when nothing was replaced
        replaced = replaced[0] if replaced is not None and len(replaced) else []
        mask = answer_mask_from_offsets(out["offset_mapping"][0].tolist(), replaced, spans)
        extra = {k: v for k, v in out.items() if k not in NOT_MODEL_INPUTS and torch.is_tensor(v)}
        if images:
            missing = [k for k in self.quirks.inputs if k not in extra]
            if missing:
                raise EncodeError(f"the {self.family} processor returned no {', '.join(missing)}, which the model "
                                  "needs to place the image correctly")
        image_mask = ids == self.image_token_id
        if images and not bool(image_mask.any()):
            raise EncodeError("processor output holds no image token for the record's images")
        return Encoded(input_ids=ids.long(), answer_mask=torch.tensor(mask, dtype=torch.bool),
                       image_mask=image_mask, extra=extra, n_images=len(images))

    def image_tokens(self, height: int, width: int) -> int:
        """Tokens the processor writes for one image of this size (its own count; cached by size)."""
        key = (int(height), int(width))
        if key not in self._token_counts:
            counts = self.processor._get_num_multimodal_tokens(image_sizes=[list(key)])
            self._token_counts[key] = int(counts.num_image_tokens[0])
        return self._token_counts[key]

    def limited_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is scaled to under :attr:`limits` (unchanged if within)."""
        lim = self.limits
        scale = 1.0
        if lim.max_pixels is not None and width * height > lim.max_pixels:
            scale = math.sqrt(lim.max_pixels / (width * height))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        if lim.max_image_tokens is None or self.image_tokens(size[1], size[0]) <= lim.max_image_tokens:
            return size
        lo, hi = 0.0, scale  # bisect the largest scale whose token count is within the bound
        for _ in range(16):
            mid = (lo + hi) / 2
            w, h = max(1, int(width * mid)), max(1, int(height * mid))
            lo, hi = (mid, hi) if self.image_tokens(h, w) <= lim.max_image_tokens else (lo, mid)
        size = (max(1, int(width * lo)), max(1, int(height * lo)))
        if self.image_tokens(size[1], size[0]) > lim.max_image_tokens:
            raise EncodeError(f"a {width}x{height} image takes {self.image_tokens(size[1], size[0])} tokens in "
                              f"{self.family} at any size, more than --max-image-tokens {lim.max_image_tokens}")
        return size

    def limit_image(self, image):
        """``image`` scaled down to :attr:`limits` (the same object when within them)."""
        if self.limits.max_pixels is None and self.limits.max_image_tokens is None:
            return image
        size = self.limited_size(*image.size)
        if size == tuple(image.size):
            return image
        from PIL import Image

        return image.resize(size, Image.Resampling.BICUBIC)

    CHARS_PER_TOKEN = 4

    def sort_length(self, turns: list[Turn], n_images: int, image_sizes=None) -> int:
        """Length estimate used to sort samples into batches (and to fill a token budget).

        Deliberately cheap (characters / 4 + image tokens, no templating or tokenising): it runs for every record
        in the main process, while the real encoding runs in DataLoader workers. ``image_sizes``: (width, height)
        per image, read from the files' headers, or None for the family's nominal square image.
        """
        chars = sum(len(t.text.replace(IMAGE_PLACEHOLDER, "")) + 8 for t in turns)
        if image_sizes is None:
            side = self.quirks.nominal_image_side
            image_sizes = [(side, side)] * n_images
        tokens = 0
        for size in image_sizes:
            w, h = (self.quirks.nominal_image_side,) * 2 if size is None else self.limited_size(*size)
            tokens += self.image_tokens(h, w)
        return chars // self.CHARS_PER_TOKEN + tokens

    def collate(self, encs: list[Encoded]) -> Batch:
        """Right-pad to the longest sample. Per-token inputs are padded with 0; every other tensor is concatenated
        on dim 0 in batch order (the model scatters image features into image tokens in row-major order) after
        zero-padding its trailing dims to the largest (crop counts, image sides: the model ignores zero crops,
        and image sizes it is given say where the real pixels are)."""
        t = max(len(e) for e in encs)
        b = len(encs)
        ids = torch.full((b, t), self.pad_token_id, dtype=torch.long)
        att = torch.zeros((b, t), dtype=torch.long)
        ans = torch.zeros((b, t), dtype=torch.bool)
        img = torch.zeros((b, t), dtype=torch.bool)
        for r, e in enumerate(encs):
            n = len(e)
            ids[r, :n], att[r, :n], ans[r, :n], img[r, :n] = e.input_ids, 1, e.answer_mask, e.image_mask
        extra = {}
        for key in sorted({k for e in encs for k in e.extra}):
            if key in PER_TOKEN_INPUTS:
                per_token = torch.zeros((b, t), dtype=torch.long)
                for r, e in enumerate(encs):  # missing: text is 0, image tokens (by id) 1, as processors do
                    v = e.extra.get(key)
                    per_token[r, : len(e)] = e.image_mask.long() if v is None else v.reshape(-1)
                extra[key] = per_token
                continue
            parts = [e.extra[key] for e in encs if key in e.extra]
            extra[key] = pad_cat(parts, pad_dims=tuple(range(1, parts[0].dim())))
        return Batch(ids, att, ans, img, extra)

    # ---- model side ------------------------------------------------------------------------------------------
    @staticmethod
    def num_layers(model) -> int:
        return int(model.config.get_text_config().num_hidden_layers)

    def body_inputs(self, model, batch: Batch) -> dict:
        """Keyword arguments of the model body (``model.model``) for ``batch``."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False,
                  **batch.extra}
        if self.quirks.positions == "mrope":
            # Kept for final_token_attention, whose signature carries no batch; it checks the shape before use.
            self._positions = inputs["position_ids"] = self.rope_positions(model, batch)
        return inputs

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

    def forward(self, model, batch: Batch, *, hidden_layers=None):
        """Run the model body (no LM head). Returns (last_hidden_state, {index: hidden state} or None).

        ``hidden_layers`` are indices into the L+1 hidden states (0 = embeddings, L or -1 = final, after the final
        norm); only those are kept, so memory does not grow with the model depth. They are read with forward
        pre-hooks on the decoder layers (see capture.py), which behave the same on every transformers release.
        """
        n_layers = self.num_layers(model)
        wanted = sorted({i % (n_layers + 1) for i in hidden_layers or ()})
        _, layers = self.decoder_layers(model)
        with record_inputs(hidden_state_taps(layers, wanted, n_layers)) as states:
            out = model.model(**self.body_inputs(model, batch))
        if not hidden_layers:
            return out.last_hidden_state, None
        hidden = dict(states)
        if n_layers in wanted:
            hidden[n_layers] = out.last_hidden_state
        return out.last_hidden_state, hidden

    def vision_tower(self, model):
        """The model's vision tower (frozen in instruction tuning), or None when the model has none there."""
        return getattr(getattr(model, "model", None), self.quirks.vision_tower, None)

    @staticmethod
    def lm_head(model, hidden: torch.Tensor) -> torch.Tensor:
        logits = model.get_output_embeddings()(hidden)
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:  # as the model's own forward does after its LM head
            logits = torch.tanh(logits / cap) * cap
        return logits

    def decoder_layers(self, model):
        lm = getattr(model.model, self.quirks.decoder)
        return lm, lm.layers

    def final_token_attention(self, model, h_in: torch.Tensor, attention_mask: torch.Tensor,
                              last_pos: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, T) of each sample's final token at the last decoder layer.

        Recomputed from that layer's input ``h_in`` (hidden state -2) with its own norm, q/k projections (and q/k
        norms), RoPE (the family's positions), ``attn.scaling`` and sliding window, so no layer ever materialises a
        (T x T) attention matrix. Keys outside ``attention_mask`` get zero.
        """
        lm, layers = self.decoder_layers(model)
        attn = layers[-1].self_attn
        x = layers[-1].input_layernorm(h_in)
        b, t, _ = x.shape
        hd = attn.head_dim
        rows = torch.arange(b, device=x.device)
        q = attn.q_proj(x[rows, last_pos]).view(b, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, KV, T, hd)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = self._rotary(lm, attn, x, self._final_positions(attention_mask))
        q = rotate_half(q, cos[rows, last_pos][:, None, None, :], sin[rows, last_pos][:, None, None, :])
        k = rotate_half(k, cos[:, None], sin[:, None])
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # (B, H, T)
        cap = getattr(model.config.get_text_config(), "attn_logit_softcapping", None)
        if cap:
            scores = torch.tanh(scores / cap) * cap
        keys = torch.arange(t, device=x.device)[None, :]
        allowed = attention_mask.bool() & (keys <= last_pos[:, None])
        window = getattr(attn, "sliding_window", None)
        if window:
            allowed &= keys > (last_pos[:, None] - window)
        scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _final_positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.quirks.positions != "mrope":
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        positions = self._positions
        if positions is None or tuple(positions.shape[1:]) != tuple(attention_mask.shape):
            raise RuntimeError(f"{self.family}: final_token_attention needs the positions of the batch that "
                               "forward() just ran; call forward first")
        return positions.to(attention_mask.device)

    def _rotary(self, lm, attn, x, positions):
        if self.quirks.rope_by_layer_type:
            return lm.rotary_emb(x, positions, attn.layer_type if hasattr(attn, "layer_type")
                                 else lm.config.layer_types[attn.layer_idx])
        return lm.rotary_emb(x, positions)


def answer_mask_from_offsets(offsets, replacements, spans) -> list[bool]:
    """Answer mask of the processor's tokens from their character offsets in the expanded text.

    ``replacements``: the processor's text replacement offsets (each placeholder's ``span`` in the rendered text
    and its ``new_span`` in the expanded text). A token inside a ``new_span`` is part of an image block (never an
    answer); any other token is mapped back to the rendered text by the growth of the replacements before it and
    is an answer token when it overlaps one of ``spans`` (the assistant spans of the rendered text).
    """
    reps = sorted((tuple(r["new_span"]), tuple(r["span"])) for r in replacements)
    mask = []
    for s, e in offsets:
        if e <= s:  # special tokens the tokenizer adds (BOS) have no characters
            mask.append(False)
            continue
        shift, inside = 0, False
        for (ns, ne), (os_, oe) in reps:
            if s >= ne:
                shift += (ne - ns) - (oe - os_)
            elif e > ns:
                inside = True
                break
            else:
                break
        a, b = s - shift, e - shift
        mask.append(not inside and any(a < y and b > x for x, y in spans))
    return mask


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


def rotate_half(x, cos, sin):
    """RoPE applied to ``x`` with the given cos/sin tables (the rotate-half convention of Llama-style models)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin
