"""One shard of a probe run: encode its records, run the model batch by batch, write its rows and marker.

Inside a shard, samples are sorted by length (longest first) into batches and put back in pool order afterwards;
every signal is computed per sample under its own attention mask, so batching and padding do not change results
beyond floating-point reduction order. A record that fails (image that does not decode, conversation the template
cannot render, longer than the model's context, an error in the forward pass) is reported and counted, never
written, and never stops the run; a failing batch is retried one sample at a time to find the culprit.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsift.data.records import Record
from mmsift.failures import FailureGuard
from mmsift.probe.config import ShardConfig
from mmsift.store import SHARDS, ShardWriter

log = logging.getLogger(__name__)


@dataclass
class ShardSpec:
    out: str
    shard: int
    records: list[Record]
    config: ShardConfig


_LOADED: dict = {}


def get_model(config: ShardConfig):
    """The loaded model for ``config``, kept for the next shard in the same process."""
    from mmsift.models.loading import load_model

    root = Path(config.model).resolve()
    # The files' change times are part of the key: a model retrained into the same folder is loaded again.
    stamp = max((p.stat().st_mtime_ns for p in root.iterdir() if p.is_file()), default=0)
    key = (str(root), stamp, config.device, config.dtype, config.max_pixels, config.max_image_tokens)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_model(config.model, device=config.device, dtype=config.dtype,
                                  limits=config.image_limits)
    return _LOADED[key]


def failure_file(out: str, shard: int) -> Path:
    return Path(out) / SHARDS / f"shard-{shard:05d}.failed.json"


class ShardFailures:
    """The records of a shard that failed, (kind, message) by position; every failure also counts in the
    :class:`~mmsift.failures.FailureGuard` that stops a run when most records fail the same way."""

    def __init__(self, spec: ShardSpec):
        self.records = spec.records
        self.by_pos: dict[int, tuple[str, str]] = {}
        self.guard = FailureGuard("probe", log_dir=Path(spec.out), max_failure_rate=spec.config.max_failure_rate)

    def __call__(self, pos: int, kind: str, message: str, error: BaseException | None = None,
                 tb: str | None = None) -> None:
        self.by_pos[pos] = (kind, message)
        self.guard.failed(self.records[pos].id, f"{kind}: {message}", error, tb)

    def as_rows(self) -> list[dict]:
        return [{"id": self.records[i].id, "index": self.records[i].index, "kind": k, "message": m}
                for i, (k, m) in sorted(self.by_pos.items())]


def probe_shard(spec: ShardSpec) -> None:
    """Compute the signals of one shard and write them with their completion marker."""
    import torch
    from tqdm.auto import tqdm

    from mmsift.models.loading import cpu_threads_for
    from mmsift.probe.signals import SignalOptions, hidden_layers_needed

    cfg = spec.config
    lm = get_model(cfg)
    opts = SignalOptions(layer=cfg.layer, feature_layers=cfg.feature_layers, vector_dim=cfg.vector_dim,
                         seed=cfg.seed)
    # An out-of-range --layer is a setting error for the whole run, not a failure of each record: raise it here.
    hidden_layers_needed(cfg.signals, lm.adapter.num_layers(lm.model), opts)
    fail = ShardFailures(spec)
    batches = _length_sorted_batches(lm.adapter, spec.records, cfg, fail)
    loader = _loader(spec, lm, batches)
    rows: dict[int, dict] = {}
    with torch.inference_mode(), cpu_threads_for(lm.model, lm.device):
        for items in tqdm(loader, total=len(batches), desc=f"shard {spec.shard}", leave=False, unit="batch"):
            good = []
            for it in items:
                if "error" in it:
                    fail(it["pos"], *it["error"], tb=it.get("traceback"))
                else:
                    good.append(it)
            n_rows = len(rows)
            _run_items(lm.adapter, lm.model, good, cfg, opts, rows, fail, lm.device, _torch_dtype(lm.model))
            fail.guard.ok(len(rows) - n_rows)
            fail.guard.check()
    fail.guard.check(final=True)
    _write_shard(spec, rows, fail, lm)


def _length_sorted_batches(adapter, records: list[Record], cfg: ShardConfig, fail: ShardFailures) -> list[list[int]]:
    """Positions of ``records`` in batches of similar estimated length, longest first: ``cfg.batch_size`` records
    per batch, or, with ``cfg.max_batch_tokens``, as many as fit that many padded tokens (estimated with the images'
    real sizes from their file headers; a record over the budget on its own makes a batch of one)."""
    from mmsift.data.images import header_sizes

    budget = cfg.max_batch_tokens
    lengths = []
    for i, rec in enumerate(records):
        try:
            sizes = header_sizes(rec, cfg.images) if budget and rec.images else None
            lengths.append(adapter.sort_length(rec.turns, len(rec.images), sizes))
        except Exception as e:  # reported per record; the record is not processed
            fail(i, "encode_error", f"{type(e).__name__}: {e}", e)
            lengths.append(0)
    order = [i for i in sorted(range(len(records)), key=lambda i: -lengths[i]) if i not in fail.by_pos]
    if not budget:
        return [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    batches: list[list[int]] = []
    for i in order:  # longest first: a batch's padded length is its first record's
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def default_workers(device: str) -> int:
    """DataLoader workers when ``--num-workers`` is not given. On GPU the per-sample CPU work (decode, template,
    tokenise) must overlap the forward passes. On CPU the workers compete with the forward pass for the same cores:
    on the 2-core dev machine two workers were slower than none (docs/performance.md, "DataLoader workers")."""
    if str(device) != "cpu":
        return min(8, max(1, (os.cpu_count() or 2) - 1))
    return 0


def _loader(spec: ShardSpec, lm, batches: list[list[int]]):
    """A DataLoader that encodes the batches' records (in worker processes when there are any)."""
    import torch

    from mmsift.probe.dataset import ProbeDataset, as_list, variants_for

    cfg = spec.config
    max_length = cfg.max_length or int(getattr(lm.model.config.get_text_config(), "max_position_embeddings", 0) or 0)
    ds = ProbeDataset(spec.records, lm.adapter, cfg.images, variants=variants_for(cfg.signals), seed=cfg.seed,
                      max_length=max_length or None)
    workers = cfg.num_workers
    if workers is None:
        workers = default_workers(cfg.device)
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=as_list, num_workers=workers,
                                       prefetch_factor=4 if workers else None, persistent_workers=False)


