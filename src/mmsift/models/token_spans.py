"""Where each answer token of a record is in the record's own text, as the adapter renders and tokenizes it.

:func:`answer_token_spans` gives, for every answer token the loss counts (in the order ``token_losses`` lists
them), its assistant turn and its characters in that turn's text (``mmsift.charspans`` explains the mapping). The
probe stores these next to the per-token losses; the trainer uses them to turn character masks into label masks
on the inputs it trains on.
"""

from __future__ import annotations

import numpy as np

from mmsift.charspans import turn_positions


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
