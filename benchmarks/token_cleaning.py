"""Token cleaning on a pool with long answers: keep share, record bytes, sizes and timing of every step.

    python benchmarks/token_cleaning.py [--workdir DIR] [--n-images 400] [--keep 0.6] [--rounds 3] [--seed 0]

The pool (JSONL): the bench's clean easy-vqa records (``mmsift.bench.pool.build_clean_records``: one-word answers,
multiple choice, OCR words, multi-turn records ending in a short description) plus, for every image with a known
shape and colour, a detailed-description record whose answer is a paragraph of 6-9 sentences (about 60-110
words) drawn with seeded phrasing from the image's facts, so that long answers mix informative words (the
colour, the shape) with filler.

Steps, each timed: the reference (``mmsift warmup`` of the bundled base on the pool), the per-token probes of the
base (the model before) and of the reference (``--signals token_loss``), ``mmsift tokens`` fixed-model and
``mmsift tokens --rounds K`` (self-evolving). Printed as JSON: records and answer tokens, the store's sizes
(``tokens.parquet`` against ``signals.parquet``), the sidecar's size, the keep share against the share asked,
whether the written records are byte-identical to the pool, the kept share by answer length, and the seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

SENTENCES = (
    "The image shows a {color} {shape} on a plain background.",
    "The {shape} is drawn in a flat {color} colour without any shading or texture.",
    "It is the only object in the picture, and nothing overlaps it.",
    "There is no text, no person and no other shape anywhere in the scene.",
    "The edges of the {shape} are sharp and clearly visible against the background.",
    "Its size is moderate compared with the whole frame of the image.",
    "Overall, the picture is a simple synthetic illustration of a single {color} {shape}.",
    "The background is uniform and does not contain any pattern or gradient.",
    "Because the {shape} is {color}, it stands out clearly from its surroundings.",
    "The composition is minimal, which makes the {shape} easy to recognise at a glance.",
    "No shadows or reflections are visible, so the scene looks completely flat.",
    "A viewer would most likely describe it as a {color} {shape} and nothing more.",
)
DETAIL_QUESTION = "Describe the image in detail."


def long_records(records: list[dict], seed: int) -> list[dict]:
    """One detailed-description record per image whose short description names its colour and shape."""
    rng = random.Random(seed)
    out = []
    for r in records:
        last = r["conversations"][-1]["value"]
        if not r["id"].endswith("-multi") or not last.startswith("A ") or len(last.split()) != 3:
            continue
        color, shape = last[2:-1].split()
        picked = rng.sample(SENTENCES, rng.randint(6, 9))
        answer = " ".join(s.format(color=color, shape=shape) for s in picked)
        out.append({"id": r["id"].replace("-multi", "-detail"), "image": r["image"],
                    "conversations": [{"from": "human", "value": f"<image>\n{DETAIL_QUESTION}"},
                                      {"from": "gpt", "value": answer}]})
    return out


def cli(*args: str) -> float:
    """Run ``mmsift ARGS`` in a fresh interpreter (the user's path, imports included); returns the seconds."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", "from mmsift.cli import app; app()", *args], capture_output=True,
                         text=True)
    if res.returncode:
        raise SystemExit(f"mmsift {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    print(res.stdout, file=sys.stderr)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="token-cleaning-bench")
    ap.add_argument("--n-images", type=int, default=400)
    ap.add_argument("--keep", type=float, default=0.6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from mmsift.bench.pool import build_clean_records
    from mmsift.store import SignalStore
    from mmsift.train.pretrain import ensure_base

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    records = build_clean_records(root, n_images=args.n_images, n_ocr=120, seed=args.seed)
    records += long_records(records, args.seed)
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    images = str(root / "images")
    seconds = {"base": time.perf_counter()}
    base = ensure_base()
    seconds["base"] = time.perf_counter() - seconds["base"]
    seconds["warmup"] = cli("warmup", str(pool), "--images", images, "--out", str(root / "proxy"),
                            "--seed", str(args.seed))
    for name, model in (("base", base), ("ref", root / "proxy")):
        seconds[f"probe_{name}"] = cli("probe", str(pool), "--images", images, "--model", str(model), "--out",
                                       str(root / f"run-{name}"), "--signals", "token_loss", "--overwrite")
    common = ["tokens", str(root / "run-base"), "--reference-run", str(root / "run-ref"), "--keep", str(args.keep)]
    seconds["tokens"] = cli(*common, "--out", str(root / "fixed" / "subset.jsonl"),
                            "--html", str(root / "fixed" / "tokens.html"))
    seconds[f"tokens_rounds_{args.rounds}"] = cli(*common, "--rounds", str(args.rounds), "--seed", str(args.seed),
                                                  "--out", str(root / "evolving" / "subset.jsonl"))
    store = SignalStore(root / "run-base")
    result = {"records": len(records), "long_answer_records": sum(r["id"].endswith("-detail") for r in records),
              "answer_tokens": store.manifest["tokens"]["n_tokens"],
              "bytes": {"tokens.parquet": (store.root / "tokens.parquet").stat().st_size,
                        "signals.parquet": (store.root / "signals.parquet").stat().st_size,
                        "pool.jsonl": pool.stat().st_size},
              "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for variant in ("fixed", "evolving"):
        subset = root / variant / "subset.jsonl"
        report = json.loads((root / variant / "subset.tokens.report.json").read_text())
        result[variant] = {
            "byte_identical": subset.read_bytes() == pool.read_bytes(),
            "sidecar_bytes": (root / variant / "subset.tokens.jsonl").stat().st_size,
            "n_ranked": report["n_ranked"], "n_kept": report["n_kept"],
            "asked": args.keep, "floor(asked * ranked)": int(args.keep * report["n_ranked"] + 1e-9),
            "per_part": [(p["n_kept"], p["n_ranked"]) for p in report["parts"]],
            "by_answer_length": report["by_answer_length"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
