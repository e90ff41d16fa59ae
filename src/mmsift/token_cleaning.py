"""Token cleaning of a pool or a subset, fixed-model and self-evolving (Pang et al. 2025, ``UCSC-REAL/TokenCleaning``).

Fixed-model (``rounds=1``): the per-token losses of a *base* run (the model before) and a *reference* run (the
model after updates on good data) of the same records are ranked together (:mod:`mmsift.token_select`); the top
``keep`` share of the answer tokens keeps its labels.

Self-evolving (``rounds=K``): the records are dealt into K parts of equal size by a seeded permutation (the
authors' ``generate_subset.py`` cuts the data into consecutive blocks and drops the remainder; pools are often
grouped by source, and a block of one source would make each update learn one task, so mmsift deals at random and
drops nothing). Part 1 is ranked with the given reference run; then the reference model is trained on part 1 with
its masks (the kept tokens only), part 2 is probed with the updated reference and ranked within itself, and so on.
The base run stays the model before throughout, as in the authors' ``self_evolving_cleaning.sh``. Where the
authors train their first reference on part 1 (without masks) and clean parts 2..K, mmsift starts from a reference
the user already has, so every part is cleaned. Each part keeps its share of ``floor(keep * M)`` (largest
remainder over the parts' token counts), so the parts together keep exactly what was asked, as the fixed-model
ranking does. Each update is a short run of the project's one loop (vision tower frozen, ``update_epochs`` passes
at ``update_lr``; the authors use one epoch of LoRA).

Outputs (:func:`write_token_outputs`): the records exactly as read, the sidecar of masks keyed by record id, a
report, and, on request, the records with their masks inline.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsift.store import SignalStore
from mmsift.token_select import (align_runs, check_tokens_fit, part_counts, rank_tokens, sidecar_path,
                                 write_sidecar)

log = logging.getLogger(__name__)

INLINE_FIELD = "token_mask"
LENGTH_BUCKETS = ((1, 2), (3, 10), (11, 50), (51, None))
# When to warn that the global ranking acts on whole records: share of scored records whose answers have at most
# SHORT_TOKENS tokens; and, per answer text shared by at least CLASS_MIN_RECORDS records, a fully masked share
# of at least CLASS_MASKED that is also CLASS_RATIO times the pool's (a whole answer class taken out of training).
SHORT_TOKENS, SHORT_SHARE = 2, 0.5
CLASS_MIN_RECORDS, CLASS_MASKED, CLASS_RATIO = 20, 0.8, 2.0


@dataclass(frozen=True)
class TokenCleanConfig:
    """Settings of :func:`clean_tokens` (the options of ``mmsift tokens``).

    ``keep``: the share of the ranked answer tokens that keep their labels. ``rounds``: 1 = fixed-model, K > 1 =
    self-evolving over K parts. For the self-evolving variant: ``work`` (folder for the parts, their probe runs and
    the updated references), ``update_epochs``, ``update_lr``, ``batch_size`` (training and probing), ``device``.
    """

    keep: float = 0.6
    rounds: int = 1
    work: str | None = None
    update_epochs: int = 1
    update_lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        if isinstance(self.keep, bool) or not 0 < float(self.keep) <= 1:
            raise ValueError(f"--keep must be a share in (0, 1], got {self.keep!r}")
        if self.rounds < 1 or self.update_epochs < 1 or self.batch_size < 1:
            raise ValueError(f"--rounds, --update-epochs and --batch-size must be >= 1, got {self.rounds}, "
                             f"{self.update_epochs}, {self.batch_size}")
        if self.rounds > 1 and not self.work:
            raise ValueError("the self-evolving variant (--rounds > 1) needs a work folder for its models")


@dataclass
class TokenCleanResult:
    """Sidecar entries in record order (unscored records included) and, per part, what was ranked and kept."""

    entries: list[dict]
    parts: list[dict] = field(default_factory=list)
    keep: float = 0.6
    warnings: list[str] = field(default_factory=list)

    @property
    def n_ranked(self) -> int:
        return sum(p["n_ranked"] for p in self.parts)

    @property
    def n_kept(self) -> int:
        return sum(p["n_kept"] for p in self.parts)

    @property
    def unscored(self) -> dict[str, str]:
        return {e["id"]: e["unscored"] for e in self.entries if "unscored" in e}

    def by_answer_length(self) -> list[dict]:
        """Kept share of the tokens of records by their count of ranked answer tokens (one-word answers first)."""
        rows = []
        n = np.array([e["n_tokens"] for e in self.entries if "unscored" not in e], dtype=np.int64)
        m = np.array([e["n_masked"] for e in self.entries if "unscored" not in e], dtype=np.int64)
        for lo, hi in LENGTH_BUCKETS:
            sel = (n >= lo) & (n <= (hi if hi is not None else np.iinfo(np.int64).max))
            if sel.any():
                rows.append({"tokens": f"{lo}-{hi}" if hi else f">{lo - 1}", "records": int(sel.sum()),
                             "kept_share": round(float(1 - m[sel].sum() / n[sel].sum()), 4),
                             "fully_masked": int((m[sel] == n[sel]).sum())})
        return rows

    def summary(self) -> dict:
        return {"keep": self.keep, "n_records": len(self.entries), "n_ranked": self.n_ranked,
                "n_kept": self.n_kept, "kept_share": self.n_kept / self.n_ranked if self.n_ranked else None,
                "parts": self.parts, "by_answer_length": self.by_answer_length(),
                "unscored": [{"id": k, "reason": v} for k, v in self.unscored.items()], "warnings": self.warnings}

    def summary_lines(self) -> list[str]:
        lines = []
        for p in self.parts:
            lines.append(f"part {p['part'] + 1}: ranked {p['n_ranked']} answer tokens of {p['n_records']} records "
                         f"globally; kept {p['n_kept']} ({p['n_kept'] / max(1, p['n_ranked']):.2%}, asked "
                         f"{self.keep:.2%}); lowest kept score {p['threshold']:.4g}; {p['n_template']} end-of-turn "
                         f"tokens always kept; reference {p['reference']}")
        for b in self.by_answer_length():
            lines.append(f"answers of {b['tokens']} tokens: {b['records']} records, {b['kept_share']:.1%} of their "
                         f"tokens kept, {b['fully_masked']} fully masked")
        if self.unscored:
            first = next(iter(self.unscored.items()))
            lines.append(f"{len(self.unscored)} records without per-token losses are written unmasked (e.g. "
                         f"{first[0]}: {first[1]})")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


def _answer_text(record) -> str:
    """The record's assistant turns joined, normalised (case, outer spaces): records with the same answer."""
    return " | ".join(t.text.strip().lower() for t in record.turns if t.role == "assistant")


