"""Record layouts, and raw records into :class:`~mmsift.data.records.Record`: where a record keeps its
conversation, its turns' speaker and text, and its images (:func:`parse_record` reads one raw record).

Two layouts are built in and detected per record:

- ``llava``: ``conversations`` of ``{"from": "human"|"gpt", "value": ...}`` and ``image`` (a path or a list);
- ``sharegpt``: ``messages`` of ``{"role": "user"|"assistant", "content": ...}`` and ``images`` (a list), as
  LLaMA-Factory and OpenAI-style chat data write them.

In both, a turn's text may also be a list of typed parts instead of a string: OpenAI-style
(``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ...}}``, ``{"type": "image"}``)
or LLaMA-Factory's (``{"type": "text" | "image_url", "value": ...}``). An image part becomes an ``<image>``
placeholder at its place in the text; when the record has no image column, the paths in the image parts are its
images.

A pool with renamed columns or tags is described by a :class:`Layout` (LLaMA-Factory's ``dataset_info.json``
entry: ``columns`` ``messages``/``images``, ``tags`` ``role_tag``/``content_tag``/``user_tag``/
``assistant_tag``/``system_tag``); :func:`layout_for_pool` finds that entry beside the pool file by itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mmsift.data.records import IMAGE_PLACEHOLDER, KNOWN_KEYS, ROLE_ALIASES, EmbeddedImage, Record, Turn

log = logging.getLogger(__name__)

TEXT_PART_TYPES = ("text", "input_text")
IMAGE_PART_TYPES = ("image", "image_url", "input_image")


class TurnError(ValueError):
    """A turn that cannot be read as speaker + text (the message says why)."""


@dataclass(frozen=True)
class Layout:
    """Where a record keeps its conversation, its images and its turns' speaker and text."""

    name: str
    messages: str
    images: str | None
    role_tag: str
    content_tag: str
    user_tag: str
    assistant_tag: str
    system_tag: str = "system"

    def describe(self) -> str:
        return (f"{self.name} ({self.messages!r} of {self.role_tag!r}/{self.content_tag!r} turns"
                + (f", images in {self.images!r})" if self.images else ")"))

    def role_of(self, speaker: str) -> str | None:
        """``user``/``assistant``/``system`` for a speaker tag of this layout (or a common alias); else None."""
        own = {self.user_tag: "user", self.assistant_tag: "assistant", self.system_tag: "system"}
        if speaker in own:
            return own[speaker]
        return ROLE_ALIASES.get(speaker.strip().lower())


LLAVA = Layout("llava", "conversations", None, "from", "value", "human", "gpt")
SHAREGPT = Layout("sharegpt", "messages", "images", "role", "content", "user", "assistant")
BUILTIN = (LLAVA, SHAREGPT)
CANDIDATES = ("llava: 'conversations' of {'from', 'value'} turns, 'image'/'images'; "
              "sharegpt: 'messages' of {'role', 'content'} turns, 'images'")


def detect(raw: dict, layout: Layout | None = None) -> Layout | None:
    """The layout of one record: ``layout`` when given and its conversation key is present, else a built-in one."""
    if layout is not None:
        return layout if layout.messages in raw else None
    for cand in BUILTIN:
        if cand.messages in raw:
            return cand
    return None


def image_value(raw: dict, layout: Layout):
    """The raw image value of a record: the layout's image column; for built-ins ``image`` if set, else ``images``."""
    if layout.images is not None and layout not in BUILTIN:
        return raw.get(layout.images)
    value = raw.get("image")
    if value is None or value == [] or value == "":
        alt = raw.get("images")
        if alt is not None and alt != []:
            return alt
    return value


def read_turn(item, layout: Layout) -> tuple[str, str, list[str]]:
    """``(speaker, text, image paths found in image parts)`` of one turn; raises :class:`TurnError`."""
    if not isinstance(item, dict):
        raise TurnError(f"is a {type(item).__name__}, not an object")
    # Built-in layouts accept either pair of keys (many LLaVA pools use role/content and vice versa).
    alt_role, alt_text = ("role", "content") if layout.role_tag == "from" else ("from", "value")
    speaker = item.get(layout.role_tag, item.get(alt_role) if layout in BUILTIN else None)
    content = item.get(layout.content_tag, item.get(alt_text) if layout in BUILTIN else None)
    if not isinstance(speaker, str):
        raise TurnError(f"needs a string {layout.role_tag!r} (got {_short(speaker)})")
    if isinstance(content, str):
        return speaker, content, []
    if isinstance(content, (list, tuple)):
        text, paths = _parts(content)
        return speaker, text, paths
    raise TurnError(f"needs a string or a list of parts in {layout.content_tag!r} (got {_short(content)})")


