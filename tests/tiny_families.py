"""Tiny random checkpoints of the vision-language families a generic probe adapter must serve (test helpers).

:func:`build_tiny` writes, for one family, a directory laid out as a user's checkpoint is: the model
(``save_pretrained``), its tokenizer, its own image processor and processor config, and a chat template of the
family's shape. Nothing mmsift-specific is written, so a loader that works on these directories sees what it would
see on a real checkpoint, only small: 2 decoder layers of width 32, a 2-layer vision tower on 32-64 px images, a
byte-level BPE tokenizer trained here in milliseconds with the family's special tokens.

The chat templates are written for these tests in each family's shape (role markers, where the image placeholder
goes, the end-of-turn token, whether the template writes BOS); they are not the released templates.

Processors that carry a video processor (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL) cannot be
built without torchvision, which mmsift never installs: the video processor classes need it, and the processor
class rejects ``video_processor=None``. Mistral 3's ``PixtralProcessor`` cannot even be imported without it. Their
``processor_config.json`` is written from its parts instead: the image processor's own ``to_dict()``, the
processor's keyword arguments and, for the video families, a video processor entry naming the family's video
processor class with the values it shares with the image processor, as a checkpoint saved where torchvision exists
has it. ``AutoProcessor`` fails on those directories; :func:`load_processor` is the torchvision-free way back (see
``docs/families-notes.md``).

Image processors are the PIL ones (torchvision is absent). They save the family's canonical class name as
``image_processor_type`` (``Qwen2VLImageProcessor``, not ``...Pil``), as checkpoints on a hub name it, so loading
goes through transformers' fallback to the PIL class.
"""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "gemma3",
            "internvl", "mistral3")

# Families whose processor has a video processor (torchvision-only in transformers 5.x).
VIDEO_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl")
# Families that AutoProcessor cannot load without torchvision (Mistral 3: PixtralProcessor itself imports it).
NEEDS_TORCHVISION = VIDEO_FAMILIES + ("mistral3",)

CORPUS = ("What colour is it? Red. And the shape? A circle. Compare the two images. Same. Say hi. Hi! "
          "What shape? A square. Colour? Blue. Is it dark? Somewhat. Green. Is it white? Yes. Same colour? No. "
          "You are a helpful assistant. User: Assistant: describe the picture in one word")

# ---- chat templates (written for these tests; same structure as each family's, not copies) ---------------------
_CONTENT = ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
            "{% if p['type'] == 'image' %}{{ IMG }}{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
            "{% endfor %}{% endif %}")


def _content(image: str) -> str:
    """Jinja that writes a message's parts in order, an image part as ``image`` (a literal string)."""
    return _CONTENT.replace("IMG", repr(image))


def _chatml(image: str, *, system: str | None) -> str:
    """ChatML turns (``<|im_start|>role\\n ... <|im_end|>\\n``), as Qwen, OneVision and InternVL write them."""
    head = ""
    if system:
        head = ("{% if messages[0]['role'] != 'system' %}"
                f"{{{{ '<|im_start|>system\\n{system}<|im_end|>\\n' }}}}{{% endif %}}")
    return (head + "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}" + _content(image)
            + "{{ '<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


TEMPLATES = {
    # LLaVA-1.5 (Vicuna style): "USER: <image>\n... ASSISTANT: answer</s>"; the tokenizer adds <s>.
    "llava": ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' }}" + _content("<image>\n")
              + "{{ ' ' }}{% else %}{{ 'ASSISTANT: ' }}" + _content("") + "{{ '</s>' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"),
    # LLaVA-NeXT on Mistral: the template writes <s>, images go first in the user turn, answers end with </s>.
    "llava_next": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' }}"
                   + _content("<image>\n") + "{{ ' [/INST]' }}{% else %}{{ ' ' }}" + _content("")
                   + "{{ '</s>' }}{% endif %}{% endfor %}"),
    "llava_onevision": _chatml("<image>\n", system=None),
    "qwen2_vl": _chatml("<|vision_start|><|image_pad|><|vision_end|>", system="You are a helpful assistant."),
    "qwen2_5_vl": _chatml("<|vision_start|><|image_pad|><|vision_end|>", system="You are a helpful assistant."),
    "qwen3_vl": _chatml("<|vision_start|><|image_pad|><|vision_end|>", system=None),
    # Idefics3 / SmolVLM: "<|im_start|>User: ...<end_of_utterance>\nAssistant: ...".
    "idefics3": ("{{ '<|im_start|>' }}{% for m in messages %}{{ m['role'] | capitalize }}{{ ':' }}"
                 "{% if m['content'] is string or m['content'][0]['type'] != 'image' %}{{ ' ' }}{% endif %}"
                 + _content("<image>") + "{{ '<end_of_utterance>\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"),
    # Gemma 3: the template writes <bos>; roles user/model; the image placeholder is <start_of_image>.
    "gemma3": ("{{ bos_token }}{% for m in messages %}"
               "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
               + _content("<start_of_image>") + "{{ '<end_of_turn>\\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    "internvl": _chatml("<IMG_CONTEXT>\n", system=None),
    # Mistral 3: the template writes <s>; "[INST]...[/INST]answer</s>", the image placeholder is [IMG].
    "mistral3": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST]' }}"
                 + _content("[IMG]") + "{{ '[/INST]' }}{% else %}" + _content("") + "{{ '</s>' }}{% endif %}"
                 "{% endfor %}"),
}


