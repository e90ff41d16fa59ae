"""Recipes: one YAML file describes a whole run (pool, proxy, probe settings, a chain of stages), and reruns it.

```yaml
pool: data/pool.json            # required: a .json/.jsonl/.parquet file, a folder of Parquet shards or a glob
images: data/images             # default: the pool file's folder
seed: 0
proxy:                          # a local model, or a warm-up of the bundled proxy on the pool
  warmup: {n_samples: 256, epochs: 3}
probe: {batch_size: 8, device: cpu}
stages:
  - clean: {method: selfcheck, drop: 0.10}       # drop the worst-scored 10% of what enters the stage
  - dedup: {method: semdedup, params: {eps: 0.05}}
  - select: {method: datatailor, budget: 0.15}   # keep 15% of what enters the stage (or a count: 5000)
  - tokens: {keep: 0.6}                          # optional, last: token cleaning of the kept records
output: {subset: subset.json, scores: scores.csv, html: report.html}
```

Relative paths are relative to the recipe file. Every key is checked before any work starts (unknown keys,
unknown methods, bad budgets or parameters, a dedup stage whose method cannot dedup, a missing pool). ``run``
writes the output folder: ``recipe.resolved.yaml`` (every default filled in, mmsift and library versions, the
pool's SHA-256, seeds), the proxy, the probe run and the selection outputs. Running the resolved file again gives
the same ids; it refuses to run when the pool's hash no longer matches. :func:`run_chain` is the same chain on an
existing probe run, from Python.

A ``tokens`` stage after ``select`` cleans the kept records' answer tokens (``mmsift tokens``): the probe also
stores per-token losses (the reference: the proxy), the kept records are probed with ``base`` (default: the
pretrained base the warm-up started from; required with ``proxy.model``), and the masks go beside the subset in
``<subset>.tokens.jsonl`` (keys: ``keep``, ``rounds``, ``base``, ``inline``, ``update_epochs``, ``update_lr``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.yaml"
# The same defaults as `mmsift warmup` (WarmupConfig): the whole pool, 3 passes but at least 300 steps, the learning
# rate of the base the warm-up starts from (None: 1e-3 from the pretrained base, 3e-3 with base none).
WARMUP_DEFAULTS = {"n_samples": None, "epochs": 3, "min_steps": 300, "lr": None, "batch_size": 16, "base": "auto",
                   "holdout": 0.1}
PROBE_DEFAULTS = {"device": "cpu", "dtype": None, "batch_size": 8, "layer": -2, "shard_size": 256,
                  "vector_dim": None, "max_length": None, "num_workers": None, "max_pixels": None,
                  "max_image_tokens": None, "max_batch_tokens": None}
OUTPUT_DEFAULTS = {"subset": "subset.json", "scores": "scores.csv", "html": "report.html"}
STAGE_KEYS = {"clean": {"method", "drop", "params"}, "dedup": {"method", "params"},
              "select": {"method", "budget", "params", "balance_tasks"},
              "tokens": {"keep", "rounds", "base", "inline", "update_epochs", "update_lr"}}
TOKENS_DEFAULTS = {"keep": 0.6, "rounds": 1, "base": None, "inline": False, "update_epochs": 1, "update_lr": 1e-3}
TOP_KEYS = {"pool", "images", "task_field", "seed", "out", "proxy", "probe", "stages", "output",
            "resolved"}


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key and the problem."""


