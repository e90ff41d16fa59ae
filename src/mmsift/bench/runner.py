"""The benchmark run: pool with known defects -> probe -> every method x budget -> train the target -> evaluate.

Stages (each timed): build the pool and the evaluation set; build the target's initial checkpoint (one tokenizer
for every subset); warm up the probe's proxy on the pool and probe it for the signals the methods need; then for
each method and budget select with :func:`mmsift.select.select_rows`, train the target from its initial weights
on the subset and evaluate it. ``full`` (the whole pool) is the reference row; ``random`` is always run.
Everything is seeded: the same seed gives the same table (wall times aside).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.05, 0.15, 0.3)
QUICK_METHODS = ("random", "length", "loss", "el2n", "selfcheck")
CORRUPT = ("wrong_answer", "hallucination", "ocr_corrupt", "noise")
DUPLICATES = ("duplicate", "near_duplicate")


@dataclass
class BenchConfig:
    out: str
    budgets: tuple = DEFAULT_BUDGETS
    methods: list | None = None  # None: every registered method the probe (or the judge run) can feed
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    judge_run: str | None = None  # a signal store with judge columns (cap_*, style_*, scale_*) for this pool
    rates: object = None  # mmsift.bench.defects.DefectRates; None = the documented defaults
    random_seeds: tuple = ()  # extra random subsets (rows "random@seed=N") to show how much random alone varies
    n_images: int = 400
    n_ocr: int = 120
    eval_per_type: int = 100
    eval_mc: int = 100
    eval_ocr: int = 64
    warmup_samples: int = 512
    warmup_epochs: int = 3
    epochs: float = 8.0
    min_steps: int = 150
    threads: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick_config(cls, out: str, **overrides) -> "BenchConfig":
        base = dict(out=out, budgets=(0.3,), quick=True, n_images=100, n_ocr=30, eval_per_type=40, eval_mc=40,
                    eval_ocr=24, warmup_samples=192, warmup_epochs=2, epochs=4.0, min_steps=40)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def choose_methods(requested, *, judge_columns=()) -> tuple[list[str], dict[str, str]]:
    """Methods to run and, for each registered method left out, why."""
    from mmsift.probe.signals import KNOWN
    from mmsift.scorers import SCORERS

    producible = set(KNOWN) | set(judge_columns)
    names = list(SCORERS) if requested is None else list(requested)
    unknown = [m for m in names if m not in SCORERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(sorted(SCORERS))}")
    chosen, skipped = [], {}
    for m in names:
        missing = [s for s in SCORERS[m].requires if s not in producible]
        if missing:
            shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            skipped[m] = f"needs {shown}, which the probe does not compute (pass a judge run)"
        else:
            chosen.append(m)
    if "random" not in chosen:
        chosen.insert(0, "random")
    if requested is None:
        for m in SCORERS:
            if m not in chosen and m not in skipped:
                skipped[m] = "not requested"
    return chosen, skipped


def merge_judge(signals, judge_run: str):
    """Add the judge store's columns to ``signals``, matched by record id (NaN where the judge has no row)."""
    from mmsift.store import Signals, SignalStore

    judge = SignalStore(judge_run).load()
    pos = {str(i): r for r, i in enumerate(judge.ids)}
    rows = np.array([pos.get(str(i), -1) for i in signals.ids])
    cols = dict(signals.columns)
    for name, arr in judge.columns.items():
        if name in cols:
            continue
        arr = np.asarray(arr)
        if arr.dtype.kind in "fiu":
            merged = np.full((len(rows),) + arr.shape[1:], np.nan)
            merged[rows >= 0] = arr[rows[rows >= 0]]
        else:
            merged = np.array([arr[r] if r >= 0 else "" for r in rows], dtype=object)
        cols[name] = merged
    return Signals(ids=signals.ids, index=signals.index, tasks=signals.tasks, columns=cols)


