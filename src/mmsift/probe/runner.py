"""Running the probe over a pool: validation, fixed shards with completion markers, the final merge.

The good records (pool order) are cut into shards of ``shard_size``. Each shard is one call of
:func:`mmsift.probe.shard.probe_shard` on a picklable :class:`~mmsift.probe.shard.ShardSpec`, so any executor can
run it (``exec/local.py`` runs them in-process one after the other; a Ray executor runs the same function in
actors). A shard writes its rows with :class:`mmsift.store.ShardWriter`, whose ``.done`` marker is written last,
so a killed run redoes only unfinished shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmsift.data.records import Record
from mmsift.probe.config import ProbeConfig, ShardConfig
from mmsift.probe.shard import ShardSpec, failure_file, probe_shard
from mmsift.store import MANIFEST, SCALARS, ShardWriter, SignalStore, StoreError

log = logging.getLogger(__name__)

PLAN = "plan.json"


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


def _model_files_identity(model: str) -> list:
    """Name, size and modification time of the model's files: a model retrained in place is a new model."""
    root = Path(model)
    if not root.is_dir():
        return []
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.iterdir()) if p.is_file()]


def _fingerprint_hash(config: ShardConfig, shards: list[list[Record]], pool_path: str) -> str:
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


def run_probe(data, config: ProbeConfig) -> ProbeResult:
    """Probe the pool ``data`` with ``config.model`` into the run directory ``config.out`` (see
    :class:`~mmsift.probe.config.ProbeConfig` for every setting).

    Rerunning with the same settings resumes from finished shards; a finished run is returned as is.
    The manifest records: model (path), model_type, layer, feature_layers, vector_dim, methods,
    requested_signals, device, dtype, seed, pool (path), pool_format, images, task_field, n_records (entries in
    the pool file), n_good, n_skipped, skipped (id, kind, message per record left out: validation errors and
    run-time failures), shard_size, n_shards, probe_fingerprint.
    """
    from mmsift.data.validate import read_and_validate
    from mmsift.exec import get_executor
    from mmsift.probe.signals import resolve_signals

    config.check()
    if config.executor == "local":
        from mmsift.models.loading import check_device

        check_device(config.device)
    t0 = time.perf_counter()
    pool, images_dir, report = read_and_validate(data, config.images, task_field=config.task_field,
                                                 check_images=config.check_images)
    skipped, n_skipped, n_unparsed = _skipped_from_report(report)
    n_entries = len(pool.records) + n_unparsed  # entries that are not records are counted and reported too
    good = report.good_records(pool)[: config.limit]
    if not good:
        kinds = ", ".join(f"{k} {v}" for k, v in report.counts_by_kind().items()) or "the pool has no records"
        raise ValueError(f"{data}: no valid record to probe ({kinds}; run mmsift validate)")
    shard_config = config.for_shards(resolve_signals(config.methods, config.signals), images_dir)
    shards = [good[k:k + config.shard_size] for k in range(0, len(good), config.shard_size)]
    fp = _fingerprint_hash(shard_config, shards, str(pool.path))
    out = Path(config.out)
    finished = _prepare_out(out, fp, len(shards), config.overwrite)
    if finished is not None:
        return _result(finished, finished.manifest, n_entries, time.perf_counter() - t0, len(shards))
    writer = ShardWriter(out)
    todo = [k for k in range(len(shards)) if not writer.is_done(k)]
    reused = len(shards) - len(todo)
    if reused:
        log.info("resuming: %d of %d shards already done", reused, len(shards))
    log.info("probing %d records (%d skipped by validation) in %d shards with %s on %s",
             len(good), n_skipped, len(shards), config.model, config.device)
    specs = [ShardSpec(str(out), k, shards[k], shard_config) for k in todo]
    executor_options = ({"address": config.ray_address, "workers": config.ray_workers}
                        if config.executor == "ray" else {})
    get_executor(config.executor)(specs, probe_shard, **executor_options)
    failed = _shard_failures(out, len(shards), len(good))
    skipped = skipped + [(f["id"], f["kind"], f["message"]) for f in failed]
    meta = _manifest(config, fp, pool, images_dir, n_entries, len(good), skipped, n_skipped + len(failed),
                     len(shards))
    store = writer.merge(list(range(len(shards))), meta=meta)
    result = _result(store, store.manifest, n_entries, time.perf_counter() - t0, reused)
    log.info("%s", "; ".join(result.summary_lines()))
    return result


def _prepare_out(out: Path, fp: str, n_shards: int, overwrite: bool) -> SignalStore | None:
    """The finished store when ``out`` already holds this very run; else ``out`` made ready for its shards
    (stale results of other settings removed with ``overwrite``, refused without it) and None."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("probe_fingerprint") == fp and not overwrite:
            log.info("%s already holds this finished run; nothing to do", out)
            return SignalStore(out)
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
    plan.write_text(json.dumps({"fingerprint": fp, "n_shards": n_shards}) + "\n")
    return None


def _shard_failures(out: Path, n_shards: int, n_good: int) -> list[dict]:
    """The records the shards could not probe; a run where none could be probed is a systematic failure."""
    failed = []
    for k in range(n_shards):
        ff = failure_file(str(out), k)
        if ff.is_file():
            failed.extend(json.loads(ff.read_text(encoding="utf-8")))
    if len(failed) >= n_good:
        from mmsift.failures import SystematicFailure, likely_cause

        raise SystematicFailure(f"probe stopped: none of the {n_good} records could be probed (first error: "
                                f"{failed[0]['kind']}: {failed[0]['message']}). Likely cause: {likely_cause()}")
    return failed


def _manifest(config: ProbeConfig, fp: str, pool, images_dir, n_entries: int, n_good: int, skipped: list,
              n_skipped: int, n_shards: int) -> dict:
    return {
        "probe_fingerprint": fp,
        "model": str(Path(config.model).resolve()),
        "model_type": _model_type(config.model),
        "layer": config.layer,
        "feature_layers": list(config.feature_layers) if config.feature_layers else None,
        "vector_dim": config.vector_dim,
        "methods": list(config.methods or []),
        "requested_signals": list(config.signals or []),
        "device": config.device,
        "dtype": config.dtype or "auto",
        "seed": config.seed,
        "pool": str(Path(pool.path).resolve()),
        "pool_format": pool.format,
        "pool_layouts": pool.layouts,
        "images": str(Path(images_dir).resolve()),
        "task_field": config.task_field,
        "n_records": n_entries,
        "n_good": n_good,
        "n_skipped": n_skipped,
        "skipped": [{"id": i, "kind": k, "message": m} for i, k, m in skipped],
        "shard_size": config.shard_size,
        "n_shards": n_shards,
    }


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
