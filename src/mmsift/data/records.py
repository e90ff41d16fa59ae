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


def image_field(raw: dict, layout=None):
    """The raw image value of a record (see :func:`mmsift.data.formats.image_value`); None for text-only."""
    from mmsift.data.formats import LLAVA, image_value

    return image_value(raw, layout or LLAVA)


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


def image_refs(value) -> tuple[list[str], list]:
    """``(names, embedded)`` of an image value: a path, an ``{"bytes", "path"}`` struct, or a list of these.

    ``names`` are the paths (for an embedded image: its ``path`` field, often just a file name, or ""), and
    ``embedded`` holds an :class:`EmbeddedImage` per embedded image (None for a path), or is empty when no image
    is embedded. Lenient on purpose: the typed view keeps what is usable; validate.py reports the rest.
    """
    names: list[str] = []
    embedded: list = []
    items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    for item in items:
        if isinstance(item, str):
            if item:
                names.append(item)
                embedded.append(None)
        elif isinstance(item, dict):
            data, path = item.get("bytes"), item.get("path")
            if isinstance(data, EmbeddedImage):
                names.append(path if isinstance(path, str) else "")
                embedded.append(data)
            elif data is None and isinstance(path, str) and path:
                names.append(path)
                embedded.append(None)
    return names, (embedded if any(e is not None for e in embedded) else [])


def record_id(raw: dict, index: int) -> str:
    """The id downstream code uses: ``raw["id"]`` as a string (ints accepted), else ``str(index)``."""
    value = raw.get("id")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return str(index)


def parse_record(raw: dict, index: int, *, line: int | None = None, layout=None) -> Record:
    """The typed view of one raw record (never raises; structural defects are reported by ``validate``).

    ``layout``: a :class:`mmsift.data.formats.Layout` every record must follow; None detects it per record.
    """
    from mmsift.data.formats import LLAVA, TurnError, detect, image_value, read_turn

    found = detect(raw, layout)
    turns: list[Turn] = []
    part_images: list[str] = []
    if found is not None:
        conv = raw.get(found.messages)
        for item in conv if isinstance(conv, (list, tuple)) else []:
            try:
                speaker, text, paths = read_turn(item, found)
            except TurnError:
                continue
            turns.append(Turn(role=found.role_of(speaker) or speaker, text=text))
            part_images.extend(paths)
    # A record of no known layout still gets its images (its task comes from their folders).
    names, embedded = image_refs(image_value(raw, found or LLAVA))
    if not names and part_images:
        names = part_images
    known = KNOWN_KEYS + ((found.messages,) + ((found.images,) if found.images else ()) if found else ())
    return Record(
        id=record_id(raw, index),
        index=index,
        images=names,
        turns=turns,
        raw=raw,
        line=line,
        extra={k: v for k, v in raw.items() if k not in known},
        layout=found,
        embedded=embedded,
    )