def _check_keys(where: str, given: dict, allowed: set) -> None:
    if not isinstance(given, dict):
        raise RecipeError(f"{where} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _budget(where: str, value):
    from mmsift.budget import resolve_budget

    if isinstance(value, str):
        from mmsift.budget import parse_budget

        try:
            value = parse_budget(value) if not value.endswith("%") else float(value[:-1]) / 100
        except ValueError as e:
            raise RecipeError(f"{where}: {e}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"{where}: budget must be a fraction like 0.15 or a count like 5000, got {value!r}")
    try:
        resolve_budget(value, 10**9)
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from None
    return value


def _method(where: str, stage: dict, seed: int, *, dedup: bool = False) -> None:
    from mmsift.scorers import SCORERS, make_scorer
    from mmsift.scorers.base import Scorer

    name = stage.get("method")
    if name not in SCORERS:
        raise RecipeError(f"{where}: unknown method {name!r}; known: {', '.join(sorted(SCORERS))}")
    if not isinstance(stage.get("params", {}), dict):
        raise RecipeError(f"{where}: params must be a mapping")
    try:
        scorer = make_scorer(name, stage.get("params"), random_state=seed)
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from None
    if dedup and type(scorer).keep_mask is Scorer.keep_mask:
        raise RecipeError(f"{where}: method {name!r} cannot be used as a dedup step (it has no keep mask)")


def check_stages(stages, seed: int = 0) -> list[dict]:
    """Check a chain of stages and fill in their defaults; raises :class:`RecipeError`."""
    stages = copy.deepcopy(stages)
    if not isinstance(stages, list) or not stages:
        raise RecipeError("stages: a non-empty list is required, e.g. [{select: {method: datatailor, budget: 0.15}}]")
    tokens = _tokens_stage(stages)
    if tokens is not None:
        return check_stages(stages[:-1], seed) + [tokens]
    for k, stage in enumerate(stages):
        where = f"stages[{k}]"
        if not isinstance(stage, dict) or len(stage) != 1 or next(iter(stage)) not in STAGE_KEYS:
            raise RecipeError(f"{where}: each stage is one of {sorted(STAGE_KEYS)} with its settings, got {stage!r}")
        kind, body = next(iter(stage.items()))
        where = f"{where}.{kind}"
        _check_keys(where, body, STAGE_KEYS[kind])
        body.setdefault("params", {})
        _method(where, body, seed, dedup=kind == "dedup")
        if kind == "clean":
            drop = body.get("drop")
            if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
                raise RecipeError(f"{where}: drop must be a fraction in [0, 1), got {drop!r}")
        if kind == "select":
            if "budget" not in body:
                raise RecipeError(f"{where}: budget is required")
            body["budget"] = _budget(where, body["budget"])
            body.setdefault("balance_tasks", False)
    if next(iter(stages[-1])) != "select":
        raise RecipeError("stages: the last stage must be a select stage")
    if sum(next(iter(s)) == "select" for s in stages) != 1:
        raise RecipeError("stages: exactly one select stage is allowed (the last one)")
    return stages


def _tokens_stage(stages: list) -> dict | None:
    """The checked trailing ``tokens`` stage (defaults filled in), or None; a ``tokens`` stage elsewhere is an
    error."""
    where = [k for k, st in enumerate(stages) if isinstance(st, dict) and "tokens" in st]
    if not where:
        return None
    if where != [len(stages) - 1] or len(stages) < 2:
        raise RecipeError("stages: a tokens stage comes once, last, after the select stage")
    body = stages[-1]["tokens"] or {}
    where_ = f"stages[{len(stages) - 1}].tokens"
    if len(stages[-1]) != 1:
        raise RecipeError(f"{where_}: each stage is one of {sorted(STAGE_KEYS)} with its settings")
    _check_keys(where_, body, STAGE_KEYS["tokens"])
    body = {**TOKENS_DEFAULTS, **body}
    keep, rounds = body["keep"], body["rounds"]
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise RecipeError(f"{where_}: keep must be a share in (0, 1], got {keep!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise RecipeError(f"{where_}: rounds must be an integer >= 1, got {rounds!r}")
    return {"tokens": body}


@dataclass
class Recipe:
    """A checked recipe with every default filled in (``data``), and the folder its relative paths start from."""

    data: dict
    base: Path

    def path(self, key: str) -> Path | None:
        value = self.data.get(key)
        return None if value is None else (self.base / value if not Path(value).is_absolute() else Path(value))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(next(iter(s.values()))["method"] for s in self.data["stages"] if "tokens" not in s))

    @property
    def tokens(self) -> dict | None:
        """The token cleaning stage's settings, or None."""
        last = self.data["stages"][-1]
        return last.get("tokens")


def resolve(raw: dict, base: str | Path = ".") -> Recipe:
    """Check ``raw`` (a parsed recipe) and fill in every default; raises :class:`RecipeError`."""
    from mmsift.data.io import pool_exists

    data = copy.deepcopy(raw)
    _check_keys("recipe", data, TOP_KEYS)
    base = Path(base)
    if not data.get("pool"):
        raise RecipeError("recipe: 'pool' is required")
    seed = data.setdefault("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError(f"seed must be an integer, got {seed!r}")
    for key in ("images", "task_field", "out"):
        data.setdefault(key, None)
    proxy = data.setdefault("proxy", {"warmup": {}})
    _check_keys("proxy", proxy, {"model", "warmup"})
    if ("model" in proxy) == ("warmup" in proxy):
        raise RecipeError("proxy: give either 'model' (a local model folder) or 'warmup' (train the bundled proxy)")
    if "warmup" in proxy:
        proxy["warmup"] = proxy["warmup"] or {}
        _check_keys("proxy.warmup", proxy["warmup"], set(WARMUP_DEFAULTS))
        proxy["warmup"] = {**WARMUP_DEFAULTS, **proxy["warmup"]}
    data["probe"] = data.get("probe") or {}
    _check_keys("probe", data["probe"], set(PROBE_DEFAULTS))
    data["probe"] = {**PROBE_DEFAULTS, **data["probe"]}
    data["output"] = data.get("output") or {}
    _check_keys("output", data["output"], set(OUTPUT_DEFAULTS))
    data["output"] = {**OUTPUT_DEFAULTS, **data["output"]}
    data["stages"] = check_stages(data.get("stages"), seed)
    recipe = Recipe(data, base)
    if not pool_exists(recipe.path("pool")):
        raise RecipeError(f"pool: {recipe.path('pool')} not found")
    if data["images"] is not None and not recipe.path("images").is_dir():
        raise RecipeError(f"images: {recipe.path('images')} is not a folder")
    if "model" in proxy and not (base / proxy["model"]).is_dir():
        raise RecipeError(f"proxy.model: {base / proxy['model']} is not a folder")
    tokens = recipe.tokens
    if tokens and tokens["base"] is None and "model" in proxy:
        raise RecipeError("stages: the tokens stage needs 'base' (the model before the updates) with proxy.model")
    if tokens and tokens["base"] is not None and not (base / tokens["base"]).is_dir():
        raise RecipeError(f"stages: tokens.base {base / tokens['base']} is not a folder")
    return recipe


def read_recipe_file(path: str | Path) -> dict:
    """A recipe YAML file as read, unchecked; ``RecipeError`` when it cannot be read or is not a mapping."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys (pool, stages, ...)")
    return raw


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe YAML file (relative paths start at its folder)."""
    return resolve(read_recipe_file(path), Path(path).resolve().parent)


def pool_hash(recipe: Recipe) -> str:
    """SHA-256 over the pool's file(s), in order."""
    from mmsift.data.parquet import parquet_sources

    path = recipe.path("pool")
    files = parquet_sources(path) or [str(path)]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---- the chain -------------------------------------------------------------------------------------------------
@dataclass
class ChainResult:
    """The final selection and, per stage, how many records went in and came out."""

    selection: object  # mmsift.select.Selection over the records that reached the select stage
    signals: object  # Signals of those records
    stages: list[dict] = field(default_factory=list)
    dropped: list[tuple] = field(default_factory=list)  # (id, pool index, task, "clean (selfcheck)") before select


# A clean or dedup stage that removes more than this share of what enters it stops the run; more than WARN_SHARE
# is a warning. A chain that keeps 2 records of 693 is a recipe that does not fit its pool, not a selection.
STOP_SHARE, WARN_SHARE = 0.9, 0.5


def _check_removed(row: dict, k: int) -> None:
    """Stop when a clean or dedup stage removed nearly everything; mark (and log) a stage that removed most."""
    n_in, n_out = row["in"], row["out"]
    share = 1.0 - n_out / n_in if n_in else 0.0
    what = f"stages[{k}].{row['stage']} ({row['method']}) removed {n_in - n_out} of {n_in} records ({share:.1%})"
    hint = (": lower params.eps (the cosine distance under which two records count as duplicates) or drop the "
            "stage" if row["stage"] == "dedup" else ": lower drop")
    if share > STOP_SHARE:
        raise RecipeError(f"{what}, nearly everything: the selection after it would mean nothing; the settings do "
                          f"not fit this pool{hint}")
    if share > WARN_SHARE:
        row["warning"] = f"{what}, more than half: check that the settings fit this pool{hint}"
        log.warning("%s", row["warning"])


def run_chain(run: str | Path, stages: list[dict], *, seed: int = 0) -> ChainResult:
    """Apply ``stages`` (recipe form: ``[{"clean": {...}}, {"dedup": {...}}, {"select": {...}}]``) to a probe run.

    ``clean`` keeps the best-scored ``1 - drop`` of what enters it, ``dedup`` keeps the method's keep mask, and
    ``select`` keeps ``budget`` of what enters it. Budgets are relative to each stage's input.
    """
    from mmsift.scorers import make_scorer
    from mmsift.select import select_rows
    from mmsift.store import SignalStore

    stages = [s for s in check_stages(stages, seed) if "tokens" not in s]  # token cleaning runs after the chain
    store = SignalStore(run)
    scorers = [(kind, body, make_scorer(body["method"], body.get("params"), random_state=seed))
               for kind, body in (next(iter(s.items())) for s in stages)]
    needed = set()
    for _, _, scorer in scorers:
        needed |= set(scorer.requires) | (set(scorer.optional) & set(store.signal_names))
    signals = store.load(sorted(needed))
    log_rows, dropped = [], []
    for kind, body, scorer in scorers:
        n_in = len(signals)
        if kind == "clean":
            sel = select_rows(signals, scorer, 1.0 - float(body["drop"]) if body["drop"] else 1.0)
            rows = np.asarray(sel.rows)
        elif kind == "dedup":
            scorer.check_signals(signals)
            rows = np.flatnonzero(scorer.keep_mask(signals))
        else:
            sel = select_rows(signals, scorer, body["budget"], balance_tasks=bool(body.get("balance_tasks")))
            log_rows.append({"stage": kind, "method": body["method"], "in": n_in, "out": len(sel.rows)})
            return ChainResult(selection=sel, signals=signals, stages=log_rows, dropped=dropped)
        gone = np.setdiff1d(np.arange(n_in), rows)
        label = f"{kind} ({body['method']})"
        dropped.extend((str(signals.ids[r]), int(signals.index[r]), str(signals.tasks[r]), label) for r in gone)
        signals = signals.take(rows)
        log_rows.append({"stage": kind, "method": body["method"], "in": n_in, "out": len(signals)})
        _check_removed(log_rows[-1], len(log_rows) - 1)
    raise RecipeError("stages: the last stage must be a select stage")


# ---- a whole run -----------------------------------------------------------------------------------------------
@dataclass
class RecipeResult:
    out: Path
    resolved: Path
    subset: Path
    ids: list[str]
    report: dict
    lines: list[str] = field(default_factory=list)


def _absolute(recipe: Recipe) -> dict:
    """The recipe's data with every path absolute, so the resolved copy runs from wherever it is."""
    data = copy.deepcopy(recipe.data)
    for key in ("pool", "images"):
        if data.get(key) is not None:
            data[key] = str(recipe.path(key).resolve()) if "*" not in str(data[key]) else str(recipe.path(key))
    if "model" in data["proxy"]:
        data["proxy"]["model"] = str((recipe.base / data["proxy"]["model"]).resolve())
    tokens = data["stages"][-1].get("tokens")
    if tokens and tokens["base"] is not None:
        tokens["base"] = str((recipe.base / tokens["base"]).resolve())
    return data


def run_recipe(recipe: Recipe, *, out: str | Path | None = None) -> RecipeResult:
    """Run a checked recipe: warm-up (or the given model) -> probe -> stages -> subset, scores, HTML report."""
    import yaml

    from mmsift.data.io import read_pool
    from mmsift.compat import installed_versions
    from mmsift.explain import score_meaning, task_notes
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.report import write_scores, write_selection

    data = recipe.data
    out = Path(out) if out is not None else (recipe.path("out") or Path("mmsift-run"))
    digest = pool_hash(recipe)
    pinned = (data.get("resolved") or {}).get("pool_sha256")
    if pinned and pinned != digest:
        raise RecipeError(f"pool: {recipe.path('pool')} changed since this recipe was resolved (SHA-256 {digest[:12]}"
                          f"..., the recipe pins {pinned[:12]}...); the same ids cannot be promised")
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    pool_path, images = recipe.path("pool"), recipe.path("images")
    seed, probe = data["seed"], data["probe"]
    if "warmup" in data["proxy"]:
        from mmsift.train.warmup import WarmupConfig, warmup

        model = warmup(pool_path, WarmupConfig(out=str(out / "proxy"), images=None if images is None else str(images),
                                               seed=seed, device=probe["device"], task_field=data["task_field"],
                                               **data["proxy"]["warmup"]))
        lines.append(f"warmup: trained the bundled proxy -> {model}")
        lines.extend(_warmup_lines(model))
    else:
        model = recipe.base / data["proxy"]["model"]
    config = ProbeConfig(model=str(model), out=str(out / "run"), images=None if images is None else str(images),
                         methods=tuple(recipe.methods), seed=seed, task_field=data["task_field"], overwrite=True,
                         signals=("token_loss",) if recipe.tokens else None, **probe)
    result = run_probe(pool_path, config)
    lines.append(f"probe: {result.n_probed} of {result.n_records} records -> {out / 'run'}")
    chain = run_chain(out / "run", data["stages"], seed=seed)
    for s in chain.stages:
        lines.append(f"{s['stage']} ({s['method']}): {s['in']} -> {s['out']} records")
        if s.get("warning"):
            lines.append(f"warning: {s['warning']}")
    final = next(st["select"] for st in data["stages"] if "select" in st)
    pool = read_pool(pool_path, task_field=data["task_field"])
    resolved_path = out / RESOLVED
    settings = {"recipe": str(resolved_path), "stages": data["stages"], "seed": seed, "versions": installed_versions(),
                "command": f"mmsift run {resolved_path}"}
    outputs = data["output"]
    subset = out / outputs["subset"]
    extra = {"stages": chain.stages, "n_pool": result.n_records}
    if "warmup" in data["proxy"] and _warmup_used(model)["warning"]:
        extra["proxy_warning"] = _warmup_used(model)["warning"]
    report = write_selection(chain.selection, pool, subset, skipped=result.store.manifest.get("skipped", []),
                             extra=extra, settings=settings)
    meaning = score_meaning(final["method"], final["params"])
    if outputs.get("scores"):
        write_scores(chain.selection, chain.signals.ids, chain.signals.index, chain.signals.tasks,
                     out / outputs["scores"], meaning=meaning, dropped_before=chain.dropped,
                     select_label=f"select ({final['method']})")
    cleaned = _token_stage(recipe, out, subset, images, lines) if recipe.tokens else None
    if outputs.get("html"):
        from mmsift.html_report import write_html_report

        write_html_report(out / outputs["html"], selection=chain.selection, store=result.store, pool=pool,
                          report=report, meaning=meaning, images=result.store.manifest.get("images"),
                          rows_index=chain.signals.index, token_entries=cleaned.entries if cleaned else None)
    resolved = _absolute(recipe)
    resolved["out"] = str(out.resolve())
    resolved["resolved"] = {"pool_sha256": digest, "versions": installed_versions(), "n_kept": len(chain.selection.rows),
                            "stages": chain.stages}
    if "warmup" in data["proxy"]:
        resolved["resolved"]["warmup"] = _warmup_used(model)
    if cleaned is not None:
        resolved["resolved"]["tokens"] = {"n_ranked": cleaned.n_ranked, "n_kept": cleaned.n_kept}
    resolved_path.write_text("# Written by mmsift run: every default filled in. `mmsift run` this file to redo it.\n"
                             + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")
    lines.append(f"kept {len(chain.selection.rows)} records ({meaning.sentence}) -> {subset}")
    lines.extend(f"note: {n}" for n in task_notes(chain.selection.kept_per_task, chain.selection.total_per_task))
    lines.append(f"resolved recipe -> {resolved_path}")
    return RecipeResult(out=out, resolved=resolved_path, subset=subset, ids=list(chain.selection.ids), report=report,
                        lines=lines)


def _warmup_used(model) -> dict:
    """What the warm-up actually used (base, learning rate, steps), from its ``warmup.json``."""
    from mmsift.train.warmup import read_warmup_log

    info = read_warmup_log(model) or {}
    base = info.get("base")
    return {"base": "none" if base == "none" else f"bundled ({(base or {}).get('key')})",
            "switched_from_bundled": "switched_from" in info, "lr": info.get("lr"),
            "steps": info.get("steps"), "step_kept": info.get("step_kept"), "min_steps": info.get("min_steps"),
            "image_shuffle_increase": (info.get("image_shuffle") or {}).get("increase"),
            "warning": info.get("warning")}


def _warmup_lines(model) -> list[str]:
    used = _warmup_used(model)
    lines = [f"warmup: base {used['base']}, lr {used['lr']}, {used['steps']} steps (kept step {used['step_kept']}), "
             f"image-shuffle increase {used['image_shuffle_increase']}"]
    if used["warning"]:
        lines.append(f"warning: {used['warning']}")
    return lines


def _token_stage(recipe: Recipe, out: Path, subset: Path, images, lines: list[str]):
    """The tokens stage: probe the kept records with the base, rank their tokens against the proxy's run, write
    the sidecar beside the subset (and the masks inline on request). Returns the TokenCleanResult."""
    from mmsift.data.io import read_pool
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.token_cleaning import TokenCleanConfig, clean_tokens, write_token_outputs

    data, tokens = recipe.data, recipe.tokens
    probe = data["probe"]
    if tokens["base"] is not None:
        base = recipe.base / tokens["base"]
    else:
        from mmsift.train.pretrain import ensure_base

        base = ensure_base(None, device=probe["device"])  # what the warm-up started from
    base_run = run_probe(subset, ProbeConfig(model=str(base), out=str(out / "run-base"),
                                             images=None if images is None else str(images), signals=("token_loss",),
                                             seed=data["seed"], task_field=data["task_field"], overwrite=True, **probe))
    config = TokenCleanConfig(keep=tokens["keep"], rounds=tokens["rounds"], work=str(out / "tokens-work"),
                              update_epochs=tokens["update_epochs"], update_lr=tokens["update_lr"],
                              batch_size=probe["batch_size"], seed=data["seed"], device=probe["device"])
    pool = read_pool(subset, task_field=data["task_field"])
    cleaned = clean_tokens(base_run.store.root, out / "run", pool.records, config, pool=pool)
    paths = write_token_outputs(pool, pool.records, cleaned, subset, inline=bool(tokens["inline"]),
                                settings={"stage": {"tokens": tokens}, "base_run": str(out / "run-base"),
                                          "reference_run": str(out / "run")})
    lines.extend(f"tokens: {line}" for line in cleaned.summary_lines())
    lines.append(f"tokens: kept {cleaned.n_kept} of {cleaned.n_ranked} answer tokens -> {paths['sidecar']}")
    return cleaned
