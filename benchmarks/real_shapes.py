"""The probe at real shapes on CPU: a family at its real width (two decoder and two vision layers, random
weights) with its real processor settings, on photos of 640x480 and one of 2048x1536.

    python benchmarks/real_shapes.py --family qwen2_vl [--n 8] [--big 1] [--batch-size 8]
                                     [--max-batch-tokens 8192] [--plain] [--workdir DIR]

Each measured setting runs in its own process (peak RSS is a per-process high-water mark): the process loads the
model, then probes the pool (``run_probe``, forward-pass signals) or, with ``--plain``, runs the plain loop (batch
1, the model's own forward with ``output_hidden_states=True``, loss from its logits). Printed as one JSON line:
tokens per record, peak RSS after loading and at the end (MiB), wall seconds and tokens/s. ``--compare`` runs
batch-size, token-budget and plain settings side by side.

The models are the tiny checkpoints of ``tests/tiny_families.py`` widened to the :data:`SPECS` below (the widths of
the named public checkpoints' configs; seven of the ten rows are in ``real_shapes_specs.py``), with the tiny
byte-level tokenizer (its small vocabulary keeps the embedding out of the memory figures) and the family's real
image-processor settings. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

_QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
from real_shapes_specs import SPECS_MORE  # noqa: E402  (the seven other families)
# Per family: the checkpoint whose widths are used, and the overrides of text config, vision config, image
# processor and processor keyword arguments. Depth is always 2 decoder + 2 vision layers.
SPECS = {
    "llava": dict(
        like="llava-1.5-7b",
        text=dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=128, max_position_embeddings=4096),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14,
                    projection_dim=768),
        top=dict(image_seq_length=576),
        image_processor=dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        processor=dict(patch_size=14)),
    "qwen2_vl": dict(
        like="Qwen2-VL-2B",
        text=dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                  head_dim=128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision=dict(embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14),
        image_processor=dict(size=_QWEN_PIXELS, patch_size=14, merge_size=2)),
    "qwen2_5_vl": dict(
        like="Qwen2.5-VL-3B",
        text=dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                  head_dim=128, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision=dict(hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
                    window_size=112, fullatt_block_indexes=[1]),
        image_processor=dict(size=_QWEN_PIXELS, patch_size=14, merge_size=2)),
    **SPECS_MORE,
}
LAYERS = 2


def widen(family: str, out: Path) -> Path:
    """The tiny checkpoint of ``family`` at the widths of :data:`SPECS` (random weights), written to ``out``."""
    import torch
    from tiny_families import build_tiny
    from transformers import AutoConfig, AutoModelForImageTextToText

    spec = SPECS[family]
    tiny = build_tiny(family, out.parent / f"{out.name}-tiny")
    config = AutoConfig.from_pretrained(tiny, local_files_only=True)
    text, vision = config.get_text_config(), config.vision_config
    for k, v in {**spec["text"], "num_hidden_layers": LAYERS}.items():
        setattr(text, k, v)
    depth_key = "depth" if hasattr(vision, "depth") else "num_hidden_layers"
    for k, v in {**spec["vision"], depth_key: LAYERS}.items():
        setattr(vision, k, v)
    for k, v in spec.get("top", {}).items():
        setattr(config, k, v)
    if hasattr(text, "layer_types"):
        text.layer_types = text.layer_types[:LAYERS]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for f in tiny.iterdir():
        if f.suffix in (".json", ".jinja") and f.name not in ("config.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    proc = json.loads((out / "processor_config.json").read_text())
    proc["image_processor"].update(spec.get("image_processor", {}))
    proc.update(spec.get("processor", {}))
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    shutil.rmtree(tiny)
    return out


def photo(path: Path, width: int, height: int, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    ImageDraw.Draw(im).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(200, 30, 30))
    im.save(path, quality=90)


def make_pool(root: Path, n: int, big: int) -> Path:
    """``n`` one-image records: the first ``big`` with a 2048x1536 photo, the rest 640x480."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        w, h = (2048, 1536) if i < big else (640, 480)
        photo(images / f"{i}.jpg", w, h, i)
        records.append({"id": f"r{i}", "image": f"images/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle in the middle of this picture?"},
            {"from": "gpt", "value": "The circle is red, drawn over a noisy background."}]})
    pool = root / "pool.json"
    pool.write_text(json.dumps(records), encoding="utf-8")
    return pool


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args) -> dict:
    """One setting in this process (see the module doc)."""
    import torch

    from mmsift.models.loading import load_model

    torch.set_num_threads(args.threads)
    pool = Path(args.pool)
    lm = load_model(args.model)
    after_load = rss_mib()
    t0 = time.perf_counter()
    if args.plain:
        tokens = plain_loop(lm, pool)
        wall = time.perf_counter() - t0
    else:
        from mmsift.probe.config import ProbeConfig
        from mmsift.probe.runner import run_probe

        run_probe(pool, ProbeConfig(model=args.model, out=str(Path(args.workdir) / "run"), overwrite=True,
                                            signals=("loss", "el2n", "last", "mean", "attn_pool", "img_mean"),
                                            batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                                            num_workers=0))
        wall = time.perf_counter() - t0
        tokens = record_tokens(lm, pool)  # n_tokens counts text only; image tokens are added here, untimed
    return {"setting": "plain" if args.plain else (f"max_batch_tokens={args.max_batch_tokens}"
                                                    if args.max_batch_tokens else f"batch_size={args.batch_size}"),
            "tokens_per_record": tokens, "rss_after_load_mib": round(after_load), "peak_rss_mib": round(rss_mib()),
            "wall_s": round(wall, 2), "tokens_per_s": round(sum(tokens) / wall, 1)}


