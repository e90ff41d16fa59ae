"""Probe throughput: mmsift's probe path against a plain Transformers loop, same model, same records, one run.

    python benchmarks/probe_throughput.py [--model tiny|llava-7b-shape] [--device cpu|cuda] [--dtype bfloat16]
                                          [--n 24] [--batch-size 8] [--num-workers N] [--peak-tflops X]
                                          [--signals a,b,...] [--threads 1] [--repeats 2] [--workdir DIR]

Both paths compute the same per-sample signals (by default every forward-pass signal: loss, el2n, token-loss
stats, spectrum, last, mean, attn_pool, img_mean, txt_mean) from the same records:

- mmsift: ``run_probe`` over the pool (validation, length-sorted batches, SDPA attention, one shard written with
  its marker and merged), with the model already loaded (kept in the runner's per-process cache).
- plain: one record at a time (batch 1), ``output_hidden_states=True``, ``output_attentions=True``, eager
  attention, full logits, every signal extracted from those outputs (SVD of the hidden states, attention row of
  the last layer, ...). Inputs come from the same family adapter, so both paths see identical token sequences.

Printed per path: samples/s, tokens/s (all sequence tokens, image tokens included), model-FLOP utilisation
(2 x parameters x tokens per forward pass over the device's peak; ``--peak-tflops``, default looked up for known
GPUs, none on CPU) and the share of wall time spent after the forward pass (signal extraction, copies to the host,
shard writing and merging; the forward pass is the model body plus the LM head). Then the samples/s ratio.
Both paths are warmed up first, then timed ``--repeats`` times each in ABBA order (A B B A ...), so that a machine
whose load drifts during the run penalises both alike; the figures are totals over the timed runs.

``--model llava-7b-shape`` builds a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14 at 336 px + a Llama-2-7B decoder,
~7.1B parameters) with random weights directly on the device; only its config and processor are written to disk.
``--model tiny`` uses the bundled proxy (``mmsift.models.proxy.build_proxy``) and runs on CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FORWARD_SIGNALS = ("loss", "el2n", "tok_loss_max", "tok_loss_std", "sv_entropy", "sv_tau", "last", "mean",
                   "attn_pool", "img_mean", "txt_mean")
# Dense bf16/fp16 tensor-core peaks from NVIDIA's data sheets (TFLOP/s); matched against the device name.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0)]
WORDS = ("red blue green square circle triangle small large left right top bottom shape colour image picture "
         "there is a the of in on with which what how many one two three four yes no count describe").split()


# ---- the pool ---------------------------------------------------------------------------------------------------
def make_pool(root: Path, n: int, *, side: int, seed: int) -> tuple[Path, Path, list[str]]:
    """n LLaVA records of varied length (1-3 rounds, answers of 1-60 words, 1 in 8 text-only) with PIL images."""
    import json

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records, texts = [], []

    def sentence(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    for i in range(n):
        turns = []
        for r in range(rng.choice([1, 1, 2, 3])):
            q, a = sentence(rng.randint(4, 20)) + "?", sentence(rng.choice([1, 3, 8, 20, 60]))
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            texts += [q, a]
        rec = {"id": f"r{i}", "conversations": turns}
        if i % 8 != 7:
            name = f"{i}.png"
            im = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
            ImageDraw.Draw(im).ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4],
                                       fill=tuple(rng.randrange(256) for _ in range(3)))
            im.save(images / name)
            rec["image"] = name
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(rec)
    pool = root / "pool.json"
    pool.write_text(json.dumps(records), encoding="utf-8")
    return pool, images, texts


# ---- models -----------------------------------------------------------------------------------------------------
def build_llava_7b_shape(out: Path, texts, *, device: str, dtype):
    """LLaVA-1.5-7B shape (random weights) on ``device``; config + processor saved, weights kept in memory."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from mmsift.models.proxy import IMAGE, PROXY_CHAT_TEMPLATE, train_tokenizer

    tok = train_tokenizer(texts, vocab_size=2048)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in the run's dtype: no fp32 copy of 7B weights on the device
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                                  crop_size={"height": 336, "width": 336}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=PROXY_CHAT_TEMPLATE)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    return model, processor


