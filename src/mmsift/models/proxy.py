"""The bundled small proxy: a LLaVA-1.5-shaped model (tiny CLIP vision tower + tiny Llama) built from configs.

The tokenizer is a byte-level BPE trained in-process on the pool's own texts, so nothing is downloaded. The
model, processor and chat template are written with ``save_pretrained`` and reload through the same
``AutoProcessor`` / ``AutoModelForImageTextToText`` path as a real LLaVA-1.5 checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)

# LLaVA-1.5 (vicuna_v1) layout: "<s>[system ]USER: <image>\nquestion ASSISTANT: answer</s>USER: ...".
# Jinja's trim_blocks would eat newlines written after block tags, so the image newline is a string literal.
# Content may be a plain string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
PROXY_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set ns = namespace(text='') -%}"
    "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>' + '\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- ns.text + ' ' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'USER: ' + ns.text + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + ns.text + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def train_tokenizer(texts, *, vocab_size: int = 2048, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts`` (plus the template's own words), wrapped for transformers.

    Byte-level means every string is encodable, so an unseen pool never produces unknown tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    template_words = ["USER: ", " ASSISTANT: ", "ASSISTANT:"] * 8
    tok.train_from_iterator(list(template_words) + [str(t) for t in texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
    )


@dataclass(frozen=True)
class ProxySize:
    """The bundled proxy's shape: a CLIP vision tower and a Llama language model, LLaVA-1.5 style.

    The defaults give a model of ~0.4M parameters that runs a few hundred samples per second on one CPU core;
    the pretrained base uses a larger one (:meth:`mmsift.train.pretrain.BaseRecipe.size`).
    """

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_feature_layer: int = -2
    vocab_size: int = 2048
    max_positions: int = 2048


def build_proxy(out_dir: str | os.PathLike, *, texts=(), tokenizer=None, seed: int = 0,
                size: ProxySize = ProxySize()) -> Path:
    """Build the small proxy of ``size`` with a tokenizer trained on ``texts`` (or the given ``tokenizer``), save it
    under ``out_dir`` and return ``out_dir``.

    Weights are random (seeded); :mod:`mmsift.train.pretrain` and ``warmup`` train them.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = train_tokenizer(texts, vocab_size=size.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden_size,
        intermediate_size=2 * size.vision_hidden_size,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=size.vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    # The config's initialiser (normal, std 0.02) makes projected image features ~0.01 in scale with ~0.004 spread
    # between images: a proxy trained briefly then ignores the image (easy-vqa colour questions stayed at chance,
    # docs/benchmark.md). PyTorch's fan-in default for the projector's linear layers lets the image through.
    torch.manual_seed(seed)
    for module in model.model.multi_modal_projector.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    # The PIL backend directly: the default class would look for torchvision (never installed) and warn.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=PROXY_CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built proxy at %s: %d parameters, vocab %d, %d image tokens per image",
             out, n_params, len(tokenizer), (size.image_size // size.patch_size) ** 2)
    return out
