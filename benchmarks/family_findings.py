"""What a generic vision-language adapter needs per model family, measured on tiny random checkpoints.

Builds each family of ``tests/tiny_families.py`` (or reads already built ones) and prints, per family: whether
``AutoProcessor`` loads without torchvision; what the chat template renders and whether message prefixes render as
prefixes; what the processor returns and what it inserts around an image; where the decoder layers, vision tower
and rotary embedding are; which extra inputs the model body needs (each one dropped in turn); whether a
right-padded batch of [one image, text only, two images of other sizes] collated generically matches batch-1
forwards at the last decoder layer's input, and so does the processor's own batching (plus its default padding
side, and two images of one sample passed nested or flat); whether the last layer's final-token attention recomputed from its
input (norm, q/k projections, q/k norms, RoPE, scale, sliding window) matches eager attention weights; and the
answer tokens found from the processor's own offsets (``return_offsets_mapping`` + ``return_text_replacement_offsets``).

    python benchmarks/family_findings.py [--root DIR] [family ...]

Runs on CPU in about a minute for all families. docs/families-notes.md records its output for transformers 5.24
and 5.18.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_families import FAMILIES, build_tiny, load_processor  # noqa: E402


def conversation(n_images: int, question: str, *, answers=("Red.", "A circle.")) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]}]
    if len(answers) > 1:
        msgs += [{"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": answers[1]}]}]
    return msgs


def image(width: int, height: int, color: str):
    from PIL import Image

    return Image.new("RGB", (width, height), color)


def shapes(batch) -> dict:
    return {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)}


def encode(proc, msgs, images):
    """One sample through the processor; BOS left to the template when the template writes it."""
    text = proc.apply_chat_template(msgs, tokenize=False)
    tok = proc.tokenizer
    kwargs = {"text": [text], "return_tensors": "pt",
              "add_special_tokens": not (bool(tok.bos_token) and text.startswith(tok.bos_token))}
    if images:
        kwargs["images"] = [images]
    return {k: v for k, v in proc(**kwargs).items() if torch.is_tensor(v)}


def collate(encs: list[dict], pad_id: int) -> dict:
    """Generic right-padding collate: (1, T) keys padded to the longest T; every other tensor concatenated on
    dim 0 after zero-padding its trailing dims to the largest (crop counts, pixel sizes)."""
    longest = max(e["input_ids"].shape[1] for e in encs)
    out = {}
    for key in sorted({k for e in encs for k in e}):
        have = [e[key] for e in encs if key in e]
        per_token = key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
        if per_token:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.stack([torch.nn.functional.pad(e[key][0], (0, longest - e[key].shape[1]), value=fill)
                                    for e in encs])
            continue
        size = [max(v.shape[d] for v in have) for d in range(have[0].dim())]
        padded = []
        for v in have:
            pads = []
            for d in reversed(range(1, v.dim())):
                pads += [0, size[d] - v.shape[d]]
            padded.append(torch.nn.functional.pad(v, pads))
        out[key] = torch.cat(padded, dim=0)
    return out


def last_layer_input(model, inputs: dict) -> torch.Tensor:
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]

    handle = model.get_decoder().layers[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return captured["h"]


def template_findings(proc) -> dict:
    msgs = conversation(1, "What colour is it?")
    full = proc.apply_chat_template(msgs, tokenize=False)
    prefixes = all(full.startswith(proc.apply_chat_template(msgs[:k], tokenize=False,
                                                            add_generation_prompt=msgs[k]["role"] == "assistant"))
                   for k in range(1, len(msgs)))
    tok = proc.tokenizer
    adds_bos = tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id]
    return {"render": full, "prefixes render as prefixes": prefixes, "tokenizer adds BOS": adds_bos,
            "template writes BOS": bool(tok.bos_token) and full.startswith(tok.bos_token)}


def _runs(tokens: list[str]) -> str:
    """Tokens with repeats folded: ``<image>x16``."""
    runs: list[list] = []
    for t in tokens:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return " ".join(t if n == 1 else f"{t}x{n}" for t, n in runs)


def processor_findings(proc, config) -> dict:
    text = proc.apply_chat_template(conversation(1, "What colour is it?"), tokenize=False)
    out = proc(text=[text], images=[[image(64, 48, "red")]], return_tensors="pt")
    tok = proc.tokenizer
    ids = out["input_ids"][0].tolist()
    img_id = getattr(config, "image_token_id", None) or config.image_token_index
    first, last = ids.index(img_id), len(ids) - 1 - ids[::-1].index(img_id)
    found = {"outputs": shapes(out), "image token": tok.convert_ids_to_tokens(img_id),
             "placeholder in text": getattr(proc, "image_token", None),
             "tokens around the image block": _runs(tok.convert_ids_to_tokens(ids[max(0, first - 2): last + 3])),
             "BOS twice with add_special_tokens=True": tok.bos_token_id is not None
             and ids[:2] == [tok.bos_token_id] * 2}
    try:
        reps = proc(text=[text], images=[[image(64, 48, "red")]], return_text_replacement_offsets=True)
        replacement = reps["text_replacement_offsets"][0][0]["replacement"]
        found["placeholder replaced by"] = _runs(tok.tokenize(replacement))
    except TypeError as e:
        found["placeholder replaced by"] = f"not reported: {e}"
    return found


def model_findings(model) -> dict:
    decoder = model.get_decoder()
    attn, layer = decoder.layers[-1].self_attn, decoder.layers[-1]
    tower = [f"{n}: {type(c).__name__}" for n, c in model.model.named_children() if n in
             ("vision_tower", "visual", "vision_model")]
    text_config = model.config.get_text_config()
    return {"classes": f"{type(model).__name__} > {type(model.model).__name__} > {type(decoder).__name__}",
            "body children": [n for n, _ in model.model.named_children()], "vision tower": tower,
            "decoder is": "model.model." + next(n for n, c in model.model.named_children() if c is decoder),
            "rotary_emb.forward": str(inspect.signature(decoder.rotary_emb.forward)),
            "self_attn has": [a for a in ("o_proj", "q_norm", "k_norm", "sliding_window") if getattr(attn, a, None)
                              is not None],
            "layer norms": [n for n, _ in layer.named_children() if "norm" in n],
            "attention scale vs head_dim**-0.5": (round(attn.scaling, 4), round(attn.head_dim ** -0.5, 4)),
            "layer_types": getattr(text_config, "layer_types", None),
            "get_rope_index": hasattr(model.model, "get_rope_index")}


def extras_findings(model, inputs: dict) -> dict:
    base = last_layer_input(model, inputs)
    found = {}
    for key in [k for k in inputs if k not in ("input_ids", "attention_mask", "pixel_values")]:
        try:
            h = last_layer_input(model, {k: v for k, v in inputs.items() if k != key})
            change = float((h - base).abs().max())
            found[key] = f"runs without it; the last layer input changes by {change:.1e}"
        except Exception as e:  # noqa: BLE001 - the failure is the finding
            found[key] = f"required: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
    return found


def batch_findings(proc, model) -> dict:
    samples = [(conversation(1, "What colour is it?"), [image(64, 48, "red")]),
               (conversation(0, "Say hi."), []),
               (conversation(2, "Compare them.", answers=("Same.",)), [image(32, 64, "blue"), image(48, 48, "green")])]
    encs = [encode(proc, m, ims) for m, ims in samples]
    batch = collate(encs, proc.tokenizer.pad_token_id)
    together = last_layer_input(model, batch)
    diffs = [float((last_layer_input(model, e)[0] - together[r, : e["input_ids"].shape[1]]).abs().max())
             for r, e in enumerate(encs)]
    return {"collated": shapes(batch), "max |batch - batch-1| per row": [f"{d:.1e}" for d in diffs],
            "max |hidden|": f"{float(together.abs().max()):.1e}"}


def processor_batch_findings(proc, model, config) -> dict:
    """The processor's own batching (right padding asked for), its default padding side, and one sample with two
    images passed nested (``[[a, b]]``) or flat (``[a, b]``)."""
    texts = [proc.apply_chat_template(conversation(1, "What colour is it?"), tokenize=False),
             proc.apply_chat_template(conversation(1, "Compare it.", answers=("Same.",)), tokenize=False)]
    images = [[image(64, 48, "red")], [image(32, 64, "blue")]]
    batch = proc(text=texts, images=images, return_tensors="pt", padding=True, padding_side="right")
    together = last_layer_input(model, {k: v for k, v in batch.items() if torch.is_tensor(v)})
    diffs = []
    for r in range(2):
        one = {k: v for k, v in proc(text=[texts[r]], images=[images[r]], return_tensors="pt").items()
               if torch.is_tensor(v)}
        n = one["input_ids"].shape[1]
        assert one["input_ids"][0].tolist() == batch["input_ids"][r, :n].tolist()
        diffs.append(f"{float((last_layer_input(model, one)[0] - together[r, :n]).abs().max()):.1e}")
    default = proc(text=texts, images=images, return_tensors="pt", padding=True)
    img_id = getattr(config, "image_token_id", None) or config.image_token_index
    two = proc.apply_chat_template(conversation(2, "Compare them.", answers=("Same.",)), tokenize=False)
    counts = {}
    for label, ims in (("nested", [[image(64, 48, "red"), image(32, 64, "blue")]]),
                       ("flat", [image(64, 48, "red"), image(32, 64, "blue")])):
        counts[label] = int((proc(text=[two], images=ims, return_tensors="pt")["input_ids"] == img_id).sum())
    return {"max |processor batch - batch-1| per row": diffs,
            "default padding side": "right" if bool(default["attention_mask"][:, 0].all()) else "left",
            "image tokens for two images, nested vs flat": counts}


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attention_findings(proc, path) -> dict:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    inputs = encode(proc, conversation(1, "What colour is it?"), [image(64, 48, "red")])
    decoder = model.get_decoder()
    captured = {}
    handle = decoder.layers[-1].register_forward_pre_hook(
        lambda m, a, k: captured.__setitem__("h", a[0] if a else k["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        want = model(**inputs, output_attentions=True).attentions[-1][0, :, -1, :]
    handle.remove()
    layer = decoder.layers[-1]
    attn = layer.self_attn
    x = layer.input_layernorm(captured["h"])
    t = x.shape[1]
    q = attn.q_proj(x[:, -1:]).view(1, 1, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, t, -1, attn.head_dim).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    used = []
    if hasattr(model.model, "get_rope_index"):
        positions, _ = model.model.get_rope_index(input_ids=inputs["input_ids"],
                                                  mm_token_type_ids=inputs["mm_token_type_ids"],
                                                  image_grid_thw=inputs.get("image_grid_thw"),
                                                  attention_mask=inputs["attention_mask"])
        used.append("M-RoPE positions from get_rope_index")
    else:
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    rope_kwargs = {}
    if "layer_type" in inspect.signature(decoder.rotary_emb.forward).parameters:
        rope_kwargs["layer_type"] = attn.layer_type
        used.append(f"rotary_emb(..., layer_type={attn.layer_type!r})")
    cos, sin = decoder.rotary_emb(x, positions, **rope_kwargs)
    q = _rotate(q, cos[:, -1:][:, None], sin[:, -1:][:, None])
    k = _rotate(k, cos[:, None], sin[:, None]).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).squeeze(2) * attn.scaling
    window = getattr(attn, "sliding_window", None)
    found = {}
    for label, w in (("max |recomputed - eager|", window), ("... if the sliding window is ignored", None)):
        keep = torch.ones(t, dtype=torch.bool) if not w else torch.arange(t) > t - 1 - w
        got = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)[0]
        found[label] = f"{float((got - want).abs().max()):.1e}"
        if not window:
            break
    if window:
        used.append(f"keys within sliding_window={window} of the final token")
    found["used"] = used or ["1-D positions cumsum(attention_mask) - 1"]
    return found


def mask_findings(proc) -> dict:
    """Answer tokens from the processor's offsets mapped back through its image replacements."""
    msgs = conversation(1, "What colour is it?")
    msgs[2]["content"] = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "text", "text": " now."}]
    full = proc.apply_chat_template(msgs, tokenize=False)
    spans = []
    for k, m in enumerate(msgs):
        if m["role"] == "assistant":
            prefix = proc.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
            upto = proc.apply_chat_template(msgs[: k + 1], tokenize=False)
            emitted = upto[len(prefix):]
            spans.append((len(prefix) + emitted.find(m["content"][0]["text"]), len(prefix) + len(emitted.rstrip())))
    tok = proc.tokenizer
    try:
        out = proc(text=[full], images=[[image(64, 48, "red"), image(32, 64, "blue")]], return_tensors="pt",
                   return_offsets_mapping=True, return_text_replacement_offsets=True,
                   add_special_tokens=not (bool(tok.bos_token) and full.startswith(tok.bos_token)))
    except TypeError as e:
        return {"offsets": f"not available: {e}"}
    replacements = out["text_replacement_offsets"][0]

    def original(pos):
        shift = 0
        for r in replacements:
            (a, b), (na, nb) = r["span"], r["new_span"]
            if na <= pos < nb:
                return None
            if pos >= nb:
                shift += (nb - na) - (b - a)
        return pos - shift

    answer_ids, runs = [], []
    for tid, (s, e) in zip(out["input_ids"][0].tolist(), out["offset_mapping"][0].tolist()):
        a, b = (original(s), original(e - 1)) if e > s else (None, None)
        if a is not None and b is not None and any(a < hi and b + 1 > lo for lo, hi in spans):
            answer_ids.append(tid)
        elif answer_ids:
            runs.append(tok.decode(answer_ids))
            answer_ids = []
    return {"answer tokens decoded": runs + ([tok.decode(answer_ids)] if answer_ids else [])}


