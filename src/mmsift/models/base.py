"""The family adapter: how a vision-language model family is fed, and which of its tokens are answer tokens.

A :class:`FamilyAdapter` knows how one model family turns a record's turns and images into model inputs, and which
input tokens are *answer tokens* (the only ones the loss counts).

How the answer mask is built (every family, no per-template parsing): the conversation is rendered with the
model's own chat template; for assistant turn k the template is also rendered for the messages before it with
``add_generation_prompt=True`` (prefix P_k) and for the messages up to and including it (S_k). S_k[len(P_k):] is
what the template emits for that turn; its answer span starts where the turn's content starts and ends at the end
of that emission with trailing whitespace removed, so it covers the content plus the end-of-turn token(s) the
template writes (``</s>``, ``<|im_end|>``) and nothing of the next turn. The rendered text is tokenised with
offsets and a token is an answer token when its characters overlap an answer span. The processor then expands
each image placeholder into the model's image tokens; :meth:`FamilyAdapter.expand_mask` carries the mask over by
aligning runs of the image token (families whose expansion inserts other tokens override it).

The adapter holds the processor only (it is picklable for DataLoader workers); methods that run the model take
it as an argument. A family is registered with one line in :data:`mmsift.models.registry.FAMILIES`, keyed by
``config.model_type``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from mmsift.data.records import IMAGE_PLACEHOLDER, Turn
from mmsift.models.capture import hidden_state_taps, record_inputs

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


class FamilyAdapter:
    """Inputs, answer masks and last-layer attention for one model family. This base serves LLaVA-1.5.

    Subclasses override what their family does differently (e.g. ``collate`` for variable patch counts,
    ``expand_mask`` for expansions that insert tokens, ``rope`` for multi-axis positions).
    """

    def __init__(self, processor, config):
        self.processor = processor
        self.config = config
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token = getattr(processor, "image_token", IMAGE_PLACEHOLDER)
        self.image_token_id = int(getattr(config, "image_token_id", None)
                                  or getattr(config, "image_token_index", None)
                                  or self.tokenizer.convert_tokens_to_ids(self.image_token))
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id or 0
        bos = self.tokenizer.bos_token
        probe = self.render([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                            add_generation_prompt=True)
        # Templates that write the BOS token themselves must not get a second one from the tokenizer.
        self.add_special_tokens = not (bos and probe.startswith(bos))

    @classmethod
    def load_processor(cls, path):
        """The family's processor from a local model directory (override where AutoProcessor cannot build it)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, local_files_only=True)

    # ---- text side -------------------------------------------------------------------------------------------
    def messages(self, turns: list[Turn], n_images: int) -> list[dict]:
        """Chat messages for the template. Images without a placeholder go before the first user text."""
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
        raw_ids, raw_mask = self.text_ids_and_mask(messages)
        text = self.render(messages)
        kwargs = {"text": [text], "return_tensors": "pt", "add_special_tokens": self.add_special_tokens}
        if images:
            kwargs["images"] = list(images)
        out = self.processor(**kwargs)
        ids = out["input_ids"][0]
        mask = self.expand_mask(raw_ids, raw_mask, ids.tolist())
        extra = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
        return Encoded(input_ids=ids.long(), answer_mask=torch.tensor(mask, dtype=torch.bool),
                       image_mask=ids == self.image_token_id, extra=extra, n_images=len(images))

    def expand_mask(self, raw_ids: list[int], raw_mask: list[bool], ids: list[int]) -> list[bool]:
        """Carry the answer mask from the unexpanded tokens to the processor's tokens.

        The two sequences must agree except at image placeholders, which the processor expands into a block of
        another length (see :meth:`skip_image_block`); image blocks are never answer tokens.
        """
        img = self.image_token_id
        out: list[bool] = []
        i = j = 0
        while i < len(raw_ids) or j < len(ids):
            if i < len(raw_ids) and raw_ids[i] == img:
                i, j_end = self.skip_image_block(raw_ids, i, ids, j)
                out.extend([False] * (j_end - j))
                j = j_end
                continue
            if i >= len(raw_ids) or j >= len(ids) or raw_ids[i] != ids[j]:
                raise EncodeError("processor tokens differ from the template's tokens outside image placeholders")
            out.append(raw_mask[i])
            i += 1
            j += 1
        return out

    def skip_image_block(self, raw_ids: list[int], i: int, ids: list[int], j: int) -> tuple[int, int]:
        """Positions just past the image placeholder starting at ``raw_ids[i]`` and its expansion at ``ids[j]``.

        Default (LLaVA, Qwen): a run of image tokens on both sides, of any lengths.
        """
        img = self.image_token_id
        while i < len(raw_ids) and raw_ids[i] == img:
            i += 1
        if j >= len(ids) or ids[j] != img:
            raise EncodeError("processor output lost an image placeholder")
        while j < len(ids) and ids[j] == img:
            j += 1
        return i, j

    CHARS_PER_TOKEN = 4

    def sort_length(self, turns: list[Turn], n_images: int) -> int:
        """Length estimate used only to sort samples into batches of similar length.

        Deliberately cheap (characters / 4 + image tokens, no templating or tokenising): it runs for every record
        in the main process, while the real encoding runs in DataLoader workers.
        """
        chars = sum(len(t.text.replace(IMAGE_PLACEHOLDER, "")) + 8 for t in turns)
        return chars // self.CHARS_PER_TOKEN + n_images * self.image_seq_length()

    # Families whose image token count depends on the image size set the side of a nominal square image here;
    # its token count (asked of the processor once) stands in for every image when sorting by length.
    NOMINAL_IMAGE_SIDE: int | None = None

    def image_seq_length(self) -> int:
        if self.NOMINAL_IMAGE_SIDE is not None:
            # Called for every record when sorting a shard: computed once.
            if getattr(self, "_image_seq_length", None) is None:
                side = self.NOMINAL_IMAGE_SIDE
                counts = self.processor._get_num_multimodal_tokens(image_sizes=[[side, side]])
                self._image_seq_length = int(counts["num_image_tokens"][0])
            return self._image_seq_length
        ip = getattr(self.processor, "image_processor", None)
        crop = getattr(ip, "crop_size", None) or {}
        patch = getattr(self.processor, "patch_size", None) or 14
        h = crop.get("height", 336) if isinstance(crop, dict) else 336
        w = crop.get("width", 336) if isinstance(crop, dict) else 336
        return (h // patch) * (w // patch)

    def collate(self, encs: list[Encoded]) -> Batch:
        """Right-pad to the longest sample; concatenate pixel tensors in batch order (the model scatters image
        features into image tokens in row-major order, so this order is the one it expects)."""
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
            parts = [e.extra[key] for e in encs if key in e.extra]
            extra[key] = torch.cat(parts, dim=0)
        return Batch(ids, att, ans, img, extra)

    # ---- model side ------------------------------------------------------------------------------------------
    @staticmethod
    def num_layers(model) -> int:
        return int(model.config.get_text_config().num_hidden_layers)

    def body_inputs(self, model, batch: Batch) -> dict:
        """Keyword arguments of the model body (``model.model``) for ``batch``."""
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False,
                **batch.extra}

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

    @staticmethod
    def vision_tower(model):
        """The model's vision tower (frozen in instruction tuning), or None where it is not at
        ``model.model.vision_tower``."""
        return getattr(getattr(model, "model", None), "vision_tower", None)

    @staticmethod
    def lm_head(model, hidden: torch.Tensor) -> torch.Tensor:
        return model.get_output_embeddings()(hidden)

    @staticmethod
    def decoder_layers(model):
        lm = model.model.language_model
        return lm, lm.layers

    def final_token_attention(self, model, h_in: torch.Tensor, attention_mask: torch.Tensor,
                              last_pos: torch.Tensor) -> torch.Tensor:
        """Attention probabilities (B, heads, T) of each sample's final token at the last decoder layer.

        Recomputed from that layer's input ``h_in`` (hidden state -2) with its own norm, q/k projections and
        RoPE, so no layer ever materialises a (T x T) attention matrix. Keys outside ``attention_mask`` get zero.
        """
        lm, layers = self.decoder_layers(model)
        layer = layers[-1]
        attn = layer.self_attn
        x = layer.input_layernorm(h_in)
        b, t, _ = x.shape
        hd = attn.head_dim
        rows = torch.arange(b, device=x.device)
        q = attn.q_proj(x[rows, last_pos]).view(b, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
        k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)  # (B, KV, T, hd)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = lm.rotary_emb(x, positions)
        q, k = rotate_half(q, cos[rows, last_pos].unsqueeze(1).unsqueeze(1), sin[rows, last_pos].unsqueeze(1).unsqueeze(1)), \
            rotate_half(k, cos.unsqueeze(1), sin.unsqueeze(1))
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # (B, H, T)
        allowed = attention_mask.bool() & (torch.arange(t, device=x.device)[None, :] <= last_pos[:, None])
        scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1)


def rotate_half(x, cos, sin):
    """RoPE applied to ``x`` with the given cos/sin tables (the rotate-half convention of Llama-style models)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


class LlavaAdapter(FamilyAdapter):
    """LLaVA-1.5 and the bundled proxy (``LlavaForConditionalGeneration``)."""
