"""Token cleaning's ranking over stored per-token losses, the kept tokens as character masks, and the sidecar file.

Token Cleaning (Jinlong Pang, Na Di, Zhaowei Zhu, Jiaheng Wei, Hao Cheng, Chen Qian, Yang Liu. *Token Cleaning:
Fine-Grained Data Selection for LLM Supervised Fine-Tuning.* ICML 2025, arXiv:2502.01968; code
``UCSC-REAL/TokenCleaning``, ``scripts/generate_token_label.py``):

- score of answer token j of record i: ``s_ij = loss_base_ij - loss_ref_ij``, the drop in the token's cross-entropy
  from the base model (before) to the reference model (after updates on good data); higher = keep;
- global ranking: every answer token of the pool is ranked together (not within its record) and the top
  ``k = floor(keep * M)`` of the M ranked tokens keep their labels; ties are broken by position (record order,
  then token order), as the code's stable sort does. The rest are masked out of the loss.

mmsift ranks only tokens that hold characters of the record's text: the end-of-turn marker the chat template
writes (``</s>``, ``<|im_end|>``) is always kept and not counted in M, because a mask written as characters of
the record cannot name it, and a model that stops learning where to stop is worse off than one that trains on
one extra token. A token with a NaN loss is ranked last. Pure numpy: the self-evolving variant, which needs the
model, is in :mod:`mmsift.token_cleaning`.

Masks are character spans of each assistant turn's text (``Turn.text``), so they mean the same characters for any
tokenizer: a character is masked when every scored token covering it was masked (the bytes of one character can
fall in two byte-level tokens; a character that one kept token covers stays trained).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsift.charspans import merge_spans, subtract_spans
from mmsift.store import TokenTable

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".tokens.jsonl"


def token_scores(base_loss, ref_loss) -> np.ndarray:
    """``loss_base - loss_ref`` per token (float64): how much the reference improved on the token; higher = keep."""
    base = np.asarray(base_loss, dtype=np.float64)
    ref = np.asarray(ref_loss, dtype=np.float64)
    if base.shape != ref.shape:
        raise ValueError(f"base and reference losses differ in shape: {base.shape} vs {ref.shape}")
    return base - ref


def keep_count(n: int, keep: float) -> int:
    """``floor(keep * n)``, the authors' ``int(len * data_prop)`` (a hair of slack so 0.6 * 10 is 6, not 5)."""
    if isinstance(keep, bool) or not 0 < float(keep) <= 1:
        raise ValueError(f"keep must be a share in (0, 1], got {keep!r}")
    return int(math.floor(float(keep) * n + 1e-9))


def part_counts(sizes, keep: float) -> list[int]:
    """Tokens to keep in each part of sizes ``sizes`` so that the parts together keep ``keep_count(sum, keep)``:
    ``keep * size`` per part, rounded by largest remainder (ties to the earlier part)."""
    sizes = [int(x) for x in sizes]
    total = keep_count(sum(sizes), keep)
    exact = [float(keep) * x for x in sizes]
    counts = [min(x, int(math.floor(e + 1e-9))) for x, e in zip(sizes, exact)]
    order = sorted(range(len(sizes)), key=lambda p: (-(exact[p] - counts[p]), p))
    for p in order:
        if sum(counts) >= total:
            break
        if counts[p] < sizes[p]:
            counts[p] += 1
    return counts


def global_keep(scores, keep: float, *, eligible=None, count: int | None = None) -> np.ndarray:
    """Boolean keep mask: the top ``floor(keep * M)`` of the M eligible tokens by score (or the top ``count``),
    ties to the earlier token.

    Tokens outside ``eligible`` are neither counted nor kept here; NaN scores rank below every number.
    Runs in O(M) (a partition, then the tie at the threshold resolved in token order), so it serves pools of
    hundreds of millions of tokens.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.ones(len(scores), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    where = np.flatnonzero(ok)
    k = keep_count(len(where), keep) if count is None else min(int(count), len(where))
    out = np.zeros(len(scores), dtype=bool)
    if k == 0:
        return out
    # -inf for NaN: ranked last, and still selectable when keep = 1.
    values = np.where(np.isnan(scores[where]), -np.inf, scores[where])
    threshold = np.partition(values, len(values) - k)[len(values) - k]
    above = values > threshold
    at = np.flatnonzero(values == threshold)[: k - int(above.sum())]
    out[where[above]] = True
    out[where[at]] = True
    return out


@dataclass
class AlignedTokens:
    """The scored tokens of the records to clean, the same tokens in both runs, records in output order.

    ``ids``: records with tokens; ``offsets``: (len(ids) + 1,) token ranges; the rest per token. ``missing``: the
    records asked for that have no per-token losses in one of the runs, with the reason.
    """

    ids: list[str]
    offsets: np.ndarray
    turn: np.ndarray
    start: np.ndarray
    end: np.ndarray
    base: np.ndarray
    ref: np.ndarray
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def content(self) -> np.ndarray:
        """Tokens with characters of the record's text (the ranked ones)."""
        return self.turn >= 0

    def take(self, records: list[int]) -> "AlignedTokens":
        """Only the records at ``records`` (positions in ``ids``, in the given order)."""
        idx = _ranges(self.offsets[records], self.offsets[np.asarray(records, dtype=np.int64) + 1])
        counts = np.diff(self.offsets)[records]
        return AlignedTokens([self.ids[r] for r in records], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                             self.turn[idx], self.start[idx], self.end[idx], self.base[idx], self.ref[idx])