# ---- tokenizer ------------------------------------------------------------------------------------------------
def tiny_tokenizer(special: list[str], *, prepend_bos: str | None = None, extra_special: dict | None = None,
                   **named):
    """A byte-level BPE tokenizer trained on :data:`CORPUS` with ``special`` as its first ids.

    ``prepend_bos`` makes the tokenizer itself prepend that token (Llama, Mistral and Gemma tokenizers do);
    ``extra_special`` names family tokens the processor reads as tokenizer attributes (``tokenizer.boi_token``...).
    ``named`` are the usual ``bos_token``/``eos_token``/``pad_token``/``unk_token``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 8, trainer)
    if prepend_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{prepend_bos} $A", pair=f"{prepend_bos} $A {prepend_bos} $B",
            special_tokens=[(prepend_bos, tok.token_to_id(prepend_bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra_special or {}, **named)


def _text(tok, *, bos: str | None, eos: str, pad: str, **extra) -> dict:
    """A 2-layer decoder of width 32 (4 query heads, 2 KV heads of 8 dims) over ``tok``'s vocabulary."""
    ids = tok.convert_tokens_to_ids
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                bos_token_id=ids(bos) if bos else None, eos_token_id=ids(eos), pad_token_id=ids(pad), **extra)


_CLIP_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)


# ---- families -------------------------------------------------------------------------------------------------
# Each builder returns (model, save_processor) where save_processor(out_dir) writes the processor files.

def _llava():
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], prepend_bos="<s>", bos_token="<s>",
                         eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", projection_dim=32, **_CLIP_LIKE),
        text_config=dict(model_type="llama", **_text(tok, bos="<s>", eos="</s>", pad="<pad>")),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16, vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=TEMPLATES["llava"])
    return LlavaForConditionalGeneration(config), proc.save_pretrained


def _llava_next():
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, \
        LlavaNextProcessor

    tok = tiny_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], prepend_bos="<s>", bos_token="<s>",
                         eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    pins = [[32, 32], [32, 64], [64, 32], [64, 64]]  # [height, width]
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", projection_dim=32, **_CLIP_LIKE),
        text_config=dict(model_type="mistral", **_text(tok, bos="<s>", eos="</s>", pad="<pad>")),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pins, vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=TEMPLATES["llava_next"])
    return LlavaNextForConditionalGeneration(config), proc.save_pretrained


