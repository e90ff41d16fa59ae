"""Token-cleaning rows of the bench (``mmsift bench --tokens KEEP``): the same subsets, trained with masks.

For ``full`` and for every method (and recipe) row of the config's seed pairs, a twin row ``<row>+tokens<KEEP>``
trains on the *same* records with the *same* seed, with the answer tokens that token cleaning drops
(:mod:`mmsift.token_cleaning`, fixed-model) taken out of the loss. The token scores are computed once per bench
run, over the whole pool: every answer token's loss under the model the probe's proxy was warmed up from (the
*base*: the bundled pretrained base, or, for a proxy made from random weights, a model of the same shape and
tokenizer with random weights seeded as the warm-up's start) and under the warmed-up proxy (the *reference*, the
bench's probe run with ``token_loss``); ``loss_base - loss_ref`` is ranked over the pool and the top ``KEEP``
share keeps its labels. The masks go to ``out/tokens.jsonl`` (the sidecar format of ``mmsift tokens``) with a
report beside it; each twin job passes them to the target's training (:func:`mmsift.train.target.train_target`).

A twin is paired against its own untokened row (:func:`paired_rows`) and explained from what was masked
(:func:`masked_metrics`): the masked share of the answer tokens of its records, overall, per defect kind the truth
field marks, and on the clean records.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SUFFIX = "+tokens"


def check_keep(keep) -> float | None:
    """``--tokens``: None (no twin rows) or a share in (0, 1]; raises ``ValueError`` saying what is wrong."""
    if keep is None:
        return None
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) \
            or not 0 < float(keep) <= 1:
        raise ValueError(f"--tokens {keep!r}: give the share of answer tokens that keep their labels, in (0, 1] "
                         "(e.g. 0.6)")
    return float(keep)


def twin_label(label: str, keep: float) -> str:
    return f"{label}{SUFFIX}{keep:g}"


def plain_label(label: str) -> str | None:
    """The untokened row of a twin label (``<row>+tokens<KEEP>``), or None for a label that is not one."""
    import re

    m = re.fullmatch(r"(.+)\+tokens([0-9][0-9.e+-]*)", label)
    return m.group(1) if m else None


@dataclass
class PoolMasks:
    """The token cleaning of the whole pool: masks by record id, and per pool position the ranked answer tokens
    and how many of them were masked."""

    keep: float
    masks: dict  # record id -> assistant turn -> masked character spans (train.masks)
    n_tokens: np.ndarray
    n_masked: np.ndarray
    summary: dict = field(default_factory=dict)
    sidecar: str = ""

    def meta(self) -> dict:
        """What results.json records of the cleaning (the lines explaining each twin are added by the report)."""
        return {"keep": self.keep, "sidecar": self.sidecar,
                **{k: self.summary.get(k) for k in ("base_run", "reference_run", "n_ranked", "n_kept",
                                                     "by_answer_length", "warnings")}}


def masks_from_entries(entries: list[dict]) -> dict:
    """Sidecar entries (``token_select.record_entries``) as ``{id: {turn: [(start, end), ...]}}``; records with
    nothing masked are left out (they train as they are)."""
    out = {}
    for e in entries:
        turns = {int(t["turn"]): [tuple(s) for s in t["masked"]] for t in e.get("turns", []) if t["masked"]}
        if turns:
            out[e["id"]] = turns
    return out


def clean_pool(base_run, reference_run, records, keep: float, out: Path, *, seed: int = 0) -> PoolMasks:
    """Rank the pool's answer tokens (base run vs reference run, both with ``token_loss``), keep ``keep``; write
    ``out/tokens.jsonl`` and ``out/tokens.report.json``."""
    from mmsift.token_cleaning import TokenCleanConfig, clean_tokens
    from mmsift.token_select import write_sidecar

    result = clean_tokens(base_run, reference_run, records, TokenCleanConfig(keep=keep, seed=seed))
    sidecar = write_sidecar(Path(out) / "tokens.jsonl", result.entries)
    summary = {"base_run": str(base_run), "reference_run": str(reference_run), **result.summary()}
    (Path(out) / "tokens.report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n",
                                                  encoding="utf-8")
    for line in result.summary_lines():
        log.info("bench tokens: %s", line)
    return PoolMasks(keep=float(keep), masks=masks_from_entries(result.entries),
                     n_tokens=np.array([e["n_tokens"] for e in result.entries], dtype=np.int64),
                     n_masked=np.array([e["n_masked"] for e in result.entries], dtype=np.int64),
                     summary=summary, sidecar=str(sidecar))


def masked_metrics(kept, n_tokens, n_masked, labels=None) -> dict:
    """What the masks took from the records at pool positions ``kept``.

    ``masked``: masked share of their ranked answer tokens; ``fully_masked``: share of them left without a ranked
    token. With ``labels`` (one truth label per pool position, ``"none"`` = clean): ``masked_clean``,
    ``masked_bad`` (every other label together) and ``masked_<label>`` per defect kind.
    """
    kept = np.asarray(kept, dtype=np.int64)
    n, m = np.asarray(n_tokens)[kept], np.asarray(n_masked)[kept]

    def share(sel) -> float:
        return float(m[sel].sum() / n[sel].sum()) if n[sel].sum() else float("nan")

    out = {"masked": share(np.ones(len(kept), dtype=bool)),
           "fully_masked": float(((m == n) & (n > 0)).sum() / max(1, (n > 0).sum()))}
    if labels is not None:
        lab = np.asarray(labels, dtype=object)[kept]
        out["masked_clean"] = share(lab == "none")
        out["masked_bad"] = share(lab != "none")
        for d in sorted(set(lab.tolist()) - {"none"}):
            out[f"masked_{d}"] = share(lab == d)
    return out


def with_twins(plan: list, keep: float, seeds, skip_labels) -> list:
    """``plan`` with, right after each run at the config's seed pairs whose label is not in ``skip_labels``
    (calibration subsets, full-clean), its twin: same records, scores, notes and seed."""
    import dataclasses

    out = []
    for r in plan:
        out.append(r)
        if r.seed in set(seeds) and r.label not in set(skip_labels):
            out.append(dataclasses.replace(r, label=twin_label(r.label, keep), notes=list(r.notes), correct={},
                                           row={}))
    return out


def paired_rows(rows: list[dict], correct: dict, cols, *, n_boot: int, seed: int) -> None:
    """Each twin row gets ``vs_plain`` (its score minus its untokened row's, paired by seed pair and item, 95%
    interval) and ``plain_verdict``."""
    from mmsift.bench.stats import paired_difference

    for row in rows:
        plain = plain_label(row["method"])
        key, ref = (row["method"], row["budget"]), (plain, row["budget"])
        if plain is None or ref not in correct or len(correct[ref]) != len(correct[key]):
            continue
        d = paired_difference(correct[key], correct[ref], cols, n_boot=n_boot, seed=seed)
        row.update(vs_plain=d.mean, vs_plain_low=d.low, vs_plain_high=d.high, plain_verdict=d.verdict())


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def explain_lines(rows: list[dict]) -> list[str]:
    """One line per twin row: its paired difference from the untokened row and what was masked."""
    lines = []
    for r in rows:
        plain = plain_label(r["method"])
        if plain is None:
            continue
        kinds = sorted(k[len("masked_"):] for k in r if k.startswith("masked_") and k not in ("masked_clean",
                                                                                               "masked_bad"))
        by_kind = "; ".join(f"{k} {_pct(r[f'masked_{k}'])}" for k in kinds)
        truth = (f" (clean records {_pct(r.get('masked_clean'))}, marked {_pct(r.get('masked_bad'))}"
                 + (f": {by_kind}" if by_kind else "") + ")") if "masked_clean" in r else ""
        vs = (f"{r['vs_plain']:+.3f} [{r['vs_plain_low']:+.3f}, {r['vs_plain_high']:+.3f}] vs {plain} "
              f"({r['plain_verdict']})") if "vs_plain" in r else f"not paired with {plain}"
        lines.append(f"{r['method']} @ {r['budget']:g}: {vs}; masked {_pct(r.get('masked'))} of the answer tokens"
                     f"{truth}, {_pct(r.get('fully_masked'))} of the records fully masked")
    return lines


def referee_line(rows: list[dict], keep: float) -> str | None:
    """The referee's line on token cleaning: which twins beat (or lose to) their untokened rows."""
    twins = [r for r in rows if "plain_verdict" in r]
    if not twins:
        return None

    def names(v: str) -> str:
        return ", ".join(f"{r['method']}@{r['budget']:g} {r['vs_plain']:+.3f}" for r in twins
                         if r["plain_verdict"] == v) or "none"
    return (f"tokens {keep:g} (same records, masked loss) vs untokened: better {names('better')}; "
            f"worse {names('worse')}; undecided {names('undecided')}")


def before_model(proxy, out: Path, *, base_recipe=None, device: str = "cpu", seed: int = 0) -> Path:
    """The model the proxy was warmed up from: the bundled base, or (warm-up from random weights) a model of the
    proxy's sizes and tokenizer with random weights seeded as the warm-up's start, built under ``out``."""
    from transformers import AutoTokenizer

    from mmsift.models.proxy import build_proxy
    from mmsift.train import pretrain
    from mmsift.train.warmup import read_warmup_log

    if (read_warmup_log(proxy) or {}).get("base") != "none":
        return pretrain.ensure_base(base_recipe, device=device)
    return build_proxy(Path(out) / "token_base", tokenizer=AutoTokenizer.from_pretrained(proxy), seed=seed,
                       size=pretrain.random_start_size())
