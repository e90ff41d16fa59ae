"""The benchmark run, for any pool: pool -> probe -> every method x budget x seed -> train the target -> evaluate.

Inputs come from :func:`mmsift.bench.inputs.user_inputs` (``--pool``/``--eval``) or the bundled preset
(:func:`mmsift.bench.preset.prepare_preset`); nothing here knows what the pool holds. Stages (each timed): read
the pool and the evaluation items and, with a truth field, which records are bad; prepare the target's starting
checkpoint (``base``, ``scratch`` or a model directory) and encode the evaluation items and the pool once with
it; warm up the probe's proxy on the whole pool and probe it for the signals the methods (and recipe rows) need;
then for each seed pair (selection seed = training seed = s), each method and budget: select, train the target on
the subset, evaluate it.

Reference rows: ``full`` (the whole pool) and, with a truth field, ``full-clean`` (every unmarked record) and the
calibration subsets ``oracle`` / ``anti-oracle`` (:mod:`mmsift.bench.calibration`) at each budget. The preset
adds post-training rows, as in "Corrupted but Not Broken": the ``full`` model post-trained on the top
``post_fraction`` of the pool by ``selfcheck``, and on as many random records (the control). Intervals and
paired verdicts: :mod:`mmsift.bench.stats`; the referee's line per budget: :func:`mmsift.bench.report.referee`.
Everything is seeded: the same config gives the same table (wall times aside).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmsift.bench.calibration import CALIBRATION
from mmsift.bench.jobs import JobContext, TrainJob, init_worker, run_job
from mmsift.bench.inputs import DUPLICATES
from mmsift.bench.preset import QUICK_PRESET, PresetConfig
from mmsift.bench.report import REFERENCE, summarise, write_results
from mmsift.bench.tokens import check_keep, plain_label, with_twins
from mmsift.data.io import write_subset
from mmsift.data.tasks import task_of
from mmsift.exec.processes import available_cores, run_in_processes
from mmsift.train.target import TargetRecipe, scratch_recipe

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.05, 0.15, 0.3)


def post_recipe() -> TargetRecipe:
    """Post-training on 1-2% of the pool: a few passes at a lower learning rate, on top of the ``full`` model."""
    return TargetRecipe(epochs=5.0, min_steps=10, max_steps=60, batch_size=16, lr=1e-3)


@dataclass
class BenchConfig:
    out: str
    # A user's pool (None: the bundled easy-vqa preset, mmsift.bench.preset) and the file it is judged on.
    pool: str | None = None
    images: str | None = None  # default: the pool file's folder
    eval: str | None = None
    eval_images: str | None = None  # default: the eval file's folder
    truth_field: str | None = None  # records marked bad (as select --truth-field); the preset uses "bench"
    target: str = "base"  # base | scratch | a model directory
    column_by: str = "task"  # eval columns: the records' task or their question text
    task_field: str | None = None
    probe_base: str | None = None  # the probe proxy's warm-up start: bundled | none (default: none for scratch)
    scratch_recipe: TargetRecipe | None = None  # --target scratch's recipe (None: train.target.scratch_recipe())
    budgets: tuple = DEFAULT_BUDGETS
    methods: list | None = None  # None: every registered method the probe (or the judge run) can feed
    seed: int = 0  # pool, evaluation items, probe proxy
    seeds: tuple = (0, 1, 2)  # seed pairs: selection seed = training seed = s, one run per cell and seed
    # Extra seed pairs for oracle and random at every budget: the power of the sensitivity lines (not the cells).
    sensitivity_seeds: tuple = (3, 4, 5)
    device: str = "cpu"
    quick: bool = False
    judge_run: str | None = None  # a signal store with judge columns (cap_*, style_*, scale_*) for this pool
    calibration: tuple = CALIBRATION
    preset: PresetConfig = field(default_factory=PresetConfig)  # the easy-vqa preset's sizes (no --pool)
    warmup_epochs: int = 3
    warmup_min_steps: int = 300
    recipe: TargetRecipe = field(default_factory=TargetRecipe)
    post_fraction: float = 0.02  # 0: no post-training rows
    n_boot: int = 2000
    threads: int = 1  # torch threads per training job
    workers: int = 0  # training jobs at once, each in its own process; 0: one per `threads` CPU cores (1 on GPU)
    base_recipe: object = None  # mmsift.train.pretrain.BaseRecipe; None = the default (cached) base
    # Token cleaning rows (mmsift.bench.tokens): the share of answer tokens kept; None: no twin rows.
    tokens: float | None = None

    @classmethod
    def quick_config(cls, out: str) -> "BenchConfig":
        """The preset's quick grid (``mmsift bench --quick``); change fields with ``dataclasses.replace``."""
        return cls(out=out, budgets=(0.15,), quick=True, seeds=(0, 1), sensitivity_seeds=(), calibration=("oracle",),
                   post_fraction=0.0, preset=QUICK_PRESET, warmup_epochs=2, warmup_min_steps=100)


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


