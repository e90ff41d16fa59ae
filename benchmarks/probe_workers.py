"""What DataLoader worker processes buy the probe on CPU: ``--num-workers N`` against 0, same pool, same model.

    python benchmarks/probe_workers.py [--n 192] [--workers 2] [--side 640x480] [--repeats 2] [--model DIR]

The model is the cached pretrained base (``mmsift.train.pretrain.ensure_base``: the proxy ``mmsift warmup``
starts from) unless ``--model`` names another directory. The pool is ``--n`` records of varied length
(``probe_throughput.make_pool``), with JPEG photos of ``--side`` pixels (noise plus shapes, so that decoding costs
what a photo costs). Each setting is timed ``--repeats`` times in ABBA order over one shard of all the records
(``run_probe`` end to end: validation, encoding, forward passes, writing), after one warm-up run of each.
Printed: samples/s per setting, and whether every signal column is bit-identical between the settings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_throughput import FORWARD_SIGNALS, make_pool  # noqa: E402


def photo_pool(root: Path, n: int, *, width: int, height: int, seed: int) -> tuple[Path, Path]:
    """``make_pool``'s records with their images replaced by ``width`` x ``height`` JPEG photos."""
    from PIL import Image, ImageDraw

    pool, images, _ = make_pool(root, n, side=8, seed=seed)
    rng = np.random.default_rng(seed)
    records = json.loads(pool.read_text(encoding="utf-8"))
    for rec in records:
        if "image" not in rec:
            continue
        noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        im = Image.fromarray(noise)
        ImageDraw.Draw(im).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4],
                                   fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        name = rec["image"].replace(".png", ".jpg")
        im.save(images / name, quality=90)
        rec["image"] = name
    pool.write_text(json.dumps(records), encoding="utf-8")
    return pool, images


def run(pool, images, model, out, workers: int, n: int):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe

    t0 = time.perf_counter()
    result = run_probe(pool, ProbeConfig(images=str(images), model=str(model), out=str(out),
                                         signals=FORWARD_SIGNALS, num_workers=workers, shard_size=n,
                                         overwrite=True))
    return time.perf_counter() - t0, result.store.load()


def identical(a, b) -> bool:
    if a.ids.tolist() != b.ids.tolist():
        return False
    for col in FORWARD_SIGNALS:
        x, y = np.asarray(a[col], dtype=np.float64), np.asarray(b[col], dtype=np.float64)
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--side", default="640x480")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from mmsift.train.pretrain import ensure_base

    random.seed(args.seed)
    width, height = (int(v) for v in args.side.split("x"))
    work = Path(tempfile.mkdtemp(prefix="mmsift-workers-"))
    pool, images = photo_pool(work / "pool", args.n, width=width, height=height, seed=args.seed)
    model = args.model or ensure_base()
    settings = (0, args.workers)
    for w in settings:  # warm-up: page cache, imports, model load
        run(pool, images, model, work / f"warm{w}", w, args.n)
    times = {w: 0.0 for w in settings}
    stores = {}
    for r in range(args.repeats):
        for w in (settings if r % 2 == 0 else settings[::-1]):
            wall, stores[w] = run(pool, images, model, work / f"run{w}", w, args.n)
            times[w] += wall
    print(f"model {model}; {args.n} records ({width}x{height} JPEG photos), one shard, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} timed runs per setting (ABBA)")
    for w in settings:
        print(f"--num-workers {w}: {args.n * args.repeats / times[w]:.1f} samples/s "
              f"({times[w] / args.repeats:.2f} s per run)")
    print(f"signals bit-identical between settings: {identical(stores[settings[0]], stores[settings[1]])}")


if __name__ == "__main__":
    main()