def whole_record_warnings(entries: list[dict], records) -> list[str]:
    """What the global ranking does on pools of short answers: a record of one or two answer tokens is kept or
    masked whole, so token cleaning acts as record selection there, and it can mask one answer class (a digit, a
    colour) nearly whole, which a model trained with the masks then never learns. ``entries`` and ``records`` in
    the same order."""
    scored = [(e, r) for e, r in zip(entries, records) if "unscored" not in e and e["n_tokens"] > 0]
    if not scored:
        return []
    warnings = []
    short = sum(e["n_tokens"] <= SHORT_TOKENS for e, _ in scored)
    if short >= SHORT_SHARE * len(scored):
        warnings.append(f"{short} of {len(scored)} records have answers of at most {SHORT_TOKENS} tokens: they "
                        f"are kept or masked whole, so token cleaning acts as record selection on this pool "
                        f"(docs/tokens.md, 'One-word answers')")
    full = np.array([e["n_masked"] == e["n_tokens"] for e, _ in scored])
    pool_share = float(full.mean())
    groups: dict[str, list[int]] = {}
    for k, (_, r) in enumerate(scored):
        groups.setdefault(_answer_text(r), []).append(k)
    for answer, rows in sorted(groups.items()):
        share = float(full[rows].mean())
        if len(rows) >= CLASS_MIN_RECORDS and share >= CLASS_MASKED and share >= CLASS_RATIO * pool_share:
            warnings.append(f"answer {answer[:40]!r}: {int(full[rows].sum())} of {len(rows)} records fully masked "
                            f"(pool: {pool_share:.0%}); a model trained with these masks may never learn it")
    return warnings