def defect_metrics(truth: list[dict] | None, kept_index: np.ndarray, scores_by_index: np.ndarray | None) -> dict:
    """What a subset kept of the marked records, from the truth labels (:func:`mmsift.bench.inputs.read_truth`).

    ``kept_<defect>``: share of that defect's records kept. ``corrupt_kept``: share of the marked records other
    than copies kept. ``dup_pairs_kept``: copies (exact or near) kept together with their original. ``auroc``: how
    well the method's score (higher = keep) ranks clean records above the other marked ones (copies left out); 0.5 =
    no better than chance. Without a truth field: nothing.
    """
    from mmsift.bench.inputs import corrupt_kinds
    from mmsift.metrics import auroc

    if truth is None:
        return {}
    labels = np.array([t.get("defect", "none") for t in truth], dtype=object)
    kept = np.zeros(len(truth), dtype=bool)
    kept[np.asarray(kept_index, dtype=np.int64)] = True
    out: dict = {}
    kinds = corrupt_kinds(truth)
    for d in kinds + [d for d in DUPLICATES if d in set(labels)]:
        out[f"kept_{d}"] = float(kept[labels == d].mean())
    corrupt = np.isin(labels, kinds)
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
    """Run the whole benchmark; writes ``results.{md,csv,json,html}`` under ``cfg.out`` and returns the results.

    ``cfg.pool`` None: the bundled easy-vqa preset (:mod:`mmsift.bench.preset`); else the user's pool, judged on
    ``cfg.eval`` (:mod:`mmsift.bench.evalfile`). With more than one worker the training jobs run in *spawned*
    processes, which import the calling script again: call this from under ``if __name__ == "__main__":`` in a
    script (the ``mmsift bench`` command does), or pass ``workers=1``.
    """
    from mmsift.bench.inputs import read_truth, user_inputs
    from mmsift.bench.preset import QUICK_METHODS, prepare_preset
    from mmsift.data.io import read_pool

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    stage = _stage_timer(times)
    t_all = time.perf_counter()

    # Methods and target first: an unknown name fails before minutes of pool building and training.
    judge_columns: tuple = ()
    if cfg.judge_run:
        from mmsift.store import SignalStore

        judge_columns = tuple(SignalStore(cfg.judge_run).signal_names)
    requested = cfg.methods if cfg.methods is not None else (list(QUICK_METHODS) if cfg.quick else None)
    recipes = _recipe_methods(requested)
    methods, skipped = choose_methods([m for m in requested if not m.startswith("recipe:")]
                                      if requested is not None else None, judge_columns=judge_columns)
    target_kind(cfg.target)
    check_keep(cfg.tokens)

    t0 = time.perf_counter()
    inputs = prepare_preset(cfg, out) if cfg.pool is None else user_inputs(cfg)
    pool = read_pool(inputs.pool_path)
    if pool.problems:
        first = pool.problems[0]
        raise ValueError(f"{inputs.pool_path}: {len(pool.problems)} records cannot be parsed, first: "
                         f"[{first.where()}] {first.message}")
    truth = read_truth(pool.records, inputs.truth_field) if inputs.truth_field else None
    if truth is None:
        calibration, with_truth = [], False
    else:
        calibration = (list(cfg.calibration) if cfg.methods is None
                       else [c for c in CALIBRATION if c in cfg.methods])
        with_truth = True
    post = cfg.post_fraction > 0 and with_truth and cfg.pool is None
    log.info("bench methods: %s; recipes: %s; calibration: %s; skipped: %s", methods, [n for n, _ in recipes],
             calibration, skipped)
    stage("pool_and_eval_set", t0)

    t0 = time.perf_counter()
    target = prepare_target(cfg, out, pool.records, inputs.items)
    stage("target_init", t0)
    t0 = time.perf_counter()
    encs, encoded_items = _encode(cfg, target["init"], pool.records, inputs)
    stage("encode_eval_and_pool", t0)

    probe_methods = sorted(set(m for m in methods if m != "random") | ({"selfcheck"} if post else set())
                           | _recipe_needs(recipes))
    t0 = time.perf_counter()
    proxy = _warmup(cfg, inputs, out)
    stage("probe_warmup", t0)
    if cfg.pool is not None:  # the preset's pool is what the base was made for (docs/benchmark.md)
        check_target_reads_images(cfg.target, proxy)
    t0 = time.perf_counter()
    signals, probe = _probe(cfg, inputs, proxy, out, probe_methods, ("token_loss",) if cfg.tokens else None)
    stage("probe", t0)
    t0 = time.perf_counter()
    if (pool_masks := _token_masks(cfg, inputs, proxy, out, pool.records)) is not None:
        stage("token_cleaning", t0)

    tasks = [task_of(r, cfg.task_field) for r in pool.records]
    plan = _plan(cfg, signals, truth, tasks, methods, calibration, recipes, pool, inputs, out)
    posts = _post_runs(cfg, signals, len(pool.records)) if post else {}
    (out / "subsets").mkdir(exist_ok=True)
    for run in plan + [r for rs in posts.values() for r in rs]:
        write_subset(pool, run.kept, out / "subsets" / f"{_safe(run.label)}_{run.budget:g}_seed{run.seed}.json")
    t0 = time.perf_counter()
    if pool_masks is not None:  # a twin's subset is its untokened row's (written above)
        plan = with_twins(plan, cfg.tokens, cfg.seeds, ("full-clean",) + CALIBRATION)
    jobs, context = _jobs(cfg, plan, posts, target, (encs, encoded_items), inputs, pool, pool_masks)
    runs = _train_all(cfg, plan, jobs, context, posts, truth)
    _explain_twins(runs, pool_masks, truth)
    stage("train_and_evaluate", t0)

    times["total"] = round(time.perf_counter() - t_all, 2)
    meta = _meta(cfg, inputs, pool, truth, target, methods, recipes, calibration, skipped, times, probe, proxy)
    meta["score_columns"] = list(inputs.score_columns)
    if pool_masks is not None:
        meta["tokens"] = pool_masks.meta()
    meta["_tasks"], meta["_marked"] = tasks, ([t["defect"] != "none" for t in truth] if truth else None)
    return write_results(summarise(runs, cfg, meta), runs, meta, out)