def _llava_onevision():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, \
        LlavaOnevisionImageProcessorPil

    tok = tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    pins = [[32, 32], [32, 64], [64, 32], [64, 64]]
    ids = tok.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", **_CLIP_LIKE),
        text_config=dict(model_type="qwen2", **_text(tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>")),
        image_token_index=ids("<image>"), video_token_index=ids("<video>"), image_grid_pinpoints=pins,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ip = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=pins)
    kwargs = dict(num_image_tokens=16, vision_feature_select_strategy="full", image_token="<image>",
                  video_token="<video>", vision_aspect_ratio="anyres_max_9")
    video = dict(video_processor_type="LlavaOnevisionVideoProcessor", size={"height": 32, "width": 32},
                 image_mean=ip.image_mean, image_std=ip.image_std, do_sample_frames=False)
    return (LlavaOnevisionForConditionalGeneration(config),
            _save_parts("LlavaOnevisionProcessor", tok, ip, video, kwargs, TEMPLATES["llava_onevision"]))


def _qwen(family: str):
    import transformers as tf

    tok = tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                          "<|image_pad|>", "<|video_pad|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    # Qwen2/2.5-VL: 14 px patches merged 2x2 -> one token per 28 px block; Qwen3-VL: 16 px patches, 32 px blocks.
    # Pixel bounds of 2x2 to 4x4 blocks keep every image at 4 to 16 tokens.
    patch = 16 if family == "qwen3_vl" else 14
    block = 2 * patch
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    if family == "qwen3_vl":
        rope["mrope_interleaved"] = True
    text = _text(tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>", rope_parameters=rope)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=patch,
                      spatial_merge_size=2, temporal_patch_size=2)
        names = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")
    elif family == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=2,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, window_size=2 * block,
                      fullatt_block_indexes=[1])
        names = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor")
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=2,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[0])
        names = ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor")
    config_cls, model_cls = getattr(tf, names[0]), getattr(tf, names[1])
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"))
    pixels = {"shortest_edge": (2 * block) ** 2, "longest_edge": (4 * block) ** 2}
    ip = tf.Qwen2VLImageProcessorPil(size=pixels, patch_size=patch, merge_size=2, temporal_patch_size=2)
    video_cls = "Qwen3VLVideoProcessor" if family == "qwen3_vl" else "Qwen2VLVideoProcessor"
    video = dict(video_processor_type=video_cls, size=pixels, patch_size=patch, merge_size=2, temporal_patch_size=2,
                 image_mean=ip.image_mean, image_std=ip.image_std, do_sample_frames=False)
    return model_cls(config), _save_parts(names[2], tok, ip, video, {}, TEMPLATES[family])


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, \
        Idefics3Processor

    special = (["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
    tok = tiny_tokenizer(special, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    # Longest edge resized to 64 px, cut into 32 px crops plus a 32 px global view; 32 px / 8 px patches, pixel
    # shuffle by 2 -> 4 image tokens per crop.
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", **_text(tok, bos="<|im_start|>", eos="<end_of_utterance>",
                                                    pad="<|endoftext|>")),
        image_token_id=ids("<image>"), scale_factor=2, pad_token_id=ids("<|endoftext|>"))
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=TEMPLATES["idefics3"])
    return Idefics3ForConditionalGeneration(config), proc.save_pretrained


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = tiny_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                          "<start_of_image>", "<end_of_image>", "<image_soft_token>"], prepend_bos="<bos>",
                         bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                         extra_special={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                        "image_token": "<image_soft_token>"})
    ids = tok.convert_tokens_to_ids
    # The last decoder layer is a sliding-window one (as in Gemma 3 1B/4B/27B) with a window shorter than a short
    # conversation, so what the window hides is visible in tests; the attention scale is query_pre_attn_scalar**-0.5,
    # not head_dim**-0.5 (they differ in Gemma 3 27B), so a reimplementation that confuses them fails here.
    text = _text(tok, bos="<bos>", eos="<eos>", pad="<pad>", layer_types=["full_attention", "sliding_attention"],
                 sliding_window=16, query_pre_attn_scalar=16)
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **_CLIP_LIKE),
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"))
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=TEMPLATES["gemma3"])
    return Gemma3ForConditionalGeneration(config), proc.save_pretrained


def _internvl():
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    tok = tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                          "<video>"], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         extra_special={"start_image_token": "<img>", "end_image_token": "</img>",
                                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    # 32 px tiles of 8 px patches (16 patches), pixel-shuffled by 0.5 -> 4 tokens per tile.
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=[32, 32], patch_size=[8, 8]),
        text_config=dict(model_type="qwen2", **_text(tok, bos=None, eos="<|im_end|>", pad="<|endoftext|>")),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5)
    ip = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
                                  max_patches=4)
    video = dict(video_processor_type="InternVLVideoProcessor", size={"height": 32, "width": 32},
                 image_mean=ip.image_mean, image_std=ip.image_std, do_sample_frames=False)
    return (InternVLForConditionalGeneration(config),
            _save_parts("InternVLProcessor", tok, ip, video, {"image_seq_length": 4}, TEMPLATES["internvl"]))


