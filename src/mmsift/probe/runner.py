"""Running the probe over a pool: validation, fixed shards with completion markers, batching, the final merge.

The good records (pool order) are cut into shards of ``shard_size``. Each shard is one call of
:func:`probe_shard` on a picklable :class:`ShardSpec`, so any executor can run it (``exec/local.py`` runs them
in-process one after the other; a Ray executor runs the same function in actors). A shard writes its rows
with :class:`mmsift.store.ShardWriter`, whose ``.done`` marker is written last, so a killed run redoes only
unfinished shards. Inside a shard, samples are sorted by length (longest first) into batches and put back in
pool order afterwards; every signal is computed per sample under its own attention mask, so batching and
padding do not change results beyond floating-point reduction order.

A record that fails while being processed (image that does not decode, conversation the template cannot render,
longer than the model's context, an error in the forward pass) is reported and counted, never written, and never
stops the run; a failing batch is retried one sample at a time to find the culprit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmsift.data.records import Record
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, FailureGuard
from mmsift.store import MANIFEST, SCALARS, SHARDS, ShardWriter, SignalStore, StoreError

log = logging.getLogger(__name__)

PLAN = "plan.json"


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a shard needs besides its records (picklable, shared by all shards of a run)."""

    model: str
    signals: tuple[str, ...]
    images: str | None
    device: str = "cpu"
    dtype: str | None = None
    layer: int = -2
    feature_layers: tuple[int, ...] | None = None
    vector_dim: int | None = None
    seed: int = 0
    batch_size: int = 8
    num_workers: int | None = None  # None: 0 on CPU, up to 8 worker processes on GPU
    max_length: int | None = None
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE

    def fingerprint(self) -> dict:
        """What decides the values in the store (batch size, workers and device only change rounding)."""
        d = asdict(self)
        for k in ("batch_size", "num_workers", "device", "images", "max_failure_rate"):
            d.pop(k)
        d["model"] = str(Path(self.model).resolve())
        d["signals"] = list(self.signals)
        return d


@dataclass
class ShardSpec:
    out: str
    shard: int
    records: list[Record]
    config: ProbeConfig


