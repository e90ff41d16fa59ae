"""The per-token signal ``token_loss``: each answer token's cross-entropy with its characters in its assistant turn.

The forward pass already computes every answer token's loss (``models.losses.token_losses``); this module keeps
them per sample (:func:`split_token_losses`) and, when the shard is written, pairs each with the characters it
covers in the record's own text (:func:`shard_token_table`, via ``models.token_spans``), so the stored table says
which words of an answer a model finds easy or hard whatever tokenizer reads it later. Nothing here holds hidden
states: the cost is 20 bytes per answer token.
"""

from __future__ import annotations

import logging

import numpy as np

from mmsift.store import TOKEN_SIGNAL, TokenTable

log = logging.getLogger(__name__)

TOKEN_SIGNALS = (TOKEN_SIGNAL,)


def split_token_losses(rows, ce, b: int) -> np.ndarray:
    """The answer-token losses of each of ``b`` samples (``rows`` from ``token_losses``, in token order) as an
    object array of float32 arrays."""
    rows = rows.cpu().numpy()
    values = ce.detach().float().cpu().numpy()
    # token_losses lists the answer tokens row by row (nonzero of a row-major mask), so each row is one run.
    cuts = np.searchsorted(rows, np.arange(b + 1), side="left")
    out = np.empty(b, dtype=object)
    for r in range(b):
        out[r] = values[cuts[r]:cuts[r + 1]].astype(np.float32)
    return out


def shard_token_table(adapter, records, losses) -> tuple[TokenTable, list[tuple[str, str]]]:
    """The token table of a shard's written rows (``records`` in row order, ``losses`` their per-token losses), and
    the records whose tokens could not be placed in their text, as (id, reason); those rows get no tokens (their
    scalar signals are kept) and are logged."""
    from mmsift.models.token_spans import answer_token_spans

    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    problems: list[tuple[str, str]] = []
    for row, (rec, loss) in enumerate(zip(records, losses)):
        try:
            turn, start, end = answer_token_spans(adapter, rec.turns, len(rec.images))
        except Exception as e:  # a template this mapping cannot follow: the record loses only its token signal
            problems.append((rec.id, f"{type(e).__name__}: {e}"))
            continue
        if len(turn) != len(loss):
            problems.append((rec.id, f"{len(loss)} scored answer tokens but {len(turn)} placed in the text"))
            continue
        parts.append((row, turn, start, end, np.asarray(loss, dtype=np.float32)))
    for rid, why in problems:
        log.warning("record %s: no per-token losses stored: %s", rid, why)
    if not parts:
        return TokenTable.empty(), problems
    return TokenTable(row=np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
                      turn=np.concatenate([p[1] for p in parts]), start=np.concatenate([p[2] for p in parts]),
                      end=np.concatenate([p[3] for p in parts]), loss=np.concatenate([p[4] for p in parts])), problems
