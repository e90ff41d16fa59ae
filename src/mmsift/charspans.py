"""Character spans of assistant turns: the tokenizer-free address of a token, and the algebra of masked spans.

A token mask for token cleaning is written as character spans of each assistant turn's text (``Turn.text``, the
text exactly as the record holds it), so it means the same characters for every tokenizer. An *answer placement*
``(begin, lo, hi)`` of assistant turn k says that the characters ``lo:hi`` of the turn's text appear verbatim at
``begin:begin + hi - lo`` of a tokenized string (chat templates strip a turn's surrounding whitespace, so ``lo``
counts the leading whitespace the template dropped). :func:`turn_positions` maps a tokenizer's offset mapping to
(turn, start, end) in the turns' texts; :func:`covered` says which tokens lie wholly inside masked spans.

Pure Python and numpy, at the bottom of the package: the probe (spans of the tokens it scores), the token ranking
(masks from kept tokens), the trainer (label masks from masks) and user code with any Hugging Face tokenizer share
this one mapping.
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


def subtract_spans(spans, remove) -> list[tuple[int, int]]:
    """The characters of ``spans`` (merged, sorted) that are not in ``remove`` (merged, sorted), as spans."""
    out: list[tuple[int, int]] = []
    j = 0
    for s, e in spans:
        while j < len(remove) and remove[j][1] <= s:
            j += 1
        k, cur = j, s
        while k < len(remove) and remove[k][0] < e:
            if remove[k][0] > cur:
                out.append((cur, remove[k][0]))
            cur = max(cur, remove[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
    return out