@dataclass
class ProbeResult:
    store: SignalStore
    n_records: int
    n_probed: int
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (record_id, kind, message)
    n_skipped: int = 0
    seconds: float = 0.0
    resumed_shards: int = 0

    def summary_lines(self) -> list[str]:
        lines = [f"probed {self.n_probed} of {self.n_records} records into {self.store.root} "
                 f"({self.seconds:.1f}s{f', {self.resumed_shards} shards reused' if self.resumed_shards else ''})",
                 f"signals: {', '.join(self.store.signal_names)}"]
        man = self.store.manifest
        if man.get("pool_format"):
            layouts = "; ".join(f"{k} ({v})" for k, v in (man.get("pool_layouts") or {}).items())
            lines.append(f"pool: {man['pool_format']}" + (f", detected format: {layouts}" if layouts else ""))
        if self.n_skipped:
            kinds: dict[str, int] = {}
            for _, kind, _ in self.skipped:
                kinds[kind] = kinds.get(kind, 0) + 1
            lines.append(f"skipped {self.n_skipped} records: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        return lines


# ---- one shard --------------------------------------------------------------------------------------------------
_LOADED: dict = {}


def get_model(config: ProbeConfig):
    """The loaded model for ``config``, kept for the next shard in the same process."""
    from mmsift.probe.models import load_model

    root = Path(config.model).resolve()
    # The files' change times are part of the key: a model retrained into the same folder is loaded again.
    stamp = max((p.stat().st_mtime_ns for p in root.iterdir() if p.is_file()), default=0)
    key = (str(root), stamp, config.device, config.dtype)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_model(config.model, device=config.device, dtype=config.dtype)
    return _LOADED[key]


def _failure_file(out: str, shard: int) -> Path:
    return Path(out) / SHARDS / f"shard-{shard:05d}.failed.json"


def probe_shard(spec: ShardSpec) -> None:
    """Compute the signals of one shard and write them with their completion marker."""
    import torch
    from tqdm.auto import tqdm

    from mmsift.probe.dataset import ProbeDataset, as_list, variants_for
    from mmsift.probe.models import cpu_threads_for
    from mmsift.probe.perturb import instruction_format, is_multiple_choice
    from mmsift.probe.signals import SignalOptions, hidden_layers_needed

    cfg = spec.config
    lm = get_model(cfg)
    adapter, model = lm.adapter, lm.model
    opts = SignalOptions(layer=cfg.layer, feature_layers=cfg.feature_layers, vector_dim=cfg.vector_dim,
                         seed=cfg.seed)
    # An out-of-range --layer is a setting error for the whole run, not a failure of each record: raise it here.
    hidden_layers_needed(cfg.signals, adapter.num_layers(model), opts)
    max_length = cfg.max_length or int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
    variants = variants_for(cfg.signals)
    images_dir = cfg.images
    ds = ProbeDataset(spec.records, adapter, images_dir, variants=variants, seed=cfg.seed,
                      max_length=max_length or None)

    failures: dict[int, tuple[str, str]] = {}
    guard = FailureGuard("probe", log_dir=Path(spec.out), max_failure_rate=cfg.max_failure_rate)

    def fail(pos: int, kind: str, message: str, error: BaseException | None = None, tb: str | None = None) -> None:
        failures[pos] = (kind, message)
        guard.failed(spec.records[pos].id, f"{kind}: {message}", error, tb)

    lengths = []
    for i, rec in enumerate(spec.records):
        try:
            lengths.append(adapter.sort_length(rec.turns, len(rec.images)))
        except Exception as e:  # reported per record below; the record is not processed
            fail(i, "encode_error", f"{type(e).__name__}: {e}", e)
            lengths.append(0)
    order = [i for i in sorted(range(len(spec.records)), key=lambda i: -lengths[i]) if i not in failures]
    batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    workers = cfg.num_workers
    if workers is None:
        # On GPU the per-sample CPU work (decode, template, tokenise) must overlap the forward passes.
        workers = 0 if str(cfg.device) == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=as_list, num_workers=workers,
                                         prefetch_factor=4 if workers else None, persistent_workers=False)
    rows: dict[int, dict] = {}
    with torch.inference_mode(), cpu_threads_for(model, lm.device):
        for items in tqdm(loader, total=len(batches), desc=f"shard {spec.shard}", leave=False, unit="batch"):
            good = []
            for it in items:
                if "error" in it:
                    fail(it["pos"], *it["error"], tb=it.get("traceback"))
                else:
                    good.append(it)
            n_rows = len(rows)
            _run_items(adapter, model, good, cfg, opts, rows, fail, lm.device, _torch_dtype(model))
            guard.ok(len(rows) - n_rows)
            guard.check()
    guard.check(final=True)

    keep = [i for i in range(len(spec.records)) if i in rows]
    columns: dict[str, list] = {}
    for i in keep:
        rec = spec.records[i]
        r = rows[i]
        r["n_rounds"] = rec.n_rounds
        r["n_images"] = len(rec.images)
        if "is_mc" in cfg.signals:
            r["is_mc"] = int(is_multiple_choice(rec.turns))
        if "fmt" in cfg.signals:
            r["fmt"] = instruction_format(rec.turns, len(rec.images))
        for k in cfg.signals:
            # Variants that do not apply to a record (loss_sym of a non-MC item...) are NaN.
            columns.setdefault(k, []).append(r.get(k, np.nan))
    arrays = _to_arrays(columns, cfg, adapter, model)
    recs = [spec.records[i] for i in keep]
    fails = [{"id": spec.records[i].id, "index": spec.records[i].index, "kind": k, "message": m}
             for i, (k, m) in sorted(failures.items())]
    _failure_file(spec.out, spec.shard).write_text(json.dumps(fails, ensure_ascii=False) + "\n", encoding="utf-8")
    ShardWriter(spec.out).write(spec.shard, ids=[r.id for r in recs], index=[r.index for r in recs],
                                tasks=[r.task or "all" for r in recs], columns=arrays)
    for f in fails:
        log.warning("record %s (index %d) not probed: %s: %s", f["id"], f["index"], f["kind"], f["message"])


