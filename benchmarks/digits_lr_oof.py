"""The bar for the digits pool (docs/warmup.md): out-of-fold logistic regression on the raw 8x8 pixels.

Usage: ``python benchmarks/digits_lr_oof.py POOL_DIR`` (a folder written by
``mmsift.data.digits.build_digits_pool``). Each record is scored by a 5-fold out-of-fold logistic regression's
probability of the answer it gives; the top 80% are kept, as ``mmsift select --method selfcheck --budget 0.8``
would. Prints the share of wrong answers kept and the AUROC of the score against the wrong-answer flag.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from mmsift.metrics import auroc


def main(root: Path) -> None:
    pool = json.loads((root / "pool.json").read_text(encoding="utf-8"))
    # The images are 8x8 scans upscaled by nearest neighbour: shrinking them back gives the scan's pixels.
    x = np.stack([np.asarray(Image.open(root / "images" / r["image"]).convert("L").resize((8, 8), Image.NEAREST),
                             dtype=float).ravel() / 255 for r in pool])
    y = np.array([int(r["conversations"][1]["value"]) for r in pool])
    wrong = np.array([r["digits"]["defect"] != "none" for r in pool])
    proba = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=5, method="predict_proba")
    score = proba[np.arange(len(y)), y]
    keep = np.argsort(-score, kind="stable")[: round(0.8 * len(y))]
    print(f"{root}: kept {wrong[keep].sum()} wrong answers of {len(keep)} ({wrong[keep].mean():.1%}; pool "
          f"{wrong.mean():.1%}), AUROC {auroc(-score, wrong.astype(int)):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
