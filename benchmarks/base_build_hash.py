"""Are two builds of the base bit-identical? Builds a reduced BaseRecipe into a fresh cache and prints the SHA-256
of its weights; run it twice (e.g. once on an idle machine, once next to ``--hog N`` busy processes) and compare.

    python benchmarks/base_build_hash.py CACHE_DIR [--hog N] [--full]

``--full`` builds the default recipe instead of the reduced one (185 s on the idle 2-core VM).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
import time


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x = (x * 31 + 7) % 1000003


def weights_hash(model_dir) -> str:
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def main() -> None:
    cache = sys.argv[1]
    hog = int(sys.argv[sys.argv.index("--hog") + 1]) if "--hog" in sys.argv else 0
    os.environ["MMSIFT_CACHE"] = cache
    from mmsift.train.pretrain import BaseRecipe, ensure_base

    recipe = BaseRecipe() if "--full" in sys.argv else BaseRecipe(n_shape_images=600, n_text_images=900,
                                                                   perception_steps=300, align_steps=60)
    hogs = [mp.Process(target=_burn, args=(time.time() + 600,)) for _ in range(hog)]
    for p in hogs:
        p.start()
    t0 = time.perf_counter()
    try:
        path = ensure_base(recipe)
    finally:
        for p in hogs:
            p.terminate()
    print(f"hog={hog} build {time.perf_counter() - t0:.1f}s weights sha256 {weights_hash(path)}")


if __name__ == "__main__":
    main()