def _torch_dtype(model):
    return next(model.parameters()).dtype


def _run_items(adapter, model, items, cfg, opts, rows, fail, device, dtype) -> None:
    """Signals of a list of encoded items; a failing batch is retried one item at a time, and an item that fails
    alone is reported with ``fail(pos, kind, message, error)``."""
    if not items:
        return
    try:
        for pos, values in zip([it["pos"] for it in items], _batch(adapter, model, items, cfg, opts, device, dtype)):
            rows[pos] = values
    except Exception as e:
        if len(items) == 1:
            fail(items[0]["pos"], "probe_error", f"{type(e).__name__}: {e}", e)
            return
        log.info("batch of %d failed (%s); retrying one by one", len(items), e)
        for it in items:
            _run_items(adapter, model, [it], cfg, opts, rows, fail, device, dtype)


def _batch(adapter, model, items, cfg, opts, device, dtype) -> list[dict]:
    from mmsift.probe.signals import answer_loss, batch_signals

    batch = adapter.collate([it["enc"] for it in items]).to(device, dtype)
    sig = batch_signals(adapter, model, batch, cfg.signals, opts)
    out = [{k: v[r] for k, v in sig.items() if k in cfg.signals or k in ("loss", "n_answer_tokens", "n_tokens")}
           for r in range(len(items))]
    for name in sorted({v for it in items for v in it["variants"]}):
        which = [r for r, it in enumerate(items) if name in it["variants"]]
        vb = adapter.collate([items[r]["variants"][name] for r in which]).to(device, dtype)
        losses = answer_loss(adapter, model, vb)
        for r, value in zip(which, losses):
            out[r][name] = float(value)
    return out


def _to_arrays(columns: dict[str, list], cfg: ProbeConfig, adapter, model) -> dict[str, np.ndarray]:
    from mmsift.probe.signals import VECTOR_SIGNALS

    arrays: dict[str, np.ndarray] = {}
    for name in cfg.signals:
        vals = columns.get(name)
        if name in VECTOR_SIGNALS:
            d = _vector_dim(name, cfg, adapter, model)
            arrays[name] = np.stack(vals).astype(np.float32) if vals else np.zeros((0, d), np.float32)
        elif name == "fmt":
            arrays[name] = np.array(vals or [], dtype=str)
        elif name in ("n_tokens", "n_answer_tokens", "n_rounds", "n_images", "is_mc"):
            arrays[name] = np.array(vals or [], dtype=np.int64)
        else:
            arrays[name] = np.array(vals or [], dtype=np.float64)
    return arrays


def _vector_dim(name, cfg, adapter, model) -> int:
    from mmsift.probe.signals import COINCIDE_VECTORS, SignalOptions, coincide_layers, default_feature_layers

    hidden = int(model.config.get_text_config().hidden_size)
    d = hidden
    if name in ("img_mean", "txt_mean"):
        d = hidden * len(cfg.feature_layers or default_feature_layers(adapter.num_layers(model)))
    if name in COINCIDE_VECTORS:
        layers = coincide_layers(adapter.num_layers(model), SignalOptions(feature_layers=cfg.feature_layers))
        d = int(adapter.decoder_layers(model)[1][layers[0]].self_attn.o_proj.in_features) * len(layers)
    return d if cfg.vector_dim is None else min(d, cfg.vector_dim)


# ---- the whole run ----------------------------------------------------------------------------------------------
def _model_files_identity(model: str) -> list:
    """Name, size and modification time of the model's files: a model retrained in place is a new model."""
    root = Path(model)
    if not root.is_dir():
        return []
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.iterdir()) if p.is_file()]


