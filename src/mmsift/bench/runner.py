"""The benchmark run: pool with known defects -> probe -> every method x budget x seed -> train the target -> evaluate.

Stages (each timed): build the pool and the evaluation set; load the pretrained base (built once and cached,
:mod:`mmsift.train.pretrain`) and encode the evaluation items and the pool once with it; warm up the probe's proxy
on the whole pool (from the base, as ``mmsift warmup`` does) and probe it for the signals the methods need; then
for each seed pair (selection seed = training seed = s), each method and budget: select, train the target from
the base on the subset with the vision tower frozen, evaluate it on the easy-vqa *test* split.

Reference rows: ``full`` (the whole, corrupted pool), ``full-clean`` (every clean original), and the calibration
subsets ``oracle`` / ``anti-oracle`` (:mod:`mmsift.bench.calibration`) at each budget. Post-training rows, as in
"Corrupted but Not Broken": the ``full`` model post-trained on the top ``post_fraction`` of the pool by
``selfcheck``, and on as many random records (the control). Intervals and paired verdicts:
:mod:`mmsift.bench.stats`. Everything is seeded: the same config gives the same table (wall times aside).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmsift.bench.calibration import CALIBRATION
from mmsift.bench.jobs import JobContext, TrainJob, init_worker, run_job
from mmsift.bench.report import REFERENCE, SENSITIVITY_BUDGET
from mmsift.train.target import TargetRecipe
from mmsift.exec.processes import available_cores, run_in_processes

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.05, 0.15, 0.3)
QUICK_METHODS = ("random", "datatailor", "ards", "selfcheck", "coincide")
CORRUPT = ("wrong_answer", "hallucination", "ocr_corrupt", "noise")
DUPLICATES = ("duplicate", "near_duplicate")
# Columns the score averages: those the target trained on the full clean pool answers well above chance on a
# validation split (docs/benchmark.md has the measurements; yes/no and multiple choice stay near chance and are
# left out). The report prints every evaluated column's full-clean accuracy against chance on each run.
SCORE_COLUMNS = ("shape", "color", "ocr")


def post_recipe() -> TargetRecipe:
    """Post-training on 1-2% of the pool: a few passes at a lower learning rate, on top of the ``full`` model."""
    return TargetRecipe(epochs=5.0, min_steps=10, max_steps=60, batch_size=16, lr=1e-3)


@dataclass
class BenchConfig:
    out: str
    budgets: tuple = DEFAULT_BUDGETS
    methods: list | None = None  # None: every registered method the probe (or the judge run) can feed
    seed: int = 0  # pool, evaluation items, probe proxy
    seeds: tuple = (0, 1, 2)  # seed pairs: selection seed = training seed = s, one run per cell and seed
    # Extra seed pairs for oracle and random at the budget nearest 15% only: the sensitivity line's power.
    sensitivity_seeds: tuple = (3, 4, 5, 6, 7)
    device: str = "cpu"
    quick: bool = False
    judge_run: str | None = None  # a signal store with judge columns (cap_*, style_*, scale_*) for this pool
    rates: object = None  # mmsift.bench.defects.DefectRates; None = the documented defaults
    calibration: tuple = CALIBRATION
    n_images: int = 400
    n_ocr: int = 120
    eval_per_type: int = 300
    eval_mc: int = 300
    eval_ocr: int = 300
    mc_attacks: bool = False  # also the permuted / symbol-attacked MC versions (ARDS's columns)
    open_types: tuple = ("shape", "color", "yesno")  # open question types of the evaluation set
    warmup_epochs: int = 3
    warmup_min_steps: int = 300
    recipe: TargetRecipe = field(default_factory=TargetRecipe)
    post_fraction: float = 0.02  # 0: no post-training rows
    score_columns: tuple = SCORE_COLUMNS
    n_boot: int = 2000
    threads: int = 1  # torch threads per training job
    workers: int = 0  # training jobs at once, each in its own process; 0: one per `threads` CPU cores (1 on GPU)
    base_recipe: object = None  # mmsift.train.pretrain.BaseRecipe; None = the default (cached) base

    @classmethod
    def quick_config(cls, out: str, **overrides) -> "BenchConfig":
        base = dict(out=out, budgets=(0.15,), quick=True, seeds=(0, 1), sensitivity_seeds=(), calibration=("oracle",),
                    post_fraction=0.0, n_images=200, n_ocr=64, eval_per_type=300, eval_ocr=300,
                    # Only the score columns' items: yes/no and MC are not learned (docs/benchmark.md).
                    eval_mc=0, open_types=("shape", "color"), warmup_epochs=2, warmup_min_steps=100)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def choose_methods(requested, *, judge_columns=()) -> tuple[list[str], dict[str, str]]:
    """Methods to run and, for each registered method left out, why."""
    from mmsift.probe.signals import KNOWN
    from mmsift.scorers import SCORERS

    producible = set(KNOWN) | set(judge_columns)
    names = list(SCORERS) if requested is None else [m for m in requested if m not in CALIBRATION]
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



@dataclass
class Run:
    """One trained subset: its cell (label, budget), seed pair, kept pool positions and what it scored."""

    label: str
    budget: float
    seed: int
    kept: np.ndarray
    scores: np.ndarray | None = None  # the method's score per pool position (NaN: not scored)
    notes: list = field(default_factory=list)
    correct: dict = field(default_factory=dict)  # kind -> per-item bool
    row: dict = field(default_factory=dict)


def _stage_timer(times: dict):
    def stage(name, t0):
        times[name] = round(time.perf_counter() - t0, 2)
        log.info("bench stage %s: %.1fs", name, times[name])
    return stage


def _select(signals, name: str, budget, seed: int, n_pool: int) -> tuple[np.ndarray, np.ndarray, list]:
    from mmsift.scorers import make_scorer
    from mmsift.select import select_rows

    sel = select_rows(signals, make_scorer(name, random_state=seed), budget)
    scores = np.full(n_pool, np.nan)
    scores[np.asarray(signals.index)] = sel.scores
    return np.asarray(sel.index, dtype=np.int64), scores, list(sel.notes)


def run_bench(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; writes ``results.{md,csv,json}`` under ``cfg.out`` and returns the results.

    With more than one worker the training jobs run in *spawned* processes, which import the calling script
    again: call this from under ``if __name__ == "__main__":`` in a script (the ``mmsift bench`` command does),
    or pass ``workers=1``.
    """
    from mmsift.bench.calibration import calibration_subset, full_clean
    from mmsift.bench.defects import DefectRates
    from mmsift.bench.evaluate import build_eval_set, chance_table, encode_items, load_eval_set
    from mmsift.bench.pool import build_bench_pool
    from mmsift.bench.report import summarise, write_results
    from mmsift.data.io import read_pool, write_subset
    from mmsift.data.tasks import task_of
    from mmsift.models.encode import encode_records
    from mmsift.models.loading import load_model
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.train.loop import deterministic
    from mmsift.train.pretrain import ensure_base
    from mmsift.train.warmup import WarmupConfig, warmup

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    stage = _stage_timer(times)
    t_all = time.perf_counter()

    # Methods first: an unknown name fails before minutes of pool building and training.
    judge_columns: tuple = ()
    if cfg.judge_run:
        from mmsift.store import SignalStore

        judge_columns = tuple(SignalStore(cfg.judge_run).signal_names)
    requested = cfg.methods if cfg.methods is not None else (list(QUICK_METHODS) if cfg.quick else None)
    methods, skipped = choose_methods(requested, judge_columns=judge_columns)
    calibration = list(cfg.calibration) if cfg.methods is None else [c for c in CALIBRATION if c in cfg.methods]
    post = cfg.post_fraction > 0
    log.info("bench methods: %s; calibration: %s; skipped: %s", methods, calibration, skipped)

    t0 = time.perf_counter()
    pool_path = build_bench_pool(out / "pool", n_images=cfg.n_images, n_ocr=cfg.n_ocr, seed=cfg.seed,
                                 rates=cfg.rates)
    images = out / "pool" / "images"
    pool = read_pool(pool_path)
    if pool.problems:
        raise ValueError(f"the bench pool has parse problems: {pool.problems[:3]}")
    truth = _truth(pool.records)
    tasks = [task_of(r) for r in pool.records]
    items = load_eval_set(build_eval_set(out / "eval", n_per_type=cfg.eval_per_type, n_mc=cfg.eval_mc,
                                         n_ocr=cfg.eval_ocr, seed=cfg.seed, mc_attacks=cfg.mc_attacks,
                                         open_types=cfg.open_types))
    stage("pool_and_eval_set", t0)

    t0 = time.perf_counter()
    base_dir = ensure_base(cfg.base_recipe, device=cfg.device)
    stage("pretrained_base", t0)
    t0 = time.perf_counter()
    with deterministic(cfg.threads):
        base = load_model(base_dir, device=cfg.device, dtype="float32")
        encoded_items = encode_items(base, items, out / "eval" / "images")
        encs, failed = encode_records(base.adapter, pool.records, images)
    if failed:
        raise ValueError(f"{len(failed)} bench pool records cannot be encoded, e.g. {failed[0]}")
    stage("encode_eval_and_pool", t0)

    # The probe's own stages run under the same fixed thread count and deterministic ops.
    t0 = time.perf_counter()
    probe_methods = sorted(set(m for m in methods if m != "random") | ({"selfcheck"} if post else set()))
    with deterministic(cfg.threads):
        proxy = warmup(pool_path, WarmupConfig(out=str(out / "proxy"), images=str(images), epochs=cfg.warmup_epochs,
                                               seed=cfg.seed, device=cfg.device, base_recipe=cfg.base_recipe,
                                               progress=False, min_steps=cfg.warmup_min_steps))
    stage("probe_warmup", t0)
    t0 = time.perf_counter()
    with deterministic(cfg.threads):
        probe = run_probe(pool_path, ProbeConfig(model=str(proxy), out=str(out / "run"), images=str(images),
                                                 methods=tuple(probe_methods), device=cfg.device, seed=cfg.seed,
                                                 overwrite=True))
    signals = probe.store.load(mmap=False)
    if cfg.judge_run:
        signals = merge_judge(signals, cfg.judge_run)
    stage("probe", t0)

    n_pool = len(pool.records)
    plan: list[Run] = []
    for s in cfg.seeds:
        plan.append(Run("full", 1.0, s, np.arange(n_pool)))
        plan.append(Run("full-clean", 1.0, s, full_clean(truth)))
        for b in cfg.budgets:
            for c in calibration:
                plan.append(Run(c, b, s, calibration_subset(c, truth, tasks, b, seed=s)))
            for m in methods:
                kept, scores, notes = _select(signals, m, b, s, n_pool)
                plan.append(Run(m, b, s, kept, scores, notes))
    if "oracle" in calibration and cfg.budgets:
        b = min(cfg.budgets, key=lambda x: abs(x - SENSITIVITY_BUDGET))
        for s in (x for x in cfg.sensitivity_seeds if x not in cfg.seeds):
            plan.append(Run("oracle", b, s, calibration_subset("oracle", truth, tasks, b, seed=s)))
            kept, scores, notes = _select(signals, "random", b, s, n_pool)
            plan.append(Run("random", b, s, kept, scores, notes))
    posts = _post_runs(cfg, signals, n_pool) if post else {}
    (out / "subsets").mkdir(exist_ok=True)
    for run in plan + [r for rs in posts.values() for r in rs]:
        write_subset(pool, run.kept, out / "subsets" / f"{run.label}_{run.budget:g}_seed{run.seed}.json")
    t0 = time.perf_counter()
    # Columns outside the score (yes/no, multiple choice) are evaluated on the reference rows only, to show
    # whether the target learns them at all; every selection is scored on the score columns' items.
    jobs = [TrainJob(run.kept, run.seed, cfg.recipe, all_items=run.label in REFERENCE,
                     then=[TrainJob(p.kept, p.seed, post_recipe()) for p in posts.get(run.seed, [])]
                     if run.label == "full" else [])
            for run in plan]
    context = JobContext(base_dir=str(base_dir), device=cfg.device, threads=cfg.threads, encoded_pool=encs,
                         items=items, encoded_items=encoded_items, score_columns=tuple(cfg.score_columns))
    workers = cfg.workers or default_workers(cfg.device, cfg.threads)
    # Longest jobs first, so that no worker is left with a long one at the end while the others idle.
    order = sorted(range(len(jobs)), key=lambda k: -_job_steps(jobs[k]))
    done = run_in_processes(run_job, [jobs[k] for k in order], workers=workers, initializer=init_worker,
                            initargs=(context,), desc="bench")
    results = [None] * len(jobs)
    for k, result in zip(order, done):
        results[k] = result
    runs = list(plan)
    for run, result in zip(plan, results):
        _fill_row(run, result, truth)
        for post_run, post_result in zip(posts.get(run.seed, []) if run.label == "full" else [], result.then):
            _fill_row(post_run, post_result, truth)
            runs.append(post_run)
    stage("train_and_evaluate", t0)

    times["total"] = round(time.perf_counter() - t_all, 2)
    meta = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("rates", "recipe", "base_recipe")},
        "defect_rates": asdict(cfg.rates or DefectRates()),
        "recipe": cfg.recipe.to_dict(),
        "post_recipe": post_recipe().to_dict() if post else None,
        "base": {"path": str(base_dir), **{k: v for k, v in _base_info(base_dir).items() if k != "words"}},
        "methods": methods,
        "calibration": calibration,
        "skipped": skipped,
        "stage_seconds": times,
        "pool": {"path": str(pool_path), "n_records": n_pool,
                 "defects": {d: int(sum(1 for t in truth if t.get("defect") == d))
                             for d in ("none",) + CORRUPT + DUPLICATES}},
        "eval": {"n_items": len(items), "per_kind": {k: int(v) for k, v in _kind_counts(items).items()},
                 "chance": chance_table(items)},
        "probe": probe.summary_lines(),
        "warmup": _warmup_summary(proxy),
    }
    return write_results(summarise(runs, cfg, meta), runs, meta, out)