def _write_shard(spec: ShardSpec, rows: dict[int, dict], fail: ShardFailures, lm) -> None:
    """The shard's rows (pool order) with the record-level signals, its failure list, then its marker."""
    from mmsift.probe.perturb import is_multiple_choice
    from mmsift.scorers.ards import first_turn_format

    from mmsift.probe.tokens import TOKEN_SIGNALS, shard_token_table

    cfg = spec.config
    keep = [i for i in range(len(spec.records)) if i in rows]
    tokens = None
    if set(TOKEN_SIGNALS) & set(cfg.signals):  # per-token losses go to their own table, not to the columns
        tokens, _ = shard_token_table(lm.adapter, [spec.records[i] for i in keep],
                                      [rows[i].pop(TOKEN_SIGNALS[0]) for i in keep])
    columns: dict[str, list] = {}
    for i in keep:
        rec = spec.records[i]
        r = rows[i]
        r["n_rounds"] = rec.n_rounds
        r["n_images"] = len(rec.images)
        if "is_mc" in cfg.signals:
            r["is_mc"] = int(is_multiple_choice(rec.turns))
        if "fmt" in cfg.signals:
            r["fmt"] = first_turn_format(rec.turns, len(rec.images))
        for k in cfg.signals:
            # Variants that do not apply to a record (loss_sym of a non-MC item...) are NaN.
            if k not in TOKEN_SIGNALS:
                columns.setdefault(k, []).append(r.get(k, np.nan))
    arrays = _to_arrays(columns, cfg, lm.adapter, lm.model)
    recs = [spec.records[i] for i in keep]
    fails = fail.as_rows()
    failure_file(spec.out, spec.shard).write_text(json.dumps(fails, ensure_ascii=False) + "\n", encoding="utf-8")
    ShardWriter(spec.out).write(spec.shard, ids=[r.id for r in recs], index=[r.index for r in recs],
                                tasks=[r.task or "all" for r in recs], columns=arrays, tokens=tokens)
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
    from mmsift.models.losses import answer_loss
    from mmsift.probe.signals import batch_signals

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


def _to_arrays(columns: dict[str, list], cfg: ShardConfig, adapter, model) -> dict[str, np.ndarray]:
    from mmsift.probe.signals import VECTOR_SIGNALS

    from mmsift.probe.tokens import TOKEN_SIGNALS

    arrays: dict[str, np.ndarray] = {}
    for name in cfg.signals:
        if name in TOKEN_SIGNALS:
            continue
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


