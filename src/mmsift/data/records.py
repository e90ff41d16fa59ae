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
    layout: object = None  # the record's Layout (mmsift.data.formats); None when it fits no known layout
    embedded: list = field(default_factory=list)  # per image: EmbeddedImage or None (a path); [] if none embedded

    @property
    def n_rounds(self) -> int:
        """Conversation rounds: user turns followed by an assistant turn."""
        return sum(1 for a, b in zip(self.turns, self.turns[1:]) if a.role == "user" and b.role == "assistant")

    @property
    def is_text_only(self) -> bool:
        return not self.images


# Keys the typed view reads; every other key of a record goes to ``Record.extra`` (and stays in ``raw``).
KNOWN_KEYS = ("id", "image", "images", "conversations", "messages")
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


@dataclass(frozen=True)
class EmbeddedImage:
    """Where the bytes of an image stored inside a Parquet file are: read on demand, never kept with the record.

    ``crc32`` and ``nbytes`` identify the content (an edited pool gets another probe fingerprint).
    """

    source: str  # the Parquet file
    row_group: int
    row: int  # within the row group
    column: str
    item: int | None  # position in a list column; None for a column holding one image
    nbytes: int
    crc32: int

    def __repr__(self) -> str:
        return f"<embedded image, {self.nbytes} bytes, crc32 {self.crc32:08x}>"