def build_qwen25_vl_7b_shape(out: Path, *, device: str, dtype):
    """Qwen2.5-VL-7B shape (random weights: 28 decoder layers of 3584, a 32-layer 1280-wide vision tower) on
    ``device``; the tokenizer, processor and template of the tiny test checkpoint (tests/tiny_families.py) with
    Qwen's real image-processor settings; config + processor saved, weights kept in memory."""
    import json
    import shutil
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_families import build_tiny

    from mmsift.models.processors import load_processor
    from mmsift.models.quirks import quirks_for

    build_tiny("qwen2_5_vl", out)
    config = AutoConfig.from_pretrained(out, local_files_only=True)
    text = config.get_text_config()
    for k, v in dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, head_dim=128, max_position_embeddings=32768, vocab_size=152064,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
                     ).items():
        setattr(text, k, v)
    text.layer_types = ["full_attention"] * text.num_hidden_layers
    for k, v in dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                     patch_size=14, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]).items():
        setattr(config.vision_config, k, v)
    for f in ("model.safetensors", "config.json"):
        (out / f).unlink()
    config.save_pretrained(out)
    proc = json.loads((out / "processor_config.json").read_text())
    proc["image_processor"].update(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, patch_size=14)
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    shutil.rmtree(out / ".cache", ignore_errors=True)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    finally:
        torch.set_default_dtype(default)
    return model, load_processor(out, quirks_for("qwen2_5_vl"), model_type="qwen2_5_vl")


def load_into_runner(path: Path, args, prebuilt=None):
    """The LoadedModel the runner will use, placed in its per-process cache (so runs below skip loading)."""
    from mmsift.models import loading as probe_models
    from mmsift.models.loading import LoadedModel, resolve_dtype
    from mmsift.models.registry import adapter_for
    from mmsift.probe import shard
    from mmsift.probe.config import ShardConfig

    cfg = ShardConfig(model=str(path), signals=(), images=None, device=args.device, dtype=args.dtype)
    if prebuilt is None:
        return shard.get_model(cfg)
    model, processor = prebuilt
    lm = LoadedModel(model, processor, adapter_for(processor, model.config), str(path), model.config.model_type,
                     args.device, str(resolve_dtype(args.dtype, args.device)).replace("torch.", ""))
    # The runner's cache is filled through its own get_model (whatever its key), with loading replaced by the
    # model built in memory: 7B random weights are never written to disk and read back.
    original = probe_models.load_model
    probe_models.load_model = lambda *a, **k: lm
    try:
        return shard.get_model(cfg)
    finally:
        probe_models.load_model = original