def defect_metrics(truth: list[dict], kept_index: np.ndarray, scores_by_index: np.ndarray | None) -> dict:
    """What a subset kept of the injected defects, from the records' ``bench`` truth.

    ``kept_<defect>``: share of that defect's records kept. ``corrupt_kept``: share of the corrupted records
    (wrong answers, hallucinations, OCR corruptions, noise) kept. ``dup_pairs_kept``: copies (exact or near)
    kept together with their original. ``auroc``: how well the method's score (higher = keep) ranks clean
    records above corrupted ones (copies left out); 0.5 = no better than chance.
    """
    from mmsift.metrics import auroc

    labels = np.array([t.get("defect", "none") for t in truth], dtype=object)
    kept = np.zeros(len(truth), dtype=bool)
    kept[np.asarray(kept_index, dtype=np.int64)] = True
    out: dict = {}
    for d in CORRUPT + DUPLICATES:
        n = int((labels == d).sum())
        out[f"kept_{d}"] = float(kept[labels == d].mean()) if n else float("nan")
    corrupt = np.isin(labels, CORRUPT)
    out["corrupt_kept"] = float(kept[corrupt].mean()) if corrupt.any() else float("nan")
    ids = [t.get("id") for t in truth]
    kept_ids = {ids[i] for i in np.flatnonzero(kept)}
    out["dup_pairs_kept"] = int(sum(1 for i in np.flatnonzero(kept)
                                    if labels[i] in DUPLICATES and truth[i].get("dup_of") in kept_ids))
    out["auroc"] = float("nan")
    if scores_by_index is not None:
        rows = ~np.isin(labels, DUPLICATES) & np.isfinite(scores_by_index)
        y = (labels[rows] == "none").astype(int)
        if 0 < y.sum() < len(y):
            out["auroc"] = auroc(scores_by_index[rows], y)
    return out


def _truth(records) -> list[dict]:
    return [{**(r.raw.get("bench") or {}), "id": r.id} for r in records]