def _jobs(cfg, plan, posts, target, encoded, inputs, pool, pool_masks) -> tuple[list, JobContext]:
    """One training job per planned run (``full`` carries the post-training runs) and what every job needs;
    ``encoded``: the pool and the evaluation items encoded for the target."""
    encs, encoded_items = encoded
    # Columns outside the score (the preset's yes/no, multiple choice) are evaluated on the reference rows only,
    # to show whether the target learns them at all; every selection is scored on the score columns' items.
    jobs = [TrainJob(run.kept, run.seed, target["recipe"], all_items=run.label in REFERENCE,
                     then=[TrainJob(p.kept, p.seed, post_recipe()) for p in posts.get(run.seed, [])]
                     if run.label == "full" else [],
                     masked=pool_masks is not None and plain_label(run.label) is not None)
            for run in plan]
    context = JobContext(base_dir=str(target["init"]), device=cfg.device, threads=cfg.threads, encoded_pool=encs,
                         items=inputs.items, encoded_items=encoded_items, score_columns=tuple(inputs.score_columns),
                         records=list(pool.records) if target["recipe"].perception or pool_masks else None,
                         images_dir=str(inputs.images), token_masks=pool_masks.masks if pool_masks else None)
    return jobs, context


def _train_all(cfg, plan, jobs, context, posts, truth) -> list:
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
    return runs