def record_tokens(lm, pool: Path) -> list[int]:
    """Input tokens of each record (image tokens included), as the adapter encodes it."""
    from mmsift.data.images import load_images
    from mmsift.data.io import read_pool

    return [len(lm.adapter.encode(rec.turns, load_images(rec, pool.parent))) for rec in read_pool(pool).records]


def plain_loop(lm, pool: Path) -> list[int]:
    import torch

    from mmsift.data.images import load_images
    from mmsift.data.io import read_pool

    tokens = []
    with torch.inference_mode():
        for rec in read_pool(pool).records:
            enc = lm.adapter.encode(rec.turns, load_images(rec, pool.parent))
            ids = enc.input_ids[None]
            out = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                           use_cache=False, **enc.extra)
            logp = torch.log_softmax(out.logits[0].float(), -1)
            pos = enc.answer_mask[1:].nonzero().squeeze(1)
            _ = float(-logp[pos, ids[0, pos + 1]].mean())
            tokens.append(ids.shape[1])
    return tokens


def compare(args) -> None:
    work = Path(args.workdir)
    model = widen(args.family, work / args.family)
    pool = make_pool(work / "pool", args.n, args.big)
    print(f"family {args.family} at {SPECS[args.family]['like']} width, {LAYERS} decoder + {LAYERS} vision layers; "
          f"{args.n} records ({args.big} at 2048x1536, the rest 640x480); torch threads {args.threads}")
    settings = [["--batch-size", str(args.batch_size)], ["--max-batch-tokens", str(args.max_batch_tokens)]]
    if args.with_plain:
        settings.append(["--plain"])
    for extra in settings:
        cmd = [sys.executable, __file__, "--measure", "--model", str(model), "--pool", str(pool),
               "--workdir", str(work), "--threads", str(args.threads), *extra]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1],
              flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(SPECS), default="qwen2_vl")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--big", type=int, default=1, help="records with a 2048x1536 photo")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--with-plain", action="store_true", help="also time the plain loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    # internal: one setting in this process
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pool", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        if "--batch-size" in sys.argv:
            args.max_batch_tokens = None
        print(json.dumps(measure(args)))
        return
    import tempfile

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="mmsift-real-shapes-")
    compare(args)


if __name__ == "__main__":
    main()
