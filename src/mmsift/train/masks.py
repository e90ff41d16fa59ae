"""Token masks in training: masked character spans of assistant turns become label masks.

A token cleaning sidecar (``mmsift tokens``) says, per record and assistant turn, which characters of the turn's
text are masked out of the loss. Any tokenizer that returns an offset mapping turns that into a label mask:
:func:`label_mask` marks a token when it holds characters of an assistant turn and every one of them is masked
(a token that straddles a masked and a trained character keeps its label; end-of-turn markers and every token
outside the turns' texts keep theirs). The same characters are masked whatever the tokenizer, up to that rule at
token edges: spans that fall on the tokenizer's token boundaries come back exactly.

:func:`masked_inputs` applies the masks to mmsift's own encoded inputs (the answer masks the loop trains on), so
:func:`mmsift.train.loop.train_model` trains on the kept tokens only.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from mmsift.charspans import covered, turn_positions

log = logging.getLogger(__name__)


def label_mask(offsets, placements: dict[int, tuple[int, int, int]],
               masked: dict[int, list[tuple[int, int]]]) -> np.ndarray:
    """Boolean per token of ``offsets`` (the tokenizer's (start, end) character offsets in the tokenized string):
    True where the label must be ignored (set to -100).

    ``placements``: assistant turn index -> ``(begin, lo, hi)``: the characters ``lo:hi`` of that turn's text stand
    at ``begin`` in the tokenized string (for a conversation you concatenate yourself, ``(len(text_before), 0,
    len(turn_text))``). ``masked``: turn index -> masked spans, as read from the sidecar
    (:func:`mmsift.token_select.read_sidecar`).
    """
    offsets = [(int(s), int(e)) for s, e in offsets]
    turn, start, end = turn_positions(offsets, placements)
    return covered(start, end, turn, masked)


def mask_record_input(adapter, record, enc, masked: dict[int, list[tuple[int, int]]]):
    """``enc`` (the record's :class:`~mmsift.models.base.Encoded` from ``adapter``) with the masked answer tokens
    taken out of its answer mask. Raises ``ValueError`` naming the record when its tokens cannot be placed."""
    import torch

    from mmsift.models.token_spans import answer_token_spans

    turn, start, end = answer_token_spans(adapter, record.turns, len(record.images))
    # The tokens the loss counts: answer positions after the first (token t is predicted from t - 1).
    positions = torch.nonzero(enc.answer_mask[1:]).flatten() + 1
    if len(positions) != len(turn):
        raise ValueError(f"record {record.id!r}: {len(positions)} answer tokens in its input but {len(turn)} placed "
                         "in its text; its token mask cannot be applied")
    drop = torch.as_tensor(covered(start, end, turn, masked))
    answer = enc.answer_mask.clone()
    answer[positions[drop]] = False
    return dataclasses.replace(enc, answer_mask=answer)


def masked_inputs(adapter, records, encs, masks: dict) -> tuple[list, dict]:
    """The encoded inputs of ``records`` (aligned one to one with ``encs``) with their token masks applied.

    Records without an entry in ``masks`` train as they are. A record left without any trained token is not
    trained on (logged and counted); one without answer tokens to begin with is left as it is. Returns (inputs, counts: records masked, tokens masked, records dropped).
    """
    from mmsift.token_select import check_masks

    if len(records) != len(encs):
        raise ValueError(f"token masks need the records of the encoded inputs: {len(records)} records for "
                         f"{len(encs)} inputs")
    check_masks(masks, records)
    out, counts = [], {"records_masked": 0, "tokens_masked": 0, "records_without_tokens": 0}
    for rec, enc in zip(records, encs):
        if masks.get(rec.id):
            before = int(enc.answer_mask[1:].sum())
            enc = mask_record_input(adapter, rec, enc, masks[rec.id])
            counts["records_masked"] += 1
            counts["tokens_masked"] += before - int(enc.answer_mask[1:].sum())
            if not bool(enc.answer_mask[1:].any()):
                counts["records_without_tokens"] += 1
                log.info("record %s: every answer token is masked; it is not trained on", rec.id)
                continue
        out.append(enc)
    log.info("token masks: %d records, %d answer tokens masked, %d records left without a trained token",
             counts["records_masked"], counts["tokens_masked"], counts["records_without_tokens"])
    return out, counts