def _plan(cfg, signals, truth, tasks, methods, calibration, recipes, pool, inputs, out) -> list:
    """Every trained subset: reference rows, calibration subsets, methods and recipes per budget and seed pair,
    and the extra oracle/random pairs of the sensitivity lines (every budget)."""
    from mmsift.bench.calibration import calibration_subset, full_clean

    n_pool = len(pool.records)
    plan: list[Run] = []
    for s in cfg.seeds:
        plan.append(Run("full", 1.0, s, np.arange(n_pool)))
        if truth is not None:
            plan.append(Run("full-clean", 1.0, s, full_clean(truth)))
        for b in cfg.budgets:
            for c in calibration:
                plan.append(Run(c, b, s, calibration_subset(c, truth, tasks, b, seed=s)))
            for m in methods:
                kept, scores, notes = _select(signals, m, b, s, n_pool)
                plan.append(Run(m, b, s, kept, scores, notes))
            for name, stages in recipes:
                kept, scores, notes = _recipe_select(stages, signals, b, s, n_pool, out)
                plan.append(Run(name, b, s, kept, scores, notes))
    if "oracle" in calibration:
        for b in cfg.budgets:
            for s in (x for x in cfg.sensitivity_seeds if x not in cfg.seeds):
                plan.append(Run("oracle", b, s, calibration_subset("oracle", truth, tasks, b, seed=s)))
                kept, scores, notes = _select(signals, "random", b, s, n_pool)
                plan.append(Run("random", b, s, kept, scores, notes))
    return plan


def _encode(cfg, init_dir, records, inputs):
    from mmsift.bench.evaluate import encode_items
    from mmsift.models.encode import encode_records
    from mmsift.models.loading import load_model
    from mmsift.train.loop import deterministic

    with deterministic(cfg.threads):
        init = load_model(init_dir, device=cfg.device, dtype="float32")
        encoded_items = encode_items(init, inputs.items, inputs.eval_images)
        encs, failed = encode_records(init.adapter, records, inputs.images)
    if failed:
        rid, kind, msg = failed[0][:3]
        raise ValueError(f"{len(failed)} pool records cannot be encoded for the target, first: record {rid!r}: "
                         f"{kind}: {msg}")
    return encs, encoded_items


def _warmup(cfg, inputs, out):
    from mmsift.train.loop import deterministic
    from mmsift.train.warmup import WarmupConfig, warmup

    base = cfg.probe_base or ("none" if cfg.target == "scratch" else "bundled")
    # The probe's own stages run under the same fixed thread count and deterministic ops.
    with deterministic(cfg.threads):
        return warmup(inputs.pool_path, WarmupConfig(out=str(out / "proxy"), images=str(inputs.images),
                                                     epochs=cfg.warmup_epochs, seed=cfg.seed, device=cfg.device,
                                                     base_recipe=cfg.base_recipe, progress=False, base=base,
                                                     min_steps=cfg.warmup_min_steps, task_field=cfg.task_field))


def _probe(cfg, inputs, proxy, out, probe_methods, extra_signals=None, name: str = "run"):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.train.loop import deterministic

    with deterministic(cfg.threads):
        probe = run_probe(inputs.pool_path, ProbeConfig(model=str(proxy), out=str(out / name),
                                                        images=str(inputs.images), methods=tuple(probe_methods),
                                                        signals=extra_signals, device=cfg.device, seed=cfg.seed,
                                                        overwrite=True, task_field=cfg.task_field))
    if name != "run":  # another model's run over the pool (token cleaning's base): only its store is read
        return None, probe
    signals = probe.store.load(mmap=False)
    if cfg.judge_run:
        signals = merge_judge(signals, cfg.judge_run)
    return signals, probe


