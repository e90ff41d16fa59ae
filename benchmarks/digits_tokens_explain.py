"""What the token masks of ``benchmarks/digits_tokens.py OUT`` took, per digit, and what it cost per digit.

    python benchmarks/digits_tokens_explain.py OUT

Reads OUT/digits/pool.json (true digits), OUT/bench/tokens.jsonl (the masks), the two probe runs' per-token
losses (OUT/bench/run: the warmed-up proxy; OUT/bench/token_base_run: the model before) and OUT/bench/items.npz
(per-item correctness of every trained run). Prints the masked records per true digit, the losses behind the
scores per digit, and the eval accuracy per digit of full, full+tokens0.6 and full-clean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _answer_losses(run) -> dict:
    from mmsift.store import SignalStore

    store = SignalStore(run)
    ids = [str(i) for i in store.load([]).ids]
    tokens = store.load_tokens()
    content = tokens.turn >= 0  # one ranked token per digit answer
    return {ids[r]: float(x) for r, x in zip(tokens.row[content], tokens.loss[content])}


def main() -> None:
    from mmsift.bench.evalfile import load_eval_file

    out = Path(sys.argv[1])
    pool = json.loads((out / "digits" / "pool.json").read_text())
    side = {e["id"]: e for e in map(json.loads, (out / "bench" / "tokens.jsonl").read_text().splitlines())}
    threshold = json.loads((out / "bench" / "tokens.report.json").read_text())["parts"][0]["threshold"]
    true = np.array([r["digits"]["true_label"] for r in pool])
    bad = np.array([r["digits"]["defect"] != "none" for r in pool])
    said = np.array([int(r["conversations"][1]["value"]) for r in pool])
    masked = np.array([side[r["id"]]["n_masked"] > 0 for r in pool])
    ref, base = _answer_losses(out / "bench" / "run"), _answer_losses(out / "bench" / "token_base_run")
    ref_l = np.array([ref[r["id"]] for r in pool])
    base_l = np.array([base[r["id"]] for r in pool])
    print(f"masked: {(masked & bad).sum()} of {bad.sum()} wrong digits, {(masked & ~bad).sum()} of {(~bad).sum()} "
          f"clean; kept threshold (score) {threshold:.3f}")
    print(f"base loss over the pool: mean {base_l.mean():.3f} sd {base_l.std():.3f}; wrong digits: reference loss "
          f"median {np.median(ref_l[bad]):.2f}")
    print("digit | clean records | masked | base loss (answers of this digit) | clean: ref loss median | "
          "score median")
    for d in range(10):
        c = ~bad & (true == d)
        print(f"{d} | {c.sum()} | {(c & masked).sum()} ({(c & masked).sum() / c.sum():.0%}) | "
              f"{base_l[said == d].mean():.3f} | {np.median(ref_l[c]):.2f} | {np.median(base_l[c] - ref_l[c]):.2f}")
    print(f"records answering 8 that keep their label: {((said == 8) & ~masked).sum()} of {(said == 8).sum()}")
    ev = load_eval_file(out / "digits" / "eval.json", out / "digits" / "images")
    ans = np.array([int(x.answer) for x in ev.items])
    items = np.load(out / "bench" / "items.npz")
    print("eval items per digit:", np.bincount(ans, minlength=10).tolist())
    for label in ("full", "full+tokens0.6", "full-clean"):
        acc = np.mean([items[f"{label}|1|{s}|all"] for s in (0, 1, 2)], axis=0)
        print(label, " ".join(f"{d}:{acc[ans == d].mean():.2f}" for d in range(10)), f"all {acc.mean():.3f}")
    for twin, plain, budget in (("full+tokens0.6", "full", "1"), ("random+tokens0.6", "random", "0.15"),
                                ("selfcheck+tokens0.6", "selfcheck", "0.15")):
        for s in (0, 1, 2):
            a, b = items[f"{twin}|{budget}|{s}|all"], items[f"{plain}|{budget}|{s}|all"]
            eight, rest = ans == 8, ans != 8
            print(f"{twin} - {plain} seed {s}: all {a.mean() - b.mean():+.3f}, on 8 "
                  f"{a[eight].mean() - b[eight].mean():+.3f} (twin {a[eight].mean():.2f}, plain "
                  f"{b[eight].mean():.2f}), others {a[rest].mean() - b[rest].mean():+.3f}, same correctness on "
                  f"every item: {np.array_equal(a, b)}")


if __name__ == "__main__":
    main()
