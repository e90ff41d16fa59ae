"""Model families beyond LLaVA-1.5: Qwen2-VL, Qwen2.5-VL, Idefics3 (SmolVLM), LLaVA-NeXT.

Each family gets a tiny random model built from a config here (nothing is downloaded), its own processor (the
PIL image processor: torchvision is never installed) and its own chat template written for the test, saved to
disk and loaded back through ``mmsift.probe.models.load_model``. Checked per family: the answer mask against a
sequence derived by hand from the family's template and image expansion rule, the loss against a plain
reference (the model's own forward, logits, masked cross-entropy), the final-token attention against eager
attention weights, and every signal on a small pool through ``run_probe``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmsift.data.records import Turn  # noqa: E402
from mmsift.models import loading as probe_models  # noqa: E402

pytestmark = pytest.mark.slow

CORPUS = ["What colour? Red. And the shape? A circle. Compare and. Same. Say hi hi",
          "What shape? A square. Colour? Blue. Is it dark? Somewhat. Green. Is it white? Yes. Same colour? No.",
          "Say hi. Hi! You are a helpful assistant. User: Assistant:"]

# ---- chat templates (written for these tests, in each family's format) -----------------------------------------
QWEN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "{{ '<|im_start|>' }}{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}"
    "{% elif p['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{{ '<end_of_utterance>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_NEXT_TEMPLATE = (  # Mistral-style: the template writes <s>; the assistant turn ends with </s>
    "{{ '<s>' }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{{ ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'][0]['text'] + '</s>' }}{% endif %}"
    "{% endfor %}"
)


def byte_bpe(special, *, bos_template=None, **kwargs):
    """A byte-level BPE tokenizer trained here on CORPUS, with ``special`` tokens (ids 0..)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    if bos_template:  # a Llama-style tokenizer that prepends <s> itself
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_template} $A", special_tokens=[(bos_template, tok.token_to_id(bos_template))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _text(vocab, *, bos, eos, pad, **extra):
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **extra)


def build_qwen(out, *, v25: bool):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, \
        Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmsift.models.processors import build_video_free, save_parts

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tok = byte_bpe(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    # 28 px = one merged 2x2 block of 14 px patches; 56x56 px -> 4 image tokens.
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    text = _text(len(tok), bos=ids("<|endoftext|>"), eos=ids("<|im_end|>"), pad=ids("<|endoftext|>"),
                 rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
    if v25:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1])
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    model_cls(config).save_pretrained(out)
    processor_class = "Qwen2_5_VLProcessor" if v25 else "Qwen2VLProcessor"
    save_parts(build_video_free(processor_class, tokenizer=tok, image_processor=ip, chat_template=QWEN_TEMPLATE), out)


def build_idefics3(out):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    special = (["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
    tok = byte_bpe(special, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    ids = tok.convert_tokens_to_ids
    # Images are resized to a 64 px longest edge and cut into 32 px crops plus a 32 px global view;
    # 32 px / 8 px patches = 16 patches, pixel-shuffled by 2 -> 4 image tokens per crop.
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=True)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", **_text(len(tok), bos=ids("<|im_start|>"),
                                                    eos=ids("<end_of_utterance>"), pad=ids("<|endoftext|>"))),
        image_token_id=ids("<image>"), scale_factor=2, pad_token_id=ids("<|endoftext|>"))
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(out)
    Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                      chat_template=IDEFICS3_TEMPLATE).save_pretrained(out)


def build_llava_next(out):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = byte_bpe(["<unk>", "<s>", "</s>", "<image>", "<pad>"], bos_template="<s>", bos_token="<s>",
                   eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    ids = tok.convert_tokens_to_ids
    pins = [[32, 32], [32, 64], [64, 32]]  # [height, width]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pins)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=dict(model_type="llama", **_text(len(tok), bos=ids("<s>"), eos=ids("</s>"), pad=ids("<pad>"))),
        image_token_id=ids("<image>"), image_grid_pinpoints=pins, vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).save_pretrained(out)
    LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE).save_pretrained(out)


