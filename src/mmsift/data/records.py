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