def _meta(cfg, inputs, pool, truth, target, methods, recipes, calibration, skipped, times, probe, proxy) -> dict:
    from mmsift.bench.evaluate import chance_table

    items = inputs.items
    meta = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("recipe", "base_recipe")},
        "recipe": target["recipe"].to_dict(),
        "post_recipe": post_recipe().to_dict() if cfg.post_fraction > 0 and cfg.pool is None else None,
        "target": {k: v for k, v in target.items() if k != "recipe"},
        "methods": methods + [name for name, _ in recipes],
        "calibration": calibration,
        "skipped": skipped,
        "stage_seconds": times,
        "pool": {"path": str(inputs.pool_path), "n_records": len(pool.records), "truth_field": inputs.truth_field,
                 "defects": ({d: int(sum(1 for t in truth if t["defect"] == d))
                              for d in sorted({t["defect"] for t in truth}, key=lambda x: (x != "none", x))}
                             if truth is not None else {})},
        "eval": {"n_items": len(items), "per_kind": {k: int(v) for k, v in _kind_counts(items).items()},
                 "chance": chance_table(items), "summary": inputs.eval_summary},
        "probe": probe.summary_lines(),
        "warmup": _warmup_summary(proxy),
    }
    if cfg.pool is None:
        from mmsift.bench.preset import defect_rates

        meta["defect_rates"] = defect_rates(cfg)
        meta["base"] = {"path": str(target["init"]),
                        **{k: v for k, v in _base_info(target["init"]).items() if k != "words"}}
    return meta


TARGETS = ("base", "scratch")


def target_kind(target: str) -> str:
    """``base``, ``scratch`` or ``model`` (a model directory); raises for anything else."""
    if target in TARGETS:
        return target
    if (Path(target) / "config.json").is_file():
        return "model"
    raise ValueError(f"--target {target!r}: give base, scratch or a local model directory (with config.json)")


def prepare_target(cfg, out: Path, records, items) -> dict:
    """The checkpoint every subset is trained from, and the recipe: ``{"kind", "init", "recipe", ...}``."""
    import dataclasses

    from mmsift.train.pretrain import ensure_base
    from mmsift.train.target import build_scratch_init, peft_available

    kind = target_kind(cfg.target)
    if kind == "base":
        return {"kind": kind, "init": ensure_base(cfg.base_recipe, device=cfg.device), "recipe": cfg.recipe}
    if kind == "model":
        # LoRA when peft is installed (and the recipe does not set a rank), else projector + language model.
        recipe = cfg.recipe
        if not recipe.lora_rank and peft_available():
            recipe = dataclasses.replace(recipe, lora_rank=8)
        training = f"LoRA r={recipe.lora_rank} + projector" if recipe.lora_rank else "projector + language model"
        return {"kind": kind, "init": Path(cfg.target), "recipe": recipe, "training": training}
    texts = [t.text.replace("<image>", "") for r in records for t in r.turns]
    texts += [x.question for x in items] + sorted({o for x in items for o in x.options})
    texts += sorted({" " + t.text.strip() for r in records for t in r.turns if t.role == "assistant"}
                    | {" " + o for x in items for o in x.options})
    init = build_scratch_init(out / "target_init", texts=texts, seed=cfg.seed)
    return {"kind": kind, "init": init, "recipe": cfg.scratch_recipe or scratch_recipe()}


def check_target_reads_images(target: str, proxy) -> None:
    """``--target base`` is refused when the warm-up (the base tuned on this pool, tower frozen) does not read
    this pool's images: every subset would then be judged on what its text teaches."""
    from mmsift.train.warmup import SHUFFLE_MIN, read_warmup_log, reads_images

    if target != "base":
        return
    test = (read_warmup_log(proxy) or {}).get("image_shuffle") or {}
    if test.get("n_records") and not reads_images(test):
        raise ValueError(
            f"--target base does not read this pool's images: after the warm-up on the pool, swapping images "
            f"between {test['n_records']} records moves the answer loss by {test['increase']:+.3f} (below "
            f"{SHUFFLE_MIN}); the bundled base was pretrained on shapes, colours and printed words. Use --target "
            "scratch (a model that learns the images from each subset) or --target MODEL_DIR")


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _recipe_stages(path: str) -> list[dict]:
    """The checked clean/dedup/select stages of a recipe file (its pool, proxy and probe settings are the bench's;
    a trailing tokens stage is not run by the bench)."""
    from mmsift.recipe import check_stages, read_recipe_file

    return [st for st in check_stages(read_recipe_file(path).get("stages")) if "tokens" not in st]