BUILDERS = {
    "qwen2_vl": lambda out: build_qwen(out, v25=False),
    "qwen2_5_vl": lambda out: build_qwen(out, v25=True),
    "idefics3": build_idefics3,
    "llava_next": build_llava_next,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory):
    """(family name, model directory) of a tiny saved model."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(request.param)
    BUILDERS[request.param](out)
    return request.param, out


@pytest.fixture(scope="module")
def loaded(family):
    name, path = family
    return name, probe_models.load_model(path, device="cpu", dtype="float32")


# ---- hand derivation of the expected token sequences ----------------------------------------------------------
def image_block(name: str, width: int, height: int) -> str:
    """The text an image placeholder expands to, worked out by hand from the family's rule and the test configs."""
    if name.startswith("qwen"):
        # Sizes are multiples of 28 inside [56*56, 112*112] px: no resize; (w/28)*(h/28) merged tokens.
        return "<|vision_start|>" + "<|image_pad|>" * ((width // 28) * (height // 28)) + "<|vision_end|>"
    if name == "idefics3":
        # Longest edge -> 64 px (aspect kept), 32 px crops row by row, then the 32 px global view.
        scale = 64 / max(width, height)
        rows, cols = round(height * scale) // 32, round(width * scale) // 32
        crops = "".join("".join(f"<fake_token_around_image><row_{r}_col_{c}>" + "<image>" * 4
                                for c in range(1, cols + 1)) + "\n" for r in range(1, rows + 1))
        return crops + "\n<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    if name == "llava_next":
        # Base view: (32/8)^2 = 16 features (CLS dropped). Best pinpoint for 56x56 is 32x32 (1 crop, 4x4 features),
        # for 112 wide x 56 high it is 32x64 (1x2 crops, 4x8 features); same aspect as the image, so nothing is
        # unpadded; one newline feature per row.
        grid_h, grid_w = (4, 4) if width == height else (4, 8)
        return "<image>" * (16 + grid_h * (grid_w + 1))
    raise AssertionError(name)


def expected(name: str, tokenizer, segments) -> tuple[list[int], list[bool]]:
    """Concatenate (text, is_answer) segments tokenised one by one (every segment boundary sits at a special
    token or a word start, so this equals tokenising the whole text)."""
    ids, mask = [], []
    for text, answer in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if answer:
            assert tokenizer.convert_ids_to_tokens(piece[0]) != "Ġ", "answer starts with a bare space token"
        ids += piece
        mask += [answer] * len(piece)
    return ids, mask


CONV = [Turn("user", "<image>\nWhat colour?"), Turn("assistant", "Red."), Turn("user", "And the shape?"),
        Turn("assistant", "A circle.")]
MULTI = [Turn("user", "Compare <image> and <image>."), Turn("assistant", "Same.")]
TEXT_ONLY = [Turn("user", "Say hi"), Turn("assistant", "hi")]


def placeholder(name: str) -> str:
    return "<|vision_start|><|image_pad|><|vision_end|>" if name.startswith("qwen") else "<image>"


def segments(name: str, case: str, *, expand: bool = True):
    """(text, is_answer) segments of a case as the family's template writes it, images expanded or not."""
    a, b = (image_block(name, 56, 56), image_block(name, 112, 56)) if expand else (placeholder(name),) * 2
    if name.startswith("qwen"):
        head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        turn = "<|im_end|>\n<|im_start|>assistant\n"
        return {
            "conv": [(head + a + "What colour?" + turn, False), ("Red.<|im_end|>", True),
                     ("\n<|im_start|>user\nAnd the shape?" + turn, False), ("A circle.<|im_end|>", True),
                     ("\n", False)],
            "multi": [(head + "Compare " + a + " and " + b + "." + turn, False), ("Same.<|im_end|>", True),
                      ("\n", False)],
            "text": [(head + "Say hi" + turn, False), ("hi<|im_end|>", True), ("\n", False)],
        }[case]
    if name == "idefics3":
        return {
            "conv": [("<|im_start|>User:" + a + "What colour?<end_of_utterance>\nAssistant:", False),
                     (" Red.<end_of_utterance>", True),
                     ("\nUser: And the shape?<end_of_utterance>\nAssistant:", False),
                     (" A circle.<end_of_utterance>", True), ("\n", False)],
            "multi": [("<|im_start|>User: Compare " + a + " and " + b + ".<end_of_utterance>\nAssistant:", False),
                      (" Same.<end_of_utterance>", True), ("\n", False)],
            "text": [("<|im_start|>User: Say hi<end_of_utterance>\nAssistant:", False),
                     (" hi<end_of_utterance>", True), ("\n", False)],
        }[case]
    if name == "llava_next":  # the template moves images before the text, each followed by a newline
        return {
            "conv": [("<s>[INST] " + a + "\nWhat colour? [/INST]", False), (" Red.</s>", True),
                     ("[INST] And the shape? [/INST]", False), (" A circle.</s>", True)],
            "multi": [("<s>[INST] " + a + "\n" + b + "\nCompare  and . [/INST]", False), (" Same.</s>", True)],
            "text": [("<s>[INST] Say hi [/INST]", False), (" hi</s>", True)],
        }[case]
    raise AssertionError(name)


def pil(width, height, color):
    from PIL import Image

    return Image.new("RGB", (width, height), color)


CASES = {"conv": (CONV, [(56, 56, "red")]), "multi": (MULTI, [(56, 56, "red"), (112, 56, "blue")]),
         "text": (TEXT_ONLY, [])}


def encode_case(adapter, case):
    turns, imgs = CASES[case]
    return adapter.encode(turns, [pil(*i) for i in imgs])


# ---- tests ------------------------------------------------------------------------------------------------------
def test_loads_through_the_probe_loader_with_pil_image_processor(loaded):
    name, lm = loaded
    assert lm.model_type == name
    assert type(lm.adapter).__name__ == "FamilyAdapter" and lm.adapter.family == name  # one generic adapter
    assert type(lm.processor.image_processor).__name__.endswith("ImageProcessorPil")
    assert lm.processor.chat_template  # the model's own template came back from disk


@pytest.mark.parametrize("case", ["conv", "multi", "text"])
def test_answer_mask_matches_hand_derivation(loaded, case):
    name, lm = loaded
    enc = encode_case(lm.adapter, case)
    ids, mask = expected(name, lm.processor.tokenizer, segments(name, case))
    assert enc.input_ids.tolist() == ids
    assert enc.answer_mask.tolist() == mask
    assert int(enc.image_mask.sum()) == sum(image_block(name, w, h).count(
        "<|image_pad|>" if name.startswith("qwen") else "<image>") for w, h, _ in CASES[case][1])


def reference_loss(model, processor, tokenizer, name, case) -> float:
    """The model's own full forward (logits over every position), then masked CE over the hand-derived mask."""
    ids, mask = expected(name, tokenizer, segments(name, case))
    text = "".join(t for t, _ in segments(name, case, expand=False))
    kwargs = {"text": [text], "return_tensors": "pt", "add_special_tokens": False}
    imgs = [pil(*i) for i in CASES[case][1]]
    if imgs:
        kwargs["images"] = imgs
    inputs = processor(**kwargs)
    assert inputs["input_ids"][0].tolist() == ids
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    losses = [-float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t]]
    return sum(losses) / len(losses)


def test_loss_matches_plain_reference_in_a_mixed_batch(loaded):
    from mmsift.probe.signals import SignalOptions, batch_signals

    name, lm = loaded
    cases = ["conv", "multi", "text"]
    batch = lm.adapter.collate([encode_case(lm.adapter, c) for c in cases])
    with torch.no_grad():
        sig = batch_signals(lm.adapter, lm.model, batch, ("loss", "n_answer_tokens"), SignalOptions())
    for row, case in enumerate(cases):
        ref = reference_loss(lm.model, lm.processor, lm.processor.tokenizer, name, case)
        assert sig["loss"][row] == pytest.approx(ref, rel=1e-4, abs=1e-5), case
        assert sig["n_answer_tokens"][row] == sum(expected(name, lm.processor.tokenizer, segments(name, case))[1])


# The final-token attention check against eager weights runs on every family in tests/test_generic_adapter.py.


def test_every_signal_on_a_small_pool(family, tiny_llava_pool, tmp_path):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.probe.signals import KNOWN

    name, path = family
    pool, images = tiny_llava_pool
    wanted = sorted(KNOWN)
    result = run_probe(pool, ProbeConfig(images=images, model=path, out=tmp_path / "run", signals=wanted, batch_size=4,
                                         shard_size=4))
    assert result.n_skipped == 0, result.skipped
    sig = result.store.load()
    assert len(sig) == 6
    assert set(wanted) - {"token_loss"} <= set(sig.columns)
    # per-token losses: every answer token placed in the record's text, for every family's template
    assert np.diff(result.store.load_tokens().offsets(6)).tolist() == sig["n_answer_tokens"].tolist()
    n_img = np.array([1, 1, 1, 1, 2, 0])  # s1, s2, c1, c2, m1, t1 of the fixture, in pool order
    assert sig.ids.tolist() == [r["id"] for r in json.loads(pool.read_text())]
    assert sig["n_images"].tolist() == n_img.tolist()
    for col in ("loss", "el2n", "tok_loss_max", "tok_loss_std", "sv_entropy", "sv_tau", "loss_noq"):
        assert np.isfinite(sig[col]).all(), col
    has_img = n_img > 0
    assert np.isfinite(sig["loss_imgnoise"][has_img]).all() and np.isnan(sig["loss_imgnoise"][~has_img]).all()
    for vec in ("last", "mean", "attn_pool", "img_mean", "txt_mean"):
        v = np.asarray(sig[vec], dtype=np.float32)
        assert v.shape[0] == 6 and np.isfinite(v).all(), vec
    img_norm = np.linalg.norm(np.asarray(sig["img_mean"], dtype=np.float32), axis=1)
    assert (img_norm[has_img] > 0).all() and (img_norm[~has_img] == 0).all()
    assert (sig["n_answer_tokens"] > 0).all()
    assert not math.isnan(float(sig["loss"].mean()))


def test_idefics3_image_without_splitting(tmp_path):
    """With splitting off an image is only the global view: <fake><global-img><image>*4<fake>."""
    out = tmp_path / "idefics3"
    build_idefics3(out)
    lm = probe_models.load_model(out, device="cpu", dtype="float32")
    lm.processor.image_processor.do_image_splitting = False
    enc = encode_case(lm.adapter, "conv")
    block = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    segs = [(t.replace(image_block("idefics3", 56, 56), block), m) for t, m in segments("idefics3", "conv")]
    ids, mask = expected("idefics3", lm.processor.tokenizer, segs)
    assert enc.input_ids.tolist() == ids and enc.answer_mask.tolist() == mask
    assert int(enc.image_mask.sum()) == 4
