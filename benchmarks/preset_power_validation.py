"""Choosing the bench preset's defect rates and target on a validation split (never easy-vqa test).

For each candidate the preset pool (``--seed`` draw) is built with the candidate's defect rates, evaluated on the
pool-range easy-vqa train images that pool does not use (``PresetConfig(validation=True)``), and the bench runs
full, full-clean, oracle and random at 5%, 15% and 30% over the given seed pairs. The figures that decide are the
sensitivity lines (oracle - random per budget) and full-clean - full, with their 95% intervals.

    python benchmarks/preset_power_validation.py OUT CANDIDATE [CANDIDATE ...] [--seed S] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from mmsift.bench.defects import DefectRates

# Defect rates (fractions of the eligible clean records) and the target of each candidate.
CANDIDATES = {
    # the preset's rates before this choice
    "mild": dict(rates=DefectRates(wrong_answer=0.08, hallucination=0.08, ocr_corrupt=0.25, noise=0.05),
                 target="base"),
    # the preset's rates now (DefectRates' defaults)
    "hard": dict(rates=DefectRates(), target="base"),
    "hard-scratch": dict(rates=DefectRates(), target="scratch"),
}


def main() -> None:
    from mmsift.bench.runner import BenchConfig, run_bench

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("candidates", nargs="+", choices=sorted(CANDIDATES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--budgets", default="0.05,0.15,0.3")
    args = ap.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    budgets = tuple(float(b) for b in args.budgets.split(","))
    for name in args.candidates:
        cand = CANDIDATES[name]
        base = BenchConfig(out=str(Path(args.out) / f"{name}_s{args.seed}"))
        cfg = dataclasses.replace(base, seed=args.seed, seeds=seeds, sensitivity_seeds=(), budgets=budgets,
                                  methods=["random", "oracle"], calibration=("oracle",), post_fraction=0.0,
                                  target=cand["target"],
                                  preset=dataclasses.replace(base.preset, rates=cand["rates"], validation=True,
                                                             eval_mc=0, open_types=("shape", "color")))
        t0 = time.perf_counter()
        result = run_bench(cfg)
        print(f"== {name} (pool draw {args.seed}, seeds {seeds}): {time.perf_counter() - t0:.0f} s")
        print(result["markdown"])


if __name__ == "__main__":
    main()