def default_workers(device: str, threads: int) -> int:
    """Worker processes for the training jobs: one per ``threads`` CPU cores on CPU, one on a GPU."""
    return 1 if device != "cpu" else max(1, available_cores() // max(1, threads))


def _job_steps(job: TrainJob) -> int:
    return job.recipe.steps_for(len(job.kept)) + sum(_job_steps(j) for j in job.then)


def _fill_row(run: Run, result, truth) -> None:
    run.correct = result.correct
    run.row = {"method": run.label, "budget": run.budget, "seed": run.seed, "n_kept": int(len(run.kept)),
               "steps": result.steps, **result.acc, **defect_metrics(truth, run.kept, run.scores),
               "train_s": result.train_s, "eval_s": result.eval_s}
    if run.notes:
        run.row["notes"] = " | ".join(run.notes)
    log.info("bench %s @ %s seed %d: %s", run.label, run.budget, run.seed,
             {k: round(v, 3) for k, v in result.acc.items()})


def _post_runs(cfg, signals, n_pool: int) -> dict[int, list[Run]]:
    """Per seed pair: the top ``post_fraction`` of the pool by selfcheck and as many random records, each
    post-trained on top of that seed's ``full`` model."""
    from mmsift.budget import resolve_budget

    n = resolve_budget(cfg.post_fraction, n_pool)
    out: dict[int, list[Run]] = {}
    for s in cfg.seeds:
        for name in ("selfcheck", "random"):
            kept, scores, notes = _select(signals, name, n, s, n_pool)
            out.setdefault(s, []).append(Run(f"post:{name}", cfg.post_fraction, s, kept, scores, notes))
    return out


def _kind_counts(items) -> dict:
    out: dict[str, int] = {}
    for x in items:
        out[x.kind] = out.get(x.kind, 0) + 1
    return out


def _base_info(base_dir) -> dict:
    from mmsift.train.pretrain import read_base_info

    return read_base_info(base_dir)


def _warmup_summary(proxy) -> dict:
    from mmsift.train.warmup import read_warmup_log

    info = read_warmup_log(proxy) or {}
    return {k: info.get(k) for k in ("n_samples", "epochs", "lr", "image_shuffle", "seconds")}