# ---- timing -----------------------------------------------------------------------------------------------------
class Clock:
    """Accumulates wall time of wrapped calls, synchronising the device so GPU work is charged to its caller."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.totals: dict[str, float] = {}

    @contextmanager
    def timed(self, key: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - t0

    def wrap(self, owner, name: str, key: str, *, static: bool = False):
        original = owner.__dict__[name]
        func = original.__func__ if static else original

        def wrapped(*a, **k):
            with self.timed(key):
                return func(*a, **k)

        setattr(owner, name, staticmethod(wrapped) if static else wrapped)
        return lambda: setattr(owner, name, original)


def probe_path(args, pool, images, model_dir, out: Path) -> dict:
    from mmsift.models import losses as loss_mod
    from mmsift.models.base import FamilyAdapter
    from mmsift.probe import signals as sig_mod
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.store import ShardWriter

    common = dict(images=images, model=model_dir, signals=list(args.signals), device=args.device, dtype=args.dtype,
                  batch_size=args.batch_size, num_workers=args.num_workers, shard_size=args.n)
    clock = Clock(args.device)
    undo = [clock.wrap(FamilyAdapter, "forward", "forward"), clock.wrap(FamilyAdapter, "lm_head", "forward",
                                                                         static=True),
            clock.wrap(sig_mod, "batch_signals", "signals"), clock.wrap(loss_mod, "answer_loss", "signals"),
            clock.wrap(ShardWriter, "write", "write"), clock.wrap(ShardWriter, "merge", "write")]
    # Families that override forward/lm_head bypass the base wrapper; the benchmark models are LLaVA.
    try:
        t0 = time.perf_counter()
        result = run_probe(pool, ProbeConfig(out=out, **common))
        wall = time.perf_counter() - t0
    finally:
        for u in undo:
            u()
    t = clock.totals
    post = t.get("signals", 0.0) - t.get("forward", 0.0) + t.get("write", 0.0)
    return {"wall": wall, "forward": t.get("forward", 0.0), "post": post, "n": len(result.store),
            "store": result.store}


def plain_path(args, lm, records, images_dir) -> dict:
    """Batch 1, full outputs, eager attention, every signal extracted from the outputs."""
    import torch

    from mmsift.data.images import load_images
    from mmsift.probe.signals import default_feature_layers

    model, adapter = lm.model, lm.adapter
    model.set_attn_implementation("eager")
    n_layers = adapter.num_layers(model)
    feat = default_feature_layers(n_layers)
    clock = Clock(args.device)
    tokens = 0
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for rec in records:
                enc = adapter.encode(rec.turns, load_images(rec, images_dir) if rec.images else [])
                extra = {k: (v.to(args.device, model.dtype) if v.is_floating_point() else v.to(args.device))
                         for k, v in enc.extra.items()}
                ids = enc.input_ids[None].to(args.device)
                with clock.timed("forward"):
                    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                                output_attentions=True, **extra)
                with clock.timed("post"):
                    hs = [h[0].float() for h in out.hidden_states]
                    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
                    ans = enc.answer_mask.to(args.device)
                    pos = ans[1:].nonzero().squeeze(1)
                    lp = logp[pos, ids[0, pos + 1]]
                    ce = -lp
                    p = logp[pos].exp()
                    onehot = torch.nn.functional.one_hot(ids[0, pos + 1], p.shape[-1]).float()
                    h = hs[-2]
                    sv = torch.linalg.svdvals(h)
                    q = sv / sv.sum()
                    a = out.attentions[-1][0, :, -1, :].float().mean(0)
                    img = enc.image_mask.to(args.device)
                    values = {
                        "loss": ce.mean(), "el2n": (p - onehot).norm(dim=-1).mean(), "tok_loss_max": ce.max(),
                        "tok_loss_std": ce.std(unbiased=False), "sv_entropy": -(q * q.clamp(min=1e-30).log()).sum(),
                        "sv_tau": sv[0] / sv.sum(), "last": h[-1], "mean": h.mean(0),
                        "attn_pool": a[:-1] @ hs[-1][:-1],
                        "img_mean": torch.cat([torch.nn.functional.normalize(hs[i][img].mean(0), dim=0)
                                               if img.any() else torch.zeros_like(hs[i][0]) for i in feat]),
                        "txt_mean": torch.cat([torch.nn.functional.normalize(hs[i][~img].mean(0), dim=0)
                                               for i in feat]),
                    }
                    _ = {k: v.cpu().numpy() for k, v in values.items()}
                tokens += ids.shape[1]
    finally:
        model.set_attn_implementation("sdpa")
    wall = time.perf_counter() - t0
    return {"wall": wall, "forward": clock.totals.get("forward", 0.0), "post": clock.totals.get("post", 0.0),
            "n": len(records), "tokens": tokens}


def peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given"
    if not device.startswith("cuda"):
        return None, "no peak for CPU"
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"{name}, bf16 dense"
    return None, f"unknown peak for {name}: pass --peak-tflops"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "llava-7b-shape", "qwen2.5-vl-7b-shape"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--n", type=int, default=24, help="records in the pool")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers of the mmsift path (default: the runner's: 0 on CPU, up to 8 on GPU)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--signals", default=",".join(FORWARD_SIGNALS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per path, in ABBA order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    args.signals = tuple(s for s in args.signals.split(",") if s)

    import torch

    from mmsift.data.io import read_pool
    from mmsift.models.loading import resolve_dtype
    from mmsift.models.proxy import build_proxy

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmsift-throughput-"))
    side = {"llava-7b-shape": 336, "qwen2.5-vl-7b-shape": 448}.get(args.model, 32)
    pool, images, texts = make_pool(work / "pool", args.n, side=side, seed=args.seed)
    if args.model == "tiny":
        model_dir = build_proxy(work / "tiny", texts=texts)
        lm = load_into_runner(model_dir, args)
    elif args.model == "llava-7b-shape":
        model_dir = work / "llava-7b-shape"
        dtype = resolve_dtype(args.dtype, args.device)
        lm = load_into_runner(model_dir, args, build_llava_7b_shape(model_dir, texts, device=args.device,
                                                                    dtype=dtype))
    else:
        model_dir = work / "qwen2.5-vl-7b-shape"
        dtype = resolve_dtype(args.dtype, args.device)
        lm = load_into_runner(model_dir, args, build_qwen25_vl_7b_shape(model_dir, device=args.device, dtype=dtype))
    records = read_pool(pool).records
    params = sum(p.numel() for p in lm.model.parameters())

    # Warm-up of both paths, then ABBA-ordered repeats so that drifting machine load hits both paths alike.
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe

    run_probe(pool, ProbeConfig(images=images, model=model_dir, out=work / "runs" / "warm", signals=tuple(args.signals),
                                device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                num_workers=args.num_workers, shard_size=args.n, limit=min(args.n, 2 * args.batch_size)))
    plain_path(args, lm, records[:2], images)
    runs = {"mmsift": [], "plain": []}
    for r in range(args.repeats):
        for name in (("mmsift", "plain") if r % 2 == 0 else ("plain", "mmsift")):
            if name == "mmsift":
                runs[name].append(probe_path(args, pool, images, model_dir, work / "runs" / f"timed{r}"))
            else:
                runs[name].append(plain_path(args, lm, records, images))
    tokens = runs["plain"][0]["tokens"]  # identical sequences in both paths (same adapter)
    mm, plain = ({k: sum(x[k] for x in rs) for k in ("wall", "forward", "post", "n")} for rs in
                 (runs["mmsift"], runs["plain"]))
    mm["tokens"] = plain["tokens"] = tokens * args.repeats
    store = runs["mmsift"][-1]["store"]

    peak, peak_note = peak_tflops(args.device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"CPU ({args.threads} torch threads)"
    print(f"model {args.model}: {params / 1e6:.2f}M parameters, dtype {lm.dtype}, device {device_name}")
    print(f"{args.n} records, {tokens} tokens in all (image tokens included), batch size {args.batch_size} "
          f"(mmsift), {args.repeats} timed runs per path (ABBA order), signals: {', '.join(args.signals)}")
    print(f"peak: {peak if peak else 'n/a'} TFLOP/s ({peak_note})")
    print(f"{'path':<8} {'samples/s':>10} {'tokens/s':>11} {'MFU':>7} {'forward s':>10} {'after-fwd':>10} "
          f"{'other':>7} {'wall s':>8}   (times: sums over the timed runs; other: input preparation, validation, "
          f"batching)")
    for name, r in (("mmsift", mm), ("plain", plain)):
        sps, tps = r["n"] / r["wall"], r["tokens"] / r["wall"]
        mfu = f"{2 * params * tps / (peak * 1e12):.1%}" if peak else "n/a"
        other = (r["wall"] - r["forward"] - r["post"]) / r["wall"]
        print(f"{name:<8} {sps:>10.2f} {tps:>11.0f} {mfu:>7} {r['forward']:>10.3f} "
              f"{r['post'] / r['wall']:>10.1%} {other:>7.1%} {r['wall']:>8.3f}")
    print(f"mmsift / plain samples/s: {(mm['n'] / mm['wall']) / (plain['n'] / plain['wall']):.2f}x")
    print(f"work directory: {work}")
    _check_agreement(store, plain_loss_reference(args, lm, records[:4], images))


def plain_loss_reference(args, lm, records, images_dir) -> np.ndarray:
    """Answer loss of a few records from the model's own full forward (batch 1), to check both paths agree."""
    import torch

    from mmsift.data.images import load_images

    out = []
    with torch.inference_mode():
        for rec in records:
            enc = lm.adapter.encode(rec.turns, load_images(rec, images_dir) if rec.images else [])
            extra = {k: (v.to(args.device, lm.model.dtype) if v.is_floating_point() else v.to(args.device))
                     for k, v in enc.extra.items()}
            ids = enc.input_ids[None].to(args.device)
            logp = torch.log_softmax(lm.model(input_ids=ids, **extra).logits[0].float(), -1)
            pos = enc.answer_mask.to(args.device)[1:].nonzero().squeeze(1)
            out.append(float(-logp[pos, ids[0, pos + 1]].mean()))
    return np.array(out)


def _check_agreement(store, reference: np.ndarray) -> None:
    got = np.asarray(store.load(["loss"])["loss"][: len(reference)], dtype=np.float64)
    diff = float(np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-6)))
    print(f"loss agreement on the first {len(reference)} records (mmsift vs plain forward): max rel. diff {diff:.2e}")


if __name__ == "__main__":
    main()