def main() -> None:
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--root", type=Path, default=None, help="built checkpoints (ROOT/family); default: build")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    root = args.root or Path(tempfile.mkdtemp(prefix="mmsift-families-"))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, checkpoints in {root}")
    for family in args.families:
        path = root / family
        if not (path / "config.json").is_file():
            build_tiny(family, path)
        print(f"\n=== {family}")
        try:
            AutoProcessor.from_pretrained(path, local_files_only=True)
            auto = "loads"
        except Exception as e:  # noqa: BLE001 - the failure is the finding
            auto = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        proc = load_processor(path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        one = encode(proc, conversation(1, "What colour is it?"), [image(64, 48, "red")])
        sections = {"AutoProcessor": {"result": auto, "processor used": type(proc).__name__,
                                      "image processor": type(proc.image_processor).__name__},
                    "template": template_findings(proc), "processor": processor_findings(proc, config),
                    "model": model_findings(model), "extra inputs": extras_findings(model, one),
                    "batching": batch_findings(proc, model),
                    "processor batching": processor_batch_findings(proc, model, config),
                    "final-token attention": attention_findings(proc, path),
                    "answer mask": mask_findings(proc)}
        for name, found in sections.items():
            print(f"  [{name}]")
            for key, value in found.items():
                print(f"    {key}: {value!r}" if isinstance(value, str) and "\n" in value else f"    {key}: {value}")


if __name__ == "__main__":
    main()
