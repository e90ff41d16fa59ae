"""The typed view of a pool record. The record itself (``raw``) is kept exactly as the user wrote it."""

from __future__ import annotations

from dataclasses import dataclass, field

# Speaker names seen in LLaVA-style pools, mapped to chat-template roles.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    role: str  # "user", "assistant" or "system"
    text: str


@dataclass
class Record:
    """One sample. ``index`` is its position in the pool, ``line`` its 1-based line in a JSONL file."""

    id: str
    index: int
    images: list[str]
    turns: list[Turn]
    raw: dict
    task: str | None = None
    line: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_rounds(self) -> int:
        """Conversation rounds: user turns followed by an assistant turn."""
        return sum(1 for a, b in zip(self.turns, self.turns[1:]) if a.role == "user" and b.role == "assistant")

    @property
    def is_text_only(self) -> bool:
        return not self.images


# Keys the typed view reads; every other key of a record goes to ``Record.extra`` (and stays in ``raw``).
KNOWN_KEYS = ("id", "image", "images", "conversations")
ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pool. ``index``/``line`` are None where the problem has no record (a broken line)."""

    kind: str
    severity: str  # ERROR or WARNING
    record_id: str | None
    index: int | None
    line: int | None
    message: str

    def where(self) -> str:
        parts = []
        if self.record_id is not None:
            parts.append(f"id {self.record_id!r}")
        if self.index is not None:
            parts.append(f"index {self.index}")
        if self.line is not None:
            parts.append(f"line {self.line}")
        return ", ".join(parts) or "pool"


def image_field(raw: dict):
    """The raw image value of a record: ``image`` if set, else ``images``; None for a text-only record."""
    value = raw.get("image")
    if value is None or value == [] or value == "":
        alt = raw.get("images")
        if alt is not None and alt != []:
            return alt
    return value


def _image_list(value) -> list[str]:
    # Lenient on purpose: the typed view keeps what is usable; validate.py reports the rest.
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _turns(conversations) -> list[Turn]:
    if not isinstance(conversations, (list, tuple)):
        return []
    turns = []
    for item in conversations:
        if not isinstance(item, dict):
            continue
        speaker = item.get("from", item.get("role"))
        text = item.get("value", item.get("content"))
        speaker = speaker if isinstance(speaker, str) else ""
        role = ROLE_ALIASES.get(speaker.strip().lower(), speaker)
        turns.append(Turn(role=role, text=text if isinstance(text, str) else ""))
    return turns


def record_id(raw: dict, index: int) -> str:
    """The id downstream code uses: ``raw["id"]`` as a string (ints accepted), else ``str(index)``."""
    value = raw.get("id")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return str(index)


def parse_record(raw: dict, index: int, *, line: int | None = None) -> Record:
    """The typed view of one raw record (never raises; structural defects are reported by ``validate``)."""
    return Record(
        id=record_id(raw, index),
        index=index,
        images=_image_list(image_field(raw)),
        turns=_turns(raw.get("conversations")),
        raw=raw,
        line=line,
        extra={k: v for k, v in raw.items() if k not in KNOWN_KEYS},
    )
