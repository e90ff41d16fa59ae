"""Strict parsing of judge answers. An answer that is not in the asked-for format is *unparseable* (None):
it is counted and its raw text kept in the cache, never guessed at (no "first digit in the text")."""

from __future__ import annotations

import re

from mmsift.scorers.mmssr import STYLE_TEXT
from mmsift.scorers.scale import TASK_TEXT

# "4", "4.", "Rating: 4", "rating = 4" -- one integer 0-5 and nothing else.
_RATING = re.compile(r"^(?:rating\s*[:=]\s*)?([0-5])\s*\.?$", re.IGNORECASE)
_STYLES_PREFIX = re.compile(r"^styles?\s*:\s*", re.IGNORECASE)
_CAPTION_PREFIX = re.compile(r"^caption\s*:\s*", re.IGNORECASE)
_TASK_PREFIX = re.compile(r"^task\s*:\s*", re.IGNORECASE)
_TASK_NAMES = {alias.lower(): key for key, text in TASK_TEXT.items() for alias in (key, key.replace("_", " "), text)}
# Accepted spellings of each style: its column name, its display text, and the display text without the
# parenthesised gloss ("chain-of-thought (step-by-step)" -> "chain-of-thought").
_STYLE_NAMES: dict[str, str] = {}
for _key, _text in STYLE_TEXT.items():
    for _alias in (_key, _key.replace("_", " "), _text, re.sub(r"\s*\(.*\)$", "", _text)):
        _STYLE_NAMES[_alias.lower()] = _key
MAX_CAPTION_CHARS = 4000


def parse_rating(text: str | None) -> int | None:
    """The integer 0-5 of an answer in the form ``Rating: <n>`` (or just ``<n>``); None otherwise."""
    if text is None:
        return None
    m = _RATING.match(text.strip())
    return int(m.group(1)) if m else None


def parse_styles(text: str | None) -> frozenset[str] | None:
    """The set of style keys of an answer ``Styles: a, b`` (``none`` = no style); None if any item is unknown."""
    if text is None:
        return None
    body = _STYLES_PREFIX.sub("", text.strip()).rstrip(".").strip()
    if not body:
        return None
    items = [i.strip().strip(".").strip().lower() for i in body.split(",")]
    if items == ["none"]:
        return frozenset()
    keys = [_STYLE_NAMES.get(i) for i in items]
    if any(k is None for k in keys):
        return None
    return frozenset(keys)


def parse_caption(text: str | None) -> str | None:
    """A caption: the stripped answer without a leading ``Caption:``; None when empty or absurdly long."""
    if text is None:
        return None
    body = _CAPTION_PREFIX.sub("", text.strip()).strip()
    if not body or len(body) > MAX_CAPTION_CHARS:
        return None
    return body


def parse_task(text: str | None) -> str | None:
    """The task key of an answer ``Task: <task>`` naming exactly one task of the list; None otherwise."""
    if text is None:
        return None
    body = _TASK_PREFIX.sub("", text.strip()).strip().rstrip(".").strip().lower()
    return _TASK_NAMES.get(body)
