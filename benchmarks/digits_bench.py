"""The referee on a real-image pool that is not easy-vqa: scikit-learn's digits (mmsift.data.digits), 20% wrong
answers marked under ``digits``, judged on the held-out eval.json with ``--target scratch``.

    python benchmarks/digits_bench.py OUT

Same as ``mmsift bench --pool OUT/digits/pool.json --images OUT/digits/images --eval OUT/digits/eval.json
--eval-images OUT/digits/images --truth-field digits --target scratch --methods random,oracle,selfcheck,semdedup,
el2n,datatailor --budgets 0.15,0.3 --seeds 0,1,2`` with two extra oracle/random seed pairs for the sensitivity
line (the CLI uses five).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run_digits_bench(out: Path, *, methods: list[str], budgets: tuple, sensitivity_seeds: tuple,
                     tokens: float | None = None) -> None:
    """Build the digits pool under ``out/digits`` (seed 0, 20% wrong), bench it with ``--target scratch`` on seed
    pairs 0, 1, 2, print the results and the wall time."""
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.data.digits import build_digits_pool

    pool = build_digits_pool(out / "digits", n_eval=300, flip_share=0.2, seed=0)
    images = str(out / "digits" / "images")
    cfg = BenchConfig(out=str(out / "bench"), pool=str(pool), images=images, eval=str(out / "digits" / "eval.json"),
                      eval_images=images, truth_field="digits", target="scratch", methods=methods, budgets=budgets,
                      seeds=(0, 1, 2), sensitivity_seeds=sensitivity_seeds, post_fraction=0.0, tokens=tokens)
    t0 = time.perf_counter()
    result = run_bench(cfg)
    print(result["markdown"])
    print(f"wall {time.perf_counter() - t0:.0f}s")


def main() -> None:
    run_digits_bench(Path(sys.argv[1]), methods=["random", "oracle", "selfcheck", "semdedup", "el2n", "datatailor"],
                     budgets=(0.15, 0.3), sensitivity_seeds=(3, 4))


if __name__ == "__main__":
    main()
