"""Choosing ``--target scratch``'s recipe on a validation split of the digits pool (never its eval.json).

The digits pool (seed 0) is split by a seeded permutation: 1,197 records stay a pool (with their wrong answers),
300 become a validation file with their *true* digits. For each candidate recipe the bench runs on that pool and
that file (full, full-clean, oracle and random at 15%, seed pairs 0 and 1), and the figures that decide are
full-clean's accuracy (can the recipe learn digits from clean records?), full-clean - full (does corruption cost?)
and oracle - random at 15%, with their spread over the seed pairs.

    python benchmarks/digits_scratch_validation.py OUT [candidate ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

CANDIDATES = {
    # perception passes (None: about 60 passes), min/max instruction steps, lr
    "default": dict(perception=True),
    "floor600": dict(perception=True, perception_min_steps=600),
}


def split(out: Path) -> tuple[Path, Path]:
    from mmsift.data.digits import build_digits_pool

    pool_path = build_digits_pool(out / "digits", n_eval=300, seed=0)
    pool = json.loads(pool_path.read_text())
    order = np.random.default_rng(123).permutation(len(pool))
    val_idx = set(order[:300].tolist())
    train = [r for k, r in enumerate(pool) if k not in val_idx]
    val = []
    for k in sorted(val_idx):
        r = json.loads(json.dumps(pool[k]))
        r["conversations"][1]["value"] = str(r["digits"]["true_label"])
        val.append(r)
    (out / "val").mkdir(parents=True, exist_ok=True)
    p = out / "val" / "pool.json"
    p.write_text(json.dumps(train))
    v = out / "val" / "val.json"
    v.write_text(json.dumps(val))
    return p, v


def main() -> None:
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.train.target import TargetRecipe

    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(CANDIDATES)
    pool, val = split(out)
    images = str(out / "digits" / "images")
    for name in names:
        cfg = BenchConfig(out=str(out / f"run_{name}"), pool=str(pool), eval=str(val), images=images,
                          eval_images=images, truth_field="digits", target="scratch", probe_base="bundled",
                          methods=["random", "oracle"], budgets=(0.15,), seeds=(0, 1), sensitivity_seeds=(),
                          post_fraction=0.0, warmup_epochs=1, warmup_min_steps=50,
                          scratch_recipe=TargetRecipe(**CANDIDATES[name]))
        result = run_bench(cfg)
        print(f"== {name} {CANDIDATES[name]}")
        print(result["markdown"])
        for r in result["runs"]:
            print(name, r["method"], r["budget"], r["seed"], round(r.get("all", float("nan")), 3), r["steps"],
                  r["train_s"])


if __name__ == "__main__":
    main()
