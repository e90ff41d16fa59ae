"""Token-cleaning rows on the digits pool (issue 19 item 4): full, random and selfcheck at 15%, each with its
``+tokens0.6`` twin (same records, same seeds, 40% of the pool's answer tokens out of the loss), ``--target scratch``.

    python benchmarks/digits_tokens.py OUT

Same as ``mmsift bench --pool OUT/digits/pool.json --images OUT/digits/images --eval OUT/digits/eval.json
--eval-images OUT/digits/images --truth-field digits --target scratch --methods random,selfcheck --budgets 0.15
--seeds 0,1,2 --tokens 0.6`` (the pool of ``benchmarks/digits_bench.py``: seed 0, 20% wrong digits).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def main() -> None:
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.data.digits import build_digits_pool

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mmsift.bench").setLevel(logging.INFO)
    out = Path(sys.argv[1])
    pool = build_digits_pool(out / "digits", n_eval=300, flip_share=0.2, seed=0)
    images = str(out / "digits" / "images")
    cfg = BenchConfig(out=str(out / "bench"), pool=str(pool), images=images, eval=str(out / "digits" / "eval.json"),
                      eval_images=images, truth_field="digits", target="scratch", methods=["random", "selfcheck"],
                      budgets=(0.15,), seeds=(0, 1, 2), sensitivity_seeds=(), post_fraction=0.0, tokens=0.6)
    t0 = time.perf_counter()
    result = run_bench(cfg)
    print(result["markdown"])
    print(f"wall {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
