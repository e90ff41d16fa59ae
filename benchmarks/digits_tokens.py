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
from pathlib import Path


def main() -> None:
    from digits_bench import run_digits_bench  # the sibling script (benchmarks/ is on sys.path when run directly)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mmsift.bench").setLevel(logging.INFO)
    run_digits_bench(Path(sys.argv[1]), methods=["random", "selfcheck"], budgets=(0.15,), sensitivity_seeds=(),
                     tokens=0.6)


if __name__ == "__main__":
    main()