def _tokens_of(run) -> tuple[list[str], object, SignalStore]:
    store = SignalStore(run)
    return [str(i) for i in store.load([]).ids], store.load_tokens(), store


def clean_tokens(base_run, reference_run, records, config: TokenCleanConfig, *, pool=None) -> TokenCleanResult:
    """Clean the answer tokens of ``records`` (``mmsift.data.records.Record``, matched to the runs by id).

    ``base_run``/``reference_run``: probe runs with ``token_loss`` (``mmsift probe --signals token_loss``) by the
    model before and the model after. ``pool``: the records' :class:`~mmsift.data.io.Pool` (needed only for the
    self-evolving variant, which writes each part as a pool file to probe it).
    """
    config.check()
    if config.rounds > max(1, len(records)):
        raise ValueError(f"--rounds {config.rounds} is more than the {len(records)} records to clean")
    if config.rounds > 1 and any(r.raw.get("id") in (None, "") for r in records):
        first = next(r for r in records if r.raw.get("id") in (None, ""))
        raise ValueError(f"the self-evolving variant writes each part as a pool file and needs records with ids; "
                         f"record at position {first.index} has none")
    base_ids, base_tokens, _ = _tokens_of(base_run)
    ref_ids, ref_tokens, ref_store = _tokens_of(reference_run)
    parts = _parts(len(records), config)
    counts = part_counts([_ranked_tokens(base_ids, base_tokens, [records[i].id for i in p]) for p in parts],
                         config.keep)
    entries: dict[str, dict] = {}
    summaries = []
    reference = str(ref_store.manifest.get("model") or reference_run)
    for k, part in enumerate(parts):
        part_records = [records[i] for i in part]
        if k > 0:
            ref_ids, ref_tokens, _ = _tokens_of(_probe_part(pool, part_records, k, reference, ref_store, config))
        aligned = align_runs(base_ids, base_tokens, ref_ids, ref_tokens, [r.id for r in part_records])
        check_tokens_fit(aligned, part_records)
        cleaning = rank_tokens(aligned, config.keep, count=counts[k])
        for e in cleaning.entries:
            entries[e["id"]] = e
        for rid, why in aligned.missing.items():
            entries[rid] = {"id": rid, "n_tokens": 0, "n_masked": 0, "turns": [], "unscored": why}
        summaries.append({"part": k, "n_records": len(part_records), "n_ranked": cleaning.n_ranked,
                          "n_kept": cleaning.n_kept, "threshold": cleaning.threshold,
                          "n_template": cleaning.n_template, "n_nan": cleaning.n_nan, "reference": reference})
        log.info("part %d of %d: kept %d of %d tokens", k + 1, len(parts), cleaning.n_kept, cleaning.n_ranked)
        if k + 1 < len(parts):
            masks = {e["id"]: {t["turn"]: [tuple(s) for s in t["masked"]] for t in e["turns"]}
                     for e in cleaning.entries}
            reference = _update_reference(reference, part_records, masks, k, ref_store, config)
    ordered = [entries[r.id] for r in records]
    warnings = whole_record_warnings(ordered, records)
    for w in warnings:
        log.warning("token cleaning: %s", w)
    return TokenCleanResult(ordered, summaries, float(config.keep), warnings)


def _parts(n: int, config: TokenCleanConfig) -> list[list[int]]:
    """Record positions per part: all in one (fixed-model), else a seeded deal into ``rounds`` equal parts, each
    in data order."""
    if config.rounds == 1 or n == 0:
        return [list(range(n))]
    perm = np.random.default_rng(config.seed).permutation(n)
    return [sorted(int(i) for i in p) for p in np.array_split(perm, config.rounds)]