def _mistral3():
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    tok = tiny_tokenizer(["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
                          "<pad>"], prepend_bos="<s>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                         pad_token="<pad>")
    # 8 px patches merged 2x2 -> one token per 16 px block; longest edge at most 64 px (4 blocks).
    config = Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, head_dim=16, image_size=64, patch_size=8),
        text_config=dict(model_type="mistral", **_text(tok, bos="<s>", eos="</s>", pad="<pad>")),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1)
    ip = PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8})
    # PixtralProcessor needs torchvision even to be imported, so its files are written from its parts too.
    kwargs = dict(patch_size=8, spatial_merge_size=2, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                  image_end_token="[IMG_END]")
    return (Mistral3ForConditionalGeneration(config),
            _save_parts("PixtralProcessor", tok, ip, None, kwargs, TEMPLATES["mistral3"]))


_BUILDERS = {"llava": _llava, "llava_next": _llava_next, "llava_onevision": _llava_onevision,
             "qwen2_vl": lambda: _qwen("qwen2_vl"), "qwen2_5_vl": lambda: _qwen("qwen2_5_vl"),
             "qwen3_vl": lambda: _qwen("qwen3_vl"), "idefics3": _idefics3, "gemma3": _gemma3,
             "internvl": _internvl, "mistral3": _mistral3}


def build_tiny(family: str, out_dir, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` (one of :data:`FAMILIES`) to ``out_dir``; returns the path."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, save_processor = _BUILDERS[family]()
    model.save_pretrained(out)
    save_processor(out)
    return out


def _save_parts(processor_class: str, tokenizer, image_processor, video: dict | None, kwargs: dict, template: str):
    """A saver writing a processor's files without instantiating it (its video processor needs torchvision)."""

    def save(out: Path) -> None:
        tokenizer.save_pretrained(out)
        data = {"processor_class": processor_class, "image_processor": image_processor.to_dict(), **kwargs}
        if video is not None:
            data["video_processor"] = {**video, "processor_class": processor_class}
        (out / "processor_config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n",
                                                   encoding="utf-8")
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
        # Tokenizers record the processor that owns them, as ProcessorMixin.save_pretrained makes them do.
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["processor_class"] = processor_class
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return save


def load_processor(path):
    """The processor of a tiny checkpoint without torchvision: ``AutoProcessor`` where it works, else the
    family's processor class built from its tokenizer, image processor, saved keyword arguments and chat template,
    with no video processor (mmsift never feeds video); for Mistral 3, :class:`PixtralStandIn`."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    from mmsift.models.processors import video_free_class

    path = Path(path)
    family = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if family not in NEEDS_TORCHVISION:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    data = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))
    kwargs = {k: v for k, v in data.items() if k not in ("processor_class", "image_processor", "video_processor")}
    parts = dict(image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
                 tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
                 chat_template=(path / "chat_template.jinja").read_text(encoding="utf-8"))
    if family == "mistral3":
        return PixtralStandIn(**parts, **kwargs)
    return video_free_class(data["processor_class"])(video_processor=None, **parts, **kwargs)


class PixtralStandIn:
    """What ``PixtralProcessor`` does for images, without importing it (its module needs torchvision).

    Each ``[IMG]`` placeholder becomes, per row of merged patches, ``[IMG]`` * columns + ``[IMG_BREAK]``, with the
    very last token of the image replaced by ``[IMG_END]``. The image processor resizes so that both sides are
    multiples of ``patch_size * spatial_merge_size``.
    """

    def __init__(self, *, image_processor, tokenizer, chat_template, patch_size, spatial_merge_size, image_token,
                 image_break_token, image_end_token):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template
        self.block = patch_size * spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = \
            image_token, image_break_token, image_end_token

    def apply_chat_template(self, messages, *, tokenize=False, add_generation_prompt=False):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=tokenize,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, *, text, images=None, return_tensors="pt", padding=False, padding_side="right",
                 add_special_tokens=True):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        pixels = {}
        if images:
            flat = [im for group in images for im in group] if isinstance(images[0], (list, tuple)) else images
            pixels = dict(self.image_processor(flat, patch_size={"height": self.block, "width": self.block},
                                               return_tensors="pt"))
            blocks = iter(self._image_block(int(h), int(w)) for h, w in pixels["image_sizes"])
            texts = ["".join(piece if k == 0 else next(blocks) + piece
                             for k, piece in enumerate(t.split(self.image_token))) for t in texts]
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding, padding_side=padding_side,
                             add_special_tokens=add_special_tokens)
        return BatchFeature({**enc, **pixels})

    def _image_block(self, height: int, width: int) -> str:
        rows, cols = height // self.block, width // self.block
        tokens = ([self.image_token] * cols + [self.image_break_token]) * rows
        tokens[-1] = self.image_end_token
        return "".join(tokens)