def _recipe_needs(recipes) -> set[str]:
    return {next(iter(st.values()))["method"] for _, stages in recipes for st in stages}


def _recipe_select(stages: list[dict], signals, budget, seed: int, n_pool: int, out: Path):
    """A recipe's chain at the bench's budget: its select stage keeps ``budget`` of the *pool* (a count), so the
    row is compared with random at the same number of records."""
    from mmsift.budget import resolve_budget
    from mmsift.recipe import run_chain

    n = resolve_budget(budget, n_pool)
    stages = stages[:-1] + [{"select": {**stages[-1]["select"], "budget": int(n)}}]
    chain = run_chain(out / "run", stages, seed=seed)
    sel = chain.selection
    scores = np.full(n_pool, np.nan)
    notes = [f"{st['stage']} {st['method']}: {st['in']} -> {st['out']}" for st in chain.stages] + list(sel.notes)
    if len(sel.index) < n:
        notes.append(f"the chain kept {len(sel.index)} records, fewer than the budget's {n}")
    return np.asarray(sel.index, dtype=np.int64), scores, notes


def _recipe_methods(requested) -> list[tuple[str, list[dict]]]:
    """``recipe:PATH`` entries of the method list: (row label, the recipe's checked stages), read once; the file
    must exist."""
    out = []
    for m in requested or ():
        if m.startswith("recipe:"):
            path = m[len("recipe:"):]
            if not Path(path).is_file():
                raise ValueError(f"--methods {m}: no recipe file {path!r}")
            out.append((f"recipe:{Path(path).stem}", _recipe_stages(path)))
    return out


def default_workers(device: str, threads: int) -> int:
    """Worker processes for the training jobs: one per ``threads`` CPU cores on CPU, one on a GPU."""
    return 1 if device != "cpu" else max(1, available_cores() // max(1, threads))


def _job_steps(job: TrainJob) -> int:
    return job.recipe.steps_for(len(job.kept)) + sum(_job_steps(j) for j in job.then)


def _fill_row(run: Run, result, truth) -> None:
    run.correct = result.correct
    run.row = {"method": run.label, "budget": run.budget, "seed": run.seed, "n_kept": int(len(run.kept)),
               "steps": result.steps, **result.acc, **defect_metrics(truth, run.kept, run.scores),
               "train_loss": result.train_loss, "train_s": result.train_s, "eval_s": result.eval_s,
               **{f"train_{k}": v for k, v in result.token_masks.items()}}
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


def _token_masks(cfg, inputs, proxy, out, records):
    """None without ``cfg.tokens``; else token cleaning of the whole pool: the model before the warm-up probed for
    per-token losses, ranked against the probe run (the warmed-up proxy) by :func:`mmsift.bench.tokens.clean_pool`."""
    from mmsift.bench.tokens import before_model, clean_pool
    from mmsift.train.loop import deterministic

    if cfg.tokens is None:
        return None
    with deterministic(cfg.threads):
        base = before_model(proxy, out, base_recipe=cfg.base_recipe, device=cfg.device, seed=cfg.seed)
    _, base_probe = _probe(cfg, inputs, base, out, (), ("token_loss",), name="token_base_run")
    return clean_pool(base_probe.store.root, out / "run", records, cfg.tokens, out, seed=cfg.seed)


def _explain_twins(runs, pool_masks, truth) -> None:
    """Each twin's row gets what the masks took from its records (:func:`mmsift.bench.tokens.masked_metrics`)."""
    from mmsift.bench.tokens import masked_metrics

    if pool_masks is None:
        return
    labels = [t["defect"] for t in truth] if truth is not None else None
    for run in runs:
        if plain_label(run.label) is not None:
            run.row.update(masked_metrics(run.kept, pool_masks.n_tokens, pool_masks.n_masked, labels))


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