def _ranges(starts, stops) -> np.ndarray:
    """Concatenated ``arange(a, b)`` for each pair, without a Python loop."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(stops, dtype=np.int64) - starts
    if not len(lengths) or lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + shift


def _rows_by_id(ids) -> dict[str, int]:
    rows: dict[str, int] = {}
    for r, i in enumerate(ids):
        if str(i) in rows:
            raise ValueError(f"record id {i!r} appears twice in a run; token masks are keyed by id")
        rows[str(i)] = r
    return rows


def align_runs(base_ids, base: TokenTable, ref_ids, ref: TokenTable, ids) -> AlignedTokens:
    """The tokens of the records ``ids`` in the base run and the reference run, checked to be the same tokens.

    ``base_ids``/``ref_ids``: the runs' record ids by store row. Raises ``ValueError`` naming the record when the
    two runs place its tokens differently (the two models' tokenizers or templates differ).
    """
    rows_b, rows_r = _rows_by_id(base_ids), _rows_by_id(ref_ids)
    off_b, off_r = base.offsets(len(base_ids)), ref.offsets(len(ref_ids))
    kept, missing, rb, rr = [], {}, [], []
    for i in map(str, ids):
        b, r = rows_b.get(i), rows_r.get(i)
        if b is None or r is None:
            missing[i] = f"not in the {'base' if b is None else 'reference'} run (skipped by its probe)"
        elif off_b[b + 1] == off_b[b] or off_r[r + 1] == off_r[r]:
            missing[i] = f"no per-token losses in the {'base' if off_b[b + 1] == off_b[b] else 'reference'} run"
        else:
            kept.append(i)
            rb.append(b)
            rr.append(r)
    ib, ir = _ranges(off_b[rb], off_b[np.asarray(rb, dtype=np.int64) + 1]), \
        _ranges(off_r[rr], off_r[np.asarray(rr, dtype=np.int64) + 1])
    counts = off_b[np.asarray(rb, dtype=np.int64) + 1] - off_b[rb]
    if len(ib) != len(ir) or not (np.array_equal(base.start[ib], ref.start[ir])
                                  and np.array_equal(base.end[ib], ref.end[ir])
                                  and np.array_equal(base.turn[ib], ref.turn[ir])):
        raise ValueError(f"record {_first_mismatch(kept, base, ref, off_b, rb, off_r, rr)!r} is tokenized "
                         "differently in the base run and the reference run: both must be probed with models that "
                         "share a tokenizer and chat template")
    return AlignedTokens(kept, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), base.turn[ib],
                         base.start[ib], base.end[ib], base.loss[ib], ref.loss[ir], missing)


def _first_mismatch(kept, base, ref, off_b, rb, off_r, rr) -> str:
    """The first record whose tokens differ between the runs (only called once a difference was found)."""
    for rid, b, r in zip(kept, rb, rr):
        a, c = slice(off_b[b], off_b[b + 1]), slice(off_r[r], off_r[r + 1])
        if not all(np.array_equal(getattr(base, n)[a], getattr(ref, n)[c]) for n in ("turn", "start", "end")):
            return rid
    return kept[-1] if kept else "?"


def record_entries(aligned: AlignedTokens, kept: np.ndarray) -> list[dict]:
    """One sidecar entry per record of ``aligned`` (see :func:`write_sidecar`) from the per-token keep mask."""
    entries = []
    for k, rid in enumerate(aligned.ids):
        sl = slice(int(aligned.offsets[k]), int(aligned.offsets[k + 1]))
        turn, start, end, keep = aligned.turn[sl], aligned.start[sl], aligned.end[sl], kept[sl]
        content = turn >= 0
        turns = []
        for t in sorted(set(turn[content].tolist())):
            here = turn == t
            masked = merge_spans(zip(start[here & ~keep], end[here & ~keep]))
            trained = merge_spans(zip(start[here & keep], end[here & keep]))
            turns.append({"turn": int(t), "masked": [list(s) for s in subtract_spans(masked, trained)]})
        entries.append({"id": rid, "n_tokens": int(content.sum()), "n_masked": int((content & ~keep).sum()),
                        "turns": turns})
    return entries


@dataclass
class Cleaning:
    """The outcome of ranking: one sidecar entry per record and the counts behind the keep share."""

    entries: list[dict]
    n_ranked: int  # tokens with characters of the records' texts, ranked together
    n_kept: int
    threshold: float  # the lowest kept score (NaN when nothing is kept)
    n_template: int  # end-of-turn tokens, always kept and not ranked
    n_nan: int = 0


def rank_tokens(aligned: AlignedTokens, keep: float, *, count: int | None = None) -> Cleaning:
    """Score every token of ``aligned`` (:func:`token_scores`), keep the global top share (or the top ``count``),
    build the masks."""
    scores = token_scores(aligned.base, aligned.ref)
    content = aligned.content
    kept = global_keep(scores, keep, eligible=content, count=count)
    kept_content = kept & content
    threshold = float(scores[kept_content].min()) if kept_content.any() else float("nan")
    kept |= ~content  # template tokens always train
    return Cleaning(record_entries(aligned, kept), int(content.sum()), int(kept_content.sum()), threshold,
                    int((~content).sum()), int(np.isnan(scores[content]).sum()))


# ---- the sidecar: one JSON line per record, keyed by id ------------------------------------------------------
def sidecar_path(subset) -> Path:
    """``subset.json`` -> ``subset.tokens.jsonl`` (beside the subset)."""
    subset = Path(subset)
    return subset.with_name(subset.stem + SIDECAR_SUFFIX)


def write_sidecar(path, entries: list[dict]) -> Path:
    """Write ``entries`` as JSON lines, atomically. An entry: ``{"id", "n_tokens", "n_masked", "turns": [{"turn":
    k, "masked": [[start, end], ...]}, ...]}`` (``turn`` = index in the record's conversation, spans = characters
    of that turn's text, end exclusive); a record that could not be scored has ``"unscored": reason`` and no turns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for e in entries:
            fh.write(json.dumps(e, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _entry_masks(entry, where: str) -> dict[int, list[tuple[int, int]]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise ValueError(f"{where}: each line must be an object with a string 'id'")
    turns = entry.get("turns", [])
    if not isinstance(turns, list):
        raise ValueError(f"{where} (id {entry['id']!r}): 'turns' must be a list")
    out: dict[int, list[tuple[int, int]]] = {}
    for t in turns:
        k, spans = (t.get("turn"), t.get("masked")) if isinstance(t, dict) else (None, None)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or not isinstance(spans, list):
            raise ValueError(f"{where} (id {entry['id']!r}): a turn needs an integer 'turn' >= 0 and a 'masked' list")
        for s in spans:
            if (not isinstance(s, list) or len(s) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                  for x in s) or not 0 <= s[0] < s[1]):
                raise ValueError(f"{where} (id {entry['id']!r}), turn {k}: span {s!r} is not [start, end] with "
                                 "0 <= start < end")
        out[k] = merge_spans(tuple(s) for s in spans)
    return out


def read_sidecar(path) -> dict[str, dict[int, list[tuple[int, int]]]]:
    """The masks of a sidecar (or an inline-mask list read elsewhere): record id -> turn -> masked spans.

    Raises ``ValueError`` naming the line and the record for a malformed line or a repeated id.
    """
    path = Path(path)
    masks: dict[str, dict[int, list[tuple[int, int]]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from None
            spans = _entry_masks(entry, where)
            if entry["id"] in masks:
                raise ValueError(f"{where}: id {entry['id']!r} appears twice")
            masks[entry["id"]] = spans
    return masks


def check_tokens_fit(aligned: AlignedTokens, records) -> None:
    """Raise ``ValueError`` naming the record when the probed tokens of a record do not cover exactly the text of
    its assistant turns: the record with that id is not the one probed (an edited pool, or records without ids,
    whose ids are their positions, matched against another file)."""
    by_id = {r.id: r for r in records}
    for k, rid in enumerate(aligned.ids):
        rec = by_id[rid]
        sl = slice(int(aligned.offsets[k]), int(aligned.offsets[k + 1]))
        turn, start, end = aligned.turn[sl], aligned.start[sl], aligned.end[sl]
        for t, tt in enumerate(rec.turns):
            if tt.role != "assistant" and not (turn == t).any():
                continue
            lo = len(tt.text) - len(tt.text.lstrip())
            want = [(lo, lo + len(tt.text.strip()))] if tt.role == "assistant" and tt.text.strip() else []
            if merge_spans(zip(start[turn == t], end[turn == t])) != want:
                raise ValueError(f"record {rid!r}: its answer text differs from the probed record with that id (an "
                                 "edited pool, or records without ids matched by position); probe these records")


def check_masks(masks: dict[str, dict[int, list[tuple[int, int]]]], records) -> None:
    """Raise ``ValueError`` naming the record when a mask names a turn that is not an assistant turn of it or a
    span beyond the turn's text (a sidecar of another pool, or of an edited one)."""
    for rec in records:
        for k, spans in masks.get(rec.id, {}).items():
            if k >= len(rec.turns) or rec.turns[k].role != "assistant":
                raise ValueError(f"record {rec.id!r}: the token mask names turn {k}, which is not an assistant turn")
            if spans and spans[-1][1] > len(rec.turns[k].text):
                raise ValueError(f"record {rec.id!r}, turn {k}: masked span {list(spans[-1])} goes past the turn's "
                                 f"{len(rec.turns[k].text)} characters")
