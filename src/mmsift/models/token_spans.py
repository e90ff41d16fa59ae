"""Where each answer token's characters are in its assistant turn: the tokenizer-free address of a token.

A token mask for token cleaning is written as character spans of each assistant turn's text (``Turn.text``, the
text exactly as the record holds it), so it means the same thing for every tokenizer. This module converts between
a tokenizer's offset mapping over a rendered conversation and those turn-relative character positions.

An *answer placement* ``(begin, lo, hi)`` of assistant turn k says that the characters ``lo:hi`` of the turn's text
appear verbatim at ``begin:begin + hi - lo`` of the tokenized string (chat templates strip the surrounding
whitespace of a turn, so ``lo`` is the count of leading whitespace characters the template dropped). A token whose
offsets overlap a placement gets that turn and its clipped characters, mapped back into the turn's text; a token
that overlaps no placement (an end-of-turn marker, a role word of the template) has turn -1.

Pure Python and numpy: the probe (which writes the spans of the tokens it scored), the trainer (which turns masked
spans into label masks) and user code with any Hugging Face tokenizer share this one mapping.
"""

from __future__ import annotations

import bisect

import numpy as np

NO_TURN = -1


def turn_positions(offsets, placements: dict[int, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Per token of ``offsets`` ((start, end) character offsets in the tokenized string): (turn, start, end) with
    start/end in that turn's text, or (-1, -1, -1) for a token outside every placement (see the module doc).

    A token that straddles the edge of a turn keeps only its characters inside the turn.
    """
    spans = sorted((begin, begin + hi - lo, lo, turn) for turn, (begin, lo, hi) in placements.items())
    starts = [s[0] for s in spans]
    n = len(offsets)
    turn = np.full(n, NO_TURN, dtype=np.int32)
    start = np.full(n, -1, dtype=np.int32)
    end = np.full(n, -1, dtype=np.int32)
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        # The last placement that begins before the token ends is the only one it can overlap (they are disjoint).
        k = bisect.bisect_left(starts, e) - 1
        if k < 0:
            continue
        begin, stop, lo, which = spans[k]
        cs, ce = max(s, begin), min(e, stop)
        if ce > cs:
            turn[t], start[t], end[t] = which, cs - begin + lo, ce - begin + lo
    return turn, start, end


def adapter_placements(adapter, turns, n_images: int) -> tuple[str, dict[int, tuple[int, int, int]],
                                                                list[tuple[int, int]]]:
    """The rendered conversation, the placement of each assistant turn's text in it, and the adapter's answer spans.

    Built on the adapter's own rendering (``FamilyAdapter.messages`` and ``answer_spans``), so the placements are the
    ones the probe and the trainer see. Raises ``ValueError`` when the template does not write a turn's text
    verbatim (the span would then not map to the record's characters).
    """
    messages = adapter.messages(turns, n_images)
    text, spans = adapter.answer_spans(messages)
    assistant = [k for k, t in enumerate(turns) if t.role == "assistant"]
    if len(messages) != len(turns):
        raise ValueError(f"the chat messages ({len(messages)}) do not match the turns ({len(turns)})")
    placements: dict[int, tuple[int, int, int]] = {}
    # answer_spans gives one span per assistant turn that emits anything, in order; each starts where the turn's
    # stripped text starts in the rendered string.
    remaining = list(spans)
    for k in assistant:
        raw = turns[k].text
        content = raw.strip()
        if not remaining:
            raise ValueError(f"turn {k}: the chat template writes no answer for it")
        a, _ = remaining.pop(0)
        if content and text[a:a + len(content)] != content:
            raise ValueError(f"turn {k}: the chat template does not write the answer text verbatim")
        lo = len(raw) - len(raw.lstrip())
        placements[k] = (a, lo, lo + len(content))
    return text, placements, spans


def answer_token_spans(adapter, turns, n_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(turn, start, end) of every answer token of the record, in the order of its answer tokens in the encoded
    input (the order of ``token_losses``): start/end are characters of that turn's text; an answer token with no
    character of the text (the end-of-turn marker the template writes) has turn -1 and start = end = -1.

    The answer tokens are those the adapter masks: tokens of the rendered text (image placeholders unexpanded)
    overlapping an answer span. The processor's image expansion inserts no answer tokens, so their order is the
    same in the model's input.
    """
    text, placements, spans = adapter_placements(adapter, turns, n_images)
    enc = adapter.tokenizer(text, add_special_tokens=adapter.add_special_tokens, return_offsets_mapping=True)
    offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    is_answer = [e > s and any(s < b and e > a for a, b in spans) for s, e in offsets]
    answer_offsets = [o for o, keep in zip(offsets, is_answer) if keep]
    return turn_positions(answer_offsets, placements)


def merge_spans(spans) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-touching spans covering exactly the characters of ``spans``."""
    out: list[list[int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in spans if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def covered(start: np.ndarray, end: np.ndarray, turn: np.ndarray, masked: dict[int, list[tuple[int, int]]]
            ) -> np.ndarray:
    """Per token: True when it has characters in a turn and every one of them lies in that turn's masked spans."""
    out = np.zeros(len(turn), dtype=bool)
    merged = {int(k): merge_spans(v) for k, v in masked.items()}
    starts = {k: [s for s, _ in v] for k, v in merged.items()}
    for t in range(len(turn)):
        spans = merged.get(int(turn[t]))
        if not spans or turn[t] == NO_TURN:
            continue
        # Merged spans are disjoint and do not touch: a token inside their union is inside one of them.
        k = bisect.bisect_right(starts[int(turn[t])], int(start[t])) - 1
        out[t] = k >= 0 and spans[k][1] >= int(end[t])
    return out