def _ranked_tokens(ids, tokens, wanted) -> int:
    """How many tokens with characters of the text the records ``wanted`` have in a run (the ones ranked)."""
    rows = {i: r for r, i in enumerate(ids)}
    per_row = np.bincount(tokens.row[tokens.turn >= 0], minlength=len(ids))
    return int(sum(per_row[rows[i]] for i in wanted if i in rows))


def _probe_part(pool, part_records, k: int, model: str, ref_store: SignalStore, config: TokenCleanConfig) -> Path:
    """Probe part ``k`` with the updated reference ``model``; returns the run directory."""
    from mmsift.data.io import write_subset
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe

    if pool is None:
        raise ValueError("the self-evolving variant needs the records' pool to probe each part")
    work = Path(config.work) / f"part-{k + 1}"
    part_file = write_subset(pool, [r.index for r in part_records], work / f"records{_suffix(pool)}")
    man = ref_store.manifest
    dtype = man.get("dtype") if man.get("dtype") not in (None, "auto") else None
    probe = ProbeConfig(model=model, out=str(work / "run"), images=man.get("images"), signals=("token_loss",),
                        device=config.device, dtype=dtype, batch_size=config.batch_size, seed=config.seed,
                        task_field=man.get("task_field"), overwrite=True)
    result = run_probe(part_file, probe)
    return result.store.root


def _suffix(pool) -> str:
    return {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet"}[pool.format]


def _update_reference(model: str, part_records, masks: dict, k: int, ref_store: SignalStore,
                      config: TokenCleanConfig) -> str:
    """The reference after training on part ``k``'s kept tokens: a copy of ``model`` under the work folder."""
    from mmsift.train.loop import TrainConfig, train_model

    out = Path(config.work) / f"reference-{k + 1}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)  # processor, tokenizer and template come along; the weights are rewritten below
    train = TrainConfig(epochs=config.update_epochs, lr=config.update_lr, batch_size=config.batch_size,
                        seed=config.seed + k, device=config.device, freeze_vision=True)
    result = train_model(str(out), part_records, ref_store.manifest.get("images"), train, token_masks=masks,
                         progress=f"reference update {k + 1}")
    result.model.model.save_pretrained(out)
    log.info("reference updated on part %d: %d records, answer loss %.3f -> %.3f", k + 1, result.n_samples,
             result.losses[0] if result.losses else float("nan"), result.losses[-1] if result.losses else float("nan"))
    return str(out)


def write_token_outputs(pool, records, result: TokenCleanResult, out, *, inline: bool = False,
                        settings: dict | None = None) -> dict:
    """Write ``records`` (exactly as read, pool order) to ``out``, the sidecar beside it and a report; with
    ``inline`` each written record also carries its mask under ``"token_mask"`` (then it is no longer byte-identical
    to the input). Returns the paths written."""
    from mmsift.data.io import write_subset

    out = Path(out)
    if inline:
        _write_inline(records, result.entries, out)
    else:
        write_subset(pool, [r.index for r in records], out)
    sidecar = write_sidecar(sidecar_path(out), result.entries)
    report = out.with_name(out.stem + ".tokens.report.json")
    report.write_text(json.dumps({"settings": settings or {}, **result.summary()}, indent=2, ensure_ascii=False,
                                 default=str) + "\n", encoding="utf-8")
    return {"subset": out, "sidecar": sidecar, "report": report}


def _write_inline(records, entries: list[dict], out: Path) -> None:
    suffix = out.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"--inline writes .json or .jsonl, not {suffix or 'a file without suffix'!r}")
    for r in records:
        if INLINE_FIELD in r.raw:
            raise ValueError(f"record {r.id!r} already has a field {INLINE_FIELD!r}; write the sidecar only")
    by_id = {e["id"]: e["turns"] for e in entries}
    rows = [{**r.raw, INLINE_FIELD: by_id.get(r.id, [])} for r in sorted(records, key=lambda r: r.index)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if suffix == ".jsonl":
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            json.dump(rows, fh, ensure_ascii=False, indent=1)
            fh.write("\n")
    tmp.replace(out)