def run_bench(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; writes ``results.{md,csv,json}`` under ``cfg.out`` and returns the results."""
    from mmsift.bench.evaluate import build_eval_set, chance_table, encode_items, eval_texts, evaluate, load_eval_set
    from mmsift.bench.defects import DefectRates
    from mmsift.bench.pool import build_bench_pool
    from mmsift.bench.report import write_results
    from mmsift.bench.train import Recipe, build_target_init, deterministic, train_target
    from mmsift.data.io import read_pool, write_subset
    from mmsift.probe.models import load_model
    from mmsift.probe.runner import run_probe
    from mmsift.probe.warmup import warmup
    from mmsift.scorers import make_scorer
    from mmsift.select import select_rows

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name, t0):
        times[name] = round(time.perf_counter() - t0, 2)
        log.info("bench stage %s: %.1fs", name, times[name])

    # Methods first: an unknown name fails before minutes of pool building and training.
    judge_columns: tuple = ()
    if cfg.judge_run:
        from mmsift.store import SignalStore

        judge_columns = tuple(SignalStore(cfg.judge_run).signal_names)
    requested = cfg.methods if cfg.methods is not None else (list(QUICK_METHODS) if cfg.quick else None)
    methods, skipped = choose_methods(requested, judge_columns=judge_columns)
    log.info("bench methods: %s; skipped: %s", methods, skipped)

    t0 = time.perf_counter()
    pool_path = build_bench_pool(out / "pool", n_images=cfg.n_images, n_ocr=cfg.n_ocr, seed=cfg.seed,
                                 rates=cfg.rates)
    images = out / "pool" / "images"
    pool = read_pool(pool_path)
    if pool.problems:
        raise ValueError(f"the bench pool has parse problems: {pool.problems[:3]}")
    truth = _truth(pool.records)
    eval_path = build_eval_set(out / "eval", n_per_type=cfg.eval_per_type, n_mc=cfg.eval_mc, n_ocr=cfg.eval_ocr,
                               seed=cfg.seed)
    items = load_eval_set(eval_path)
    stage("pool_and_eval_set", t0)

    t0 = time.perf_counter()
    texts = [t.text.replace("<image>", "") for r in pool.records for t in r.turns] + eval_texts(items)
    with deterministic(cfg.threads):
        init_dir = build_target_init(out / "target_init", texts=texts, seed=cfg.seed)
        encoded = encode_items(load_model(init_dir, device=cfg.device, dtype="float32"), items,
                               out / "eval" / "images")
    stage("target_init_and_eval_encoding", t0)

    # The probe's own stages run under the same fixed thread count (an oversubscribed CPU is several times
    # slower with two threads than with one) and deterministic ops.
    t0 = time.perf_counter()
    with deterministic(cfg.threads):
        proxy = warmup(pool_path, images=images, out=out / "proxy", n_samples=cfg.warmup_samples,
                       epochs=cfg.warmup_epochs, seed=cfg.seed, device=cfg.device)
    stage("probe_warmup", t0)
    t0 = time.perf_counter()
    with deterministic(cfg.threads):
        probe = run_probe(pool_path, images=images, model=proxy, out=out / "run",
                          methods=[m for m in methods if m != "random"], device=cfg.device, seed=cfg.seed,
                          overwrite=True)
    signals = probe.store.load(mmap=False)
    if cfg.judge_run:
        signals = merge_judge(signals, cfg.judge_run)
    stage("probe", t0)

    recipe = Recipe(epochs=cfg.epochs, min_steps=cfg.min_steps, threads=cfg.threads)
    full_n = len(pool.records)
    rows: list[dict] = []
    plan = [("full", 1.0)] + [(m, b) for m in methods for b in cfg.budgets]
    plan += [(f"random@seed={s}", b) for s in cfg.random_seeds for b in cfg.budgets]
    (out / "subsets").mkdir(exist_ok=True)
    for method, budget in tqdm(plan, desc="bench", unit="run"):
        t0 = time.perf_counter()
        notes: list[str] = []
        if method == "full":
            kept = np.arange(full_n)
            scores_by_index = None
        else:
            name, _, seed_text = method.partition("@seed=")
            scorer = make_scorer(name, random_state=int(seed_text) if seed_text else cfg.seed)
            sel = select_rows(signals, scorer, budget)
            kept = np.asarray(sel.index, dtype=np.int64)
            scores_by_index = np.full(full_n, np.nan)
            scores_by_index[np.asarray(signals.index)] = sel.scores
            notes = list(sel.notes)
        select_s = time.perf_counter() - t0
        write_subset(pool, kept, out / "subsets" / f"{method.replace('@seed=', '_seed')}_{budget}.json")
        trained = train_target(init_dir, [pool.records[i] for i in kept], images, recipe=recipe, seed=cfg.seed,
                               device=cfg.device)
        t1 = time.perf_counter()
        acc = evaluate(trained.model, items, encoded, threads=cfg.threads)
        eval_s = time.perf_counter() - t1
        row = {"method": method, "budget": budget, "n_kept": int(len(kept)), "steps": len(trained.losses),
               **acc, **defect_metrics(truth, kept, scores_by_index),
               "select_s": round(select_s, 2), "train_s": round(trained.seconds, 2), "eval_s": round(eval_s, 2)}
        if notes:
            row["notes"] = " | ".join(notes)
        rows.append(row)
        log.info("bench %s @ %s: %s", method, budget, {k: row[k] for k in ("n_kept", "vqa") if k in row})

    times["total"] = round(time.perf_counter() - t_all, 2)
    meta = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("extra", "rates")},
        "defect_rates": asdict(cfg.rates or DefectRates()),
        "recipe": recipe.to_dict(),
        "methods": methods,
        "skipped": skipped,
        "stage_seconds": times,
        "pool": {"path": str(pool_path), "n_records": full_n,
                 "defects": {d: int(sum(1 for t in truth if t.get("defect") == d))
                             for d in ("none",) + CORRUPT + DUPLICATES}},
        "eval": {"n_items": len(items), "chance": chance_table(items)},
        "probe": probe.summary_lines(),
    }
    return write_results(rows, meta, out)