def _parts(parts) -> tuple[str, list[str]]:
    pieces: list[tuple[str, str]] = []  # (kind, text)
    paths: list[str] = []
    for k, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise TurnError(f"part {k} is not an object with a 'type' (got {_short(part)})")
        kind = part["type"]
        if kind in TEXT_PART_TYPES:
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise TurnError(f"text part {k} has no string 'text' or 'value'")
            pieces.append(("text", text))
        elif kind in IMAGE_PART_TYPES:
            ref = part.get("value", part.get(kind))
            if isinstance(ref, dict):
                ref = ref.get("url", ref.get("path"))
            if isinstance(ref, str) and ref:
                if ref.startswith(("http://", "https://", "data:")):
                    raise TurnError(f"image part {k} is a URL ({ref[:30]}...); mmsift reads local image files only")
                paths.append(ref)
            pieces.append(("image", IMAGE_PLACEHOLDER))
        else:
            raise TurnError(f"part {k} has type {kind!r}; expected one of {TEXT_PART_TYPES + IMAGE_PART_TYPES}")
    out = ""
    for k, (kind, text) in enumerate(pieces):
        # Two text parts in a row read as two paragraphs; an image placeholder joins its neighbours directly.
        if k and kind == "text" and pieces[k - 1][0] == "text":
            out += "\n"
        out += text
    return out, paths


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- raw record -> Record ------------------------------------------------------------------------------------
def image_field(raw: dict, layout=None):
    """The raw image value of a record (see :func:`image_value`); None for text-only."""
    return image_value(raw, layout or LLAVA)



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

    ``layout``: a :class:`Layout` every record must follow; None detects it per record.
    """
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


# ---- layouts from a dataset_info.json ---------------------------------------------------------------------------
def layout_from_entry(entry: dict, *, where: str) -> Layout:
    """A :class:`Layout` from one LLaMA-Factory ``dataset_info.json`` entry (``columns`` and ``tags``)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a dataset entry must be an object")
    fmt = entry.get("formatting", "sharegpt")
    if fmt != "sharegpt":
        raise ValueError(f"{where}: formatting {fmt!r} is not supported (only sharegpt-style conversations)")
    unknown_top = set(entry) - {"file_name", "formatting", "columns", "tags", "ranking", "split", "num_samples",
                                "load_from", "subset", "folder", "hf_hub_url", "ms_hub_url", "script_url"}
    if unknown_top:
        raise ValueError(f"{where}: unknown keys {sorted(unknown_top)}")
    columns = entry.get("columns", {}) or {}
    tags = entry.get("tags", {}) or {}
    bad = (set(columns) - {"messages", "images", "system", "tools", "videos", "audios"}) | (
        set(tags) - {"role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "observation_tag",
                     "function_tag"})
    if bad:
        raise ValueError(f"{where}: unknown column/tag names {sorted(bad)}")
    return Layout(
        name="sharegpt" if (columns.get("messages", "messages"), tags.get("role_tag", "role")) == ("messages", "role")
        else "sharegpt (renamed)",
        messages=columns.get("messages", "messages"),
        images=columns.get("images", "images"),
        role_tag=tags.get("role_tag", "role"),
        content_tag=tags.get("content_tag", "content"),
        user_tag=tags.get("user_tag", "user"),
        assistant_tag=tags.get("assistant_tag", "assistant"),
        system_tag=tags.get("system_tag", "system"),
    )


def load_layout(path: str | Path, pool_path: str | Path | None = None) -> Layout:
    """The layout in ``path``: one dataset entry, or a ``dataset_info.json`` whose entry names the pool file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"layout {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"layout {path}: expected a JSON object")
    if "columns" in data or "tags" in data or "formatting" in data:
        return layout_from_entry(data, where=str(path))
    name = Path(pool_path).name if pool_path is not None else None
    hits = {k: v for k, v in data.items() if isinstance(v, dict) and v.get("file_name") == name}
    if len(hits) != 1:
        raise ValueError(f"layout {path}: {len(hits)} entries have file_name {name!r} (entries: {sorted(data)[:10]})")
    key, entry = next(iter(hits.items()))
    return layout_from_entry(entry, where=f"{path} [{key}]")


def layout_for_pool(pool_path: str | Path) -> Layout | None:
    """The entry of a ``dataset_info.json`` beside the pool that names this file (LLaMA-Factory's convention)."""
    pool_path = Path(pool_path)
    info = pool_path.parent / "dataset_info.json"
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is not valid JSON; ignoring it", info)
        return None
    if not isinstance(data, dict):
        return None
    hits = [v for v in data.values() if isinstance(v, dict) and v.get("file_name") == pool_path.name]
    if len(hits) != 1:
        return None
    layout = layout_from_entry(hits[0], where=str(info))
    log.info("using the layout of %s for %s: %s", info, pool_path.name, layout.describe())
    return layout