def _fingerprint_hash(config: ProbeConfig, shards: list[list[Record]], pool_path: str) -> str:
    # Record contents and the model's files are hashed too, so shards of an edited pool or of a retrained model
    # are never reused.
    h = hashlib.sha256(json.dumps({"config": config.fingerprint(), "pool": str(Path(pool_path).resolve()),
                                   "model_files": _model_files_identity(config.model)},
                                  sort_keys=True).encode())
    for k, shard in enumerate(shards):
        h.update(f"\x1eshard {k}".encode())
        for r in shard:
            h.update(json.dumps([r.id, r.index, r.task, r.raw], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _skipped_from_report(report) -> tuple[list[tuple[str, str, str]], int, int]:
    from mmsift.data.records import ERROR

    by_record: dict = {}
    loose = []
    for p in report.problems:
        if p.severity != ERROR:
            continue
        if p.index is None:
            label = str(p.record_id) if p.record_id is not None else f"line {p.line}" if p.line else "(no id)"
            loose.append((label, p.kind, p.message))
        elif p.index not in by_record:
            by_record[p.index] = (str(p.record_id), p.kind, p.message)
    return [by_record[i] for i in sorted(by_record)] + loose, len(by_record) + len(loose), len(loose)


def run_probe(
    data,
    *,
    images,
    model,
    out,
    methods=None,
    signals=None,
    device: str = "cpu",
    batch_size: int = 8,
    layer: int = -2,
    task_field: str | None = None,
    shard_size: int = 256,
    executor: str = "local",
    dtype: str | None = None,
    limit: int | None = None,
    feature_layers=None,
    vector_dim: int | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
    check_images: bool = True,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
) -> ProbeResult:
    """Probe the pool ``data`` with the model at ``model`` into the run directory ``out``.

    Computes the signals ``methods`` need (see :func:`mmsift.probe.signals.resolve_signals`) plus ``signals``
    and the bookkeeping ones. ``images`` defaults to the pool file's folder. ``limit`` probes only the first
    ``limit`` good records. When more than ``max_failure_rate`` of the records tried in a shard fail, the run
    stops with :class:`mmsift.failures.SystematicFailure` (see failures.py). Rerunning with the same arguments resumes from finished shards; a finished run is
    returned as is. ``overwrite`` discards a previous run with different settings in ``out``.

    The manifest records: model (path), model_type, layer, feature_layers, vector_dim, methods,
    requested_signals, device, dtype, seed, pool (path), pool_format, images, task_field, n_records (entries in
    the pool file), n_good, n_skipped, skipped (id, kind, message per record left out: validation errors and
    run-time failures), shard_size, n_shards, probe_fingerprint.
    """
    from mmsift.data.validate import read_and_validate
    from mmsift.exec import get_executor
    from mmsift.failures import check_max_failure_rate
    from mmsift.probe.signals import resolve_signals

    if executor != "ray" and (ray_address or ray_workers):
        raise ValueError("--ray-address and --ray-workers need --executor ray")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"--batch-size and --shard-size must be >= 1, got {batch_size} and {shard_size}")
    if vector_dim is not None and vector_dim < 1:
        raise ValueError(f"--vector-dim must be >= 1, got {vector_dim}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if executor == "local":
        from mmsift.probe.models import check_device

        check_device(device)
    t0 = time.perf_counter()
    pool, images_dir, report = read_and_validate(data, images, task_field=task_field, check_images=check_images)
    skipped, n_skipped, n_unparsed = _skipped_from_report(report)
    n_entries = len(pool.records) + n_unparsed  # entries that are not records are counted and reported too
    good = report.good_records(pool)
    if limit is not None:
        good = good[:limit]
    if not good:
        kinds = ", ".join(f"{k} {v}" for k, v in report.counts_by_kind().items()) or "the pool has no records"
        raise ValueError(f"{data}: no valid record to probe ({kinds}; run mmsift validate)")
    names = resolve_signals(methods, signals)
    config = ProbeConfig(model=str(model), signals=names, images=images_dir, device=device, dtype=dtype,
                         layer=layer, feature_layers=tuple(feature_layers) if feature_layers else None,
                         vector_dim=vector_dim, seed=seed, batch_size=batch_size, num_workers=num_workers,
                         max_length=max_length, max_failure_rate=check_max_failure_rate(max_failure_rate))
    shards = [good[k:k + shard_size] for k in range(0, len(good), shard_size)]
    fp = _fingerprint_hash(config, shards, str(pool.path))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    manifest = out / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("probe_fingerprint") == fp and not overwrite:
            log.info("%s already holds this finished run; nothing to do", out)
            store = SignalStore(out)
            return _result(store, old, n_entries, time.perf_counter() - t0, len(shards))
        if not overwrite:
            raise StoreError(f"{out} holds a finished run with other settings; use another --out or --overwrite")
        manifest.unlink()
        for stale in [out / SCALARS, *out.glob("vec_*.npy")]:
            stale.unlink(missing_ok=True)
    writer = ShardWriter(out)
    plan = writer.shard_dir / PLAN
    if plan.is_file() and json.loads(plan.read_text()).get("fingerprint") != fp:
        if not overwrite:
            raise StoreError(f"{out} holds unfinished shards of a run with other settings; "
                             "use another --out or --overwrite")
        for p in writer.shard_dir.iterdir():
            p.unlink()
    plan.write_text(json.dumps({"fingerprint": fp, "n_shards": len(shards)}) + "\n")

    todo = [k for k in range(len(shards)) if not writer.is_done(k)]
    reused = len(shards) - len(todo)
    if reused:
        log.info("resuming: %d of %d shards already done", reused, len(shards))
    log.info("probing %d records (%d skipped by validation) in %d shards with %s on %s",
             len(good), n_skipped, len(shards), model, device)
    specs = [ShardSpec(str(out), k, shards[k], config) for k in todo]
    executor_options = {"address": ray_address, "workers": ray_workers} if executor == "ray" else {}
    get_executor(executor)(specs, probe_shard, **executor_options)

    failed = []
    for k in range(len(shards)):
        ff = _failure_file(str(out), k)
        if ff.is_file():
            failed.extend(json.loads(ff.read_text(encoding="utf-8")))
    if len(failed) >= len(good):
        from mmsift.failures import SystematicFailure, likely_cause

        raise SystematicFailure(f"probe stopped: none of the {len(good)} records could be probed (first error: "
                                f"{failed[0]['kind']}: {failed[0]['message']}). Likely cause: {likely_cause()}")
    skipped = skipped + [(f["id"], f["kind"], f["message"]) for f in failed]
    n_skipped += len(failed)
    lm_type = _model_type(model)
    meta = {
        "probe_fingerprint": fp,
        "model": str(Path(model).resolve()),
        "model_type": lm_type,
        "layer": layer,
        "feature_layers": list(feature_layers) if feature_layers else None,
        "vector_dim": vector_dim,
        "methods": list(methods or []),
        "requested_signals": list(signals or []),
        "device": device,
        "dtype": dtype or "auto",
        "seed": seed,
        "pool": str(Path(pool.path).resolve()),
        "pool_format": pool.format,
        "pool_layouts": pool.layouts,
        "images": str(Path(images_dir).resolve()),
        "task_field": task_field,
        "n_records": n_entries,
        "n_good": len(good),
        "n_skipped": n_skipped,
        "skipped": [{"id": i, "kind": k, "message": m} for i, k, m in skipped],
        "shard_size": shard_size,
        "n_shards": len(shards),
    }
    store = writer.merge(list(range(len(shards))), meta=meta)
    result = _result(store, store.manifest, n_entries, time.perf_counter() - t0, reused)
    log.info("%s", "; ".join(result.summary_lines()))
    return result


def _result(store, manifest, n_records, seconds, reused) -> ProbeResult:
    skipped = [(s["id"], s["kind"], s["message"]) for s in manifest.get("skipped", [])]
    return ProbeResult(store=store, n_records=manifest.get("n_records", n_records), n_probed=len(store),
                       skipped=skipped, n_skipped=manifest.get("n_skipped", len(skipped)), seconds=seconds,
                       resumed_shards=reused)


def _model_type(model) -> str | None:
    try:
        return json.loads((Path(model) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
