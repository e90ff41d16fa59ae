"""Strict answer parsing and the prompts: a rating is one integer 0-5 in the asked form, or it is unparseable."""

from __future__ import annotations

import pytest

from mmsift.data.records import Record, Turn
from mmsift.judge import prompts
from mmsift.judge.backends import JudgeRequest
from mmsift.judge.cache import request_key
from mmsift.judge.parse import parse_caption, parse_rating, parse_styles, parse_task


@pytest.mark.parametrize("text,value", [
    ("Rating: 4", 4), ("rating:0", 0), ("  5 ", 5), ("3.", 3), ("Rating = 2", 2), ("RATING: 5\n", 5),
])
def test_ratings_in_the_asked_form(text, value):
    assert parse_rating(text) == value


@pytest.mark.parametrize("text", [
    None, "", "Rating: 6", "Rating: -1", "4/5", "3.5", "I'd say 4", "Rating: 4 because it is good", "44",
    "Rating: four", "Score: 4 or 5", "Rating: 4\nRating: 5",
])
def test_anything_else_is_unparseable(text):
    assert parse_rating(text) is None


def test_styles():
    assert parse_styles("Styles: yes/no, short description") == {"yes_no", "short_description"}
    assert parse_styles("chain-of-thought, multi_choice.") == {"chain_of_thought", "multi_choice"}
    assert parse_styles("Styles: none") == frozenset()
    assert parse_styles("Styles: yes/no, poetry") is None
    assert parse_styles("Styles:") is None and parse_styles(None) is None


def test_captions():
    assert parse_caption("Caption: a dog on grass") == "a dog on grass"
    assert parse_caption("  a cat ") == "a cat"
    assert parse_caption("Caption:   ") is None and parse_caption("x" * 5000) is None


def test_prompts_carry_the_paper_question_and_the_conversation():
    turns = [Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A cat.")]
    rec = Record(id="a", index=0, images=["x.png"], turns=turns, raw={})
    p = prompts.mmssr_rating_prompt(rec, "stem_knowledge")
    assert ("On a scale of 0 to 5, how do you rate the helpfulness of the VQA instance in training a Multimodal "
            "Large Language Model for STEM knowledge?") in p
    assert "Question: What is it?\nAnswer: A cat." in p and "<image>" not in p
    assert "Styles:" in prompts.mmssr_style_prompt(rec)


def test_cache_key_depends_on_model_prompt_and_image_bytes():
    r = JudgeRequest("p", image_hashes=("aa",))
    assert request_key("m", r) == request_key("m", JudgeRequest("p", image_hashes=("aa",)))
    assert len({request_key("m", r), request_key("m2", r), request_key("m", JudgeRequest("q", image_hashes=("aa",))),
                request_key("m", JudgeRequest("p", image_hashes=("bb",)))}) == 4


def test_tasks():
    assert parse_task("Task: text reading (OCR)") == "ocr"
    assert parse_task("counting.") == "counting" and parse_task("Task: general_vqa") == "general_vqa"
    assert parse_task("Task: counting, ocr") is None and parse_task("Task: dancing") is None
    assert parse_task(None) is None
