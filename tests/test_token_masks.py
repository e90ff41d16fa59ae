"""Character masks into label masks: the same characters whatever the tokenizer; mmsift's inputs and loop."""

from __future__ import annotations

import numpy as np
import pytest
from test_probe_helpers import loaded, pool_records, pool_texts, probe_setup  # noqa: F401  (fixtures)

from mmsift.charspans import merge_spans, turn_positions
from mmsift.models.proxy import train_tokenizer
from mmsift.train.masks import label_mask

ANSWERS = ["The red square sits left of a small blue circle, both on a white background.",
           "Yes; the circle is darker than the square, and it overlaps the top edge slightly."]
QUESTIONS = ["<image>\nDescribe the picture in detail.", "Is the circle darker?"]


def _conversation():
    """A LLaVA-style string built by concatenation, and where each answer's text stands in it (turns 1 and 3)."""
    text, placements = "", {}
    for k, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        text += f"USER: {q} ASSISTANT: "
        placements[2 * k + 1] = (len(text), 0, len(a))
        text += a + "</s>"
    return text, placements


def _char_mask(offsets, placements, drop) -> dict[int, list[tuple[int, int]]]:
    """The characters (per turn) of the tokens a label mask drops."""
    turn, start, end = turn_positions(offsets, placements)
    out: dict[int, list] = {}
    for t in np.flatnonzero(drop):
        out.setdefault(int(turn[t]), []).append((int(start[t]), int(end[t])))
    return {k: merge_spans(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def tokenizers():
    corpus = [t for t in QUESTIONS + ANSWERS] * 3 + pool_texts(pool_records(18))
    small, large = train_tokenizer(corpus, vocab_size=300), train_tokenizer(corpus, vocab_size=1200)
    text, _ = _conversation()
    # Two different tokenizations of the same text, or the test would prove nothing.
    assert len(small(text)["input_ids"]) > len(large(text)["input_ids"]) + 20
    return small, large


def _word_spans(answer: str, words: list[int]) -> list[tuple[int, int]]:
    """Spans of the chosen words, each with the space before it (a byte-level pre-token: never split across)."""
    cuts = [0] + [k for k, ch in enumerate(answer) if ch == " "] + [len(answer)]
    return merge_spans((cuts[w], cuts[w + 1]) for w in words)


def test_spans_round_trip_through_two_tokenizers(tokenizers):
    text, placements = _conversation()
    masked = {1: _word_spans(ANSWERS[0], [1, 2, 7, 8, 9]), 3: _word_spans(ANSWERS[1], [0, 4, 5, 6])}
    back = []
    for tok in tokenizers:
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
        drop = label_mask(offsets, placements, masked)
        assert 0 < drop.sum() < len(drop)
        back.append(_char_mask(offsets, placements, drop))
    assert back[0] == back[1] == masked


def test_spans_inside_a_token_keep_its_label(tokenizers):
    """Spans cut by one tokenizer: another tokenizer masks only tokens wholly inside them (never more)."""
    small, large = tokenizers
    text, placements = _conversation()
    offsets_l = large(text, return_offsets_mapping=True)["offset_mapping"]
    turn, start, end = turn_positions(offsets_l, placements)
    # mask every other answer token of the large vocabulary
    picks = [t for t in np.flatnonzero(turn >= 0)][::2]
    masked = {}
    for t in picks:
        masked.setdefault(int(turn[t]), []).append((int(start[t]), int(end[t])))
    masked = {k: merge_spans(v) for k, v in masked.items()}
    assert _char_mask(offsets_l, placements, label_mask(offsets_l, placements, masked)) == masked
    offsets_s = small(text, return_offsets_mapping=True)["offset_mapping"]
    got = _char_mask(offsets_s, placements, label_mask(offsets_s, placements, masked))
    for k, spans in got.items():
        for s, e in spans:  # every character the small tokenizer masks was masked by the spans
            assert any(a <= s and e <= b for a, b in masked[k]), (k, s, e)
    # end-of-turn markers and questions never lose their labels
    drop = label_mask(offsets_s, placements, {1: [(0, len(ANSWERS[0]))], 3: [(0, len(ANSWERS[1]))]})
    kept_text = "".join(text[s:e] for (s, e), d in zip(offsets_s, drop) if not d)
    assert "</s>" in kept_text and "Describe the picture" in kept_text and "The red" not in kept_text


def test_answer_tokens_of_the_adapter_are_placed_in_the_text(loaded):  # noqa: F811
    from PIL import Image

    from mmsift.data.formats import parse_record
    from mmsift.models.token_spans import answer_token_spans
    from mmsift.train.masks import mask_record_input

    raw = pool_records(6)
    raw[0]["conversations"][1]["value"] = "  Red, with a façade of ünïcode.  "  # whitespace the template strips
    for k, r in enumerate(raw):
        rec = parse_record(r, k)
        enc = loaded.adapter.encode(rec.turns, [Image.new("RGB", (32, 32))] * len(rec.images))
        turn, start, end = answer_token_spans(loaded.adapter, rec.turns, len(rec.images))
        assert len(turn) == int(enc.answer_mask[1:].sum())
        for t, s, e in zip(turn, start, end):
            if t >= 0:
                assert rec.turns[t].role == "assistant" and 0 <= s < e <= len(rec.turns[t].text)
        # the placed tokens cover each answer's text exactly (without the whitespace the template strips)
        for k, t in enumerate(rec.turns):
            if t.role == "assistant":
                lo = len(t.text) - len(t.text.lstrip())
                assert merge_spans(zip(start[turn == k], end[turn == k])) == [(lo, lo + len(t.text.strip()))]
        first = int(np.flatnonzero(turn >= 0)[0])
        masked = {int(turn[first]): [(int(start[first]), int(end[first]))]}
        out = mask_record_input(loaded.adapter, rec, enc, masked)
        assert int(enc.answer_mask.sum()) - int(out.answer_mask.sum()) >= 1
        assert bool((out.answer_mask <= enc.answer_mask).all())
        assert bool((mask_record_input(loaded.adapter, rec, enc, {}).answer_mask == enc.answer_mask).all())
