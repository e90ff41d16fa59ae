"""The judge prompts. Every rating prompt asks for one integer in a fixed form (``Rating: <n>``) so that
:mod:`mmsift.judge.parse` can be strict. Changing a prompt changes the cache key, so old answers are not reused.
"""

from __future__ import annotations

from mmsift.data.records import IMAGE_PLACEHOLDER, Record
from mmsift.scorers.mmssr import CAPABILITY_TEXT, STYLE_TEXT
from mmsift.scorers.scale import TASK_TEXT

RATING_FORM = "Answer with a single integer from 0 to 5 and nothing else, in the form: Rating: <n>"

# The paper's capability prompt, verbatim, with {capability} filled in.
MMSSR_RATING = ("On a scale of 0 to 5, how do you rate the helpfulness of the VQA instance in training a "
                "Multimodal Large Language Model for {capability}?")

MMSSR_STYLE = (
    "Which interaction styles does this VQA instance use? Choose every style that applies from this list: "
    + "; ".join(STYLE_TEXT.values())
    + ". Answer with the style names from the list, separated by commas, and nothing else, in the form: "
    "Styles: <style>, <style> (or Styles: none)"
)

SCALE_TASK = ("Which vision-language task does this VQA instance belong to? Choose exactly one of: "
              + "; ".join(TASK_TEXT.values()) + ". Answer with the task name from the list and nothing else, in "
              "the form: Task: <task>")
SCALE_CAPTION_GENERAL = ("Describe the image in a few sentences: the scene, the main objects and their "
                         "attributes, any visible text, and the image style. Answer in the form: Caption: <text>")
SCALE_CAPTION_TASK = ("This image is used for a vision-language task of type '{task}'. Describe the details of "
                      "the image that matter for that task. Answer in the form: Caption: <text>")

# SCALE's text-only criteria: the judge sees the two captions instead of the image.
SCALE_CRITERIA = {
    "alignment": "how well the conversation matches the image content described by the captions "
                 "(0 = unrelated or contradicting, 5 = fully consistent)",
    "clarity": "how clear and unambiguous the questions and answers are (0 = confusing or misleading, "
               "5 = perfectly clear)",
    "coherence": "how coherent, fluent and well-formed the conversation text is (0 = incoherent, 5 = fluent)",
    "image_clarity": "how clear and informative the image is, judging from the captions (0 = blank, blurry or "
                     "uninformative, 5 = clear and rich in content)",
}
SCALE_RATING = ("Image captions:\nGeneral: {general}\nTask-specific: {specific}\n\nConversation:\n{conversation}\n\n"
                "On a scale of 0 to 5, rate {criterion}.")


def conversation_text(record: Record) -> str:
    """The conversation as plain text (``Question:`` / ``Answer:`` lines), image placeholders removed."""
    lines = []
    for turn in record.turns:
        text = turn.text.replace(IMAGE_PLACEHOLDER, "").strip()
        label = {"user": "Question", "assistant": "Answer"}.get(turn.role, "System")
        lines.append(f"{label}: {text}")
    return "\n".join(lines)


def mmssr_rating_prompt(record: Record, capability: str) -> str:
    question = MMSSR_RATING.format(capability=CAPABILITY_TEXT[capability])
    return f"VQA instance:\n{conversation_text(record)}\n\n{question}\n{RATING_FORM}"


def mmssr_style_prompt(record: Record) -> str:
    return f"VQA instance:\n{conversation_text(record)}\n\n{MMSSR_STYLE}"


def scale_task_prompt(record: Record) -> str:
    return f"VQA instance:\n{conversation_text(record)}\n\n{SCALE_TASK}"


def scale_caption_prompts(task: str) -> tuple[str, str]:
    return SCALE_CAPTION_GENERAL, SCALE_CAPTION_TASK.format(task=task)


def scale_rating_prompt(record: Record, criterion: str, general: str, specific: str) -> str:
    body = SCALE_RATING.format(general=general, specific=specific, conversation=conversation_text(record),
                               criterion=SCALE_CRITERIA[criterion])
    return f"{body}\n{RATING_FORM}"
