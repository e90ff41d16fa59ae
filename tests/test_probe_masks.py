"""Answer masks: exactly the assistant text plus its end-of-turn token, for every conversation shape."""

from __future__ import annotations

import pytest
from test_probe_helpers import loaded, probe_setup  # noqa: F401  (fixtures)

from mmsift.data.records import Turn
from mmsift.models.base import EncodeError


def runs(mask):
    """Contiguous runs of True positions."""
    out, cur = [], []
    for i, m in enumerate(mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def blank(k):
    from PIL import Image

    return Image.new("RGB", (30 + k, 20), (10 * k, 100, 200))


CASES = {
    "single": ([Turn("user", "<image>\nWhat colour is it?"), Turn("assistant", "Blue.")], 1),
    "multi_turn": ([Turn("user", "<image>\nIs there a circle?"), Turn("assistant", "Yes, a big one."),
                    Turn("user", "What colour?"), Turn("assistant", "Red\nmostly.")], 1),
    "text_only": ([Turn("user", "Say hi."), Turn("assistant", "Hi there!")], 0),
    "multi_image": ([Turn("user", "<image>\n<image>\nSame?"), Turn("assistant", "No.")], 2),
    "system": ([Turn("system", "Be brief."), Turn("user", "<image>\nWhat?"), Turn("assistant", "A tree.")], 1),
    "no_placeholder": ([Turn("user", "What is it?"), Turn("assistant", "A cat.")], 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_answer_mask_is_exactly_the_answers(loaded, case):  # noqa: F811
    turns, n_images = CASES[case]
    ad = loaded.adapter
    enc = ad.encode(turns, [blank(k) for k in range(n_images)])
    ids = enc.input_ids.tolist()
    mask = enc.answer_mask.tolist()
    answers = [t.text for t in turns if t.role == "assistant"]
    got = [ad.tokenizer.decode([ids[i] for i in run]) for run in runs(mask)]
    assert got == [a + ad.tokenizer.eos_token for a in answers]
    # Image tokens: 16 per image (32 px, patch 8), never answer tokens.
    assert int(enc.image_mask.sum()) == 16 * n_images
    assert not (enc.image_mask & enc.answer_mask).any()
    assert ("pixel_values" in enc.extra) == (n_images > 0)
    if n_images:
        assert enc.extra["pixel_values"].shape == (n_images, 3, 32, 32)
    # Everything before the first answer is prompt: it holds the rendered question, unmasked.
    first = runs(mask)[0][0]
    prompt = ad.tokenizer.decode([i for i in ids[:first] if i != ad.image_token_id])
    first_q = next(t.text for t in turns if t.role == "user")
    assert first_q.replace("<image>\n", "") in prompt


def test_prefix_rendering_matches_template(loaded):  # noqa: F811
    ad = loaded.adapter
    msgs = ad.messages(CASES["multi_turn"][0], 1)
    text, spans = ad.answer_spans(msgs)
    assert text == "<s>USER: <image>\nIs there a circle? ASSISTANT: Yes, a big one.</s>USER: What colour? " \
                   "ASSISTANT: Red\nmostly.</s>"
    assert [text[a:b] for a, b in spans] == ["Yes, a big one.</s>", "Red\nmostly.</s>"]


def test_bad_placeholders_are_encode_errors(loaded):  # noqa: F811
    with pytest.raises(EncodeError, match="placeholders"):
        loaded.adapter.encode([Turn("user", "<image>\n<image>\nx"), Turn("assistant", "y")], [blank(0)])
    with pytest.raises(EncodeError, match="assistant"):
        loaded.adapter.encode([Turn("user", "x"), Turn("assistant", "<image> y")], [])
