"""Validating a pool: every problem, by kind and record, before any model sees it.

Problem kinds (stable names; "E" = error: the record is bad and every command skips it, "W" = warning: reported,
record kept):

Parse level (from ``io.read_pool``)
  unparseable_file   E  a .json file that is not valid JSON (or not UTF-8)
  not_a_list         E  a .json file whose top level is not a list of records
  unparseable_line   E  a JSONL line that is not valid JSON (or not UTF-8); the line is not a record
  not_an_object      E  a JSONL line / JSON list entry that is not an object; not a record
  missing_id         W  no ``id`` (or null): the record gets its pool index as id
Records
  unknown_format     E  the record has neither a ``conversations`` nor a ``messages`` list (nor the conversation
                        column of the layout given); the message names the fields it has and the known layouts
  bad_id             E  ``id`` is neither a non-empty string nor an integer
  duplicate_id       E  an id seen before; the first record with it is kept, every later one is an error
  missing_conversations E  the conversation (``conversations``/``messages``) is not a list, or an empty list
  malformed_turn     E  a turn that is not an object with a string speaker (``from``/``role``) and a text
                        (``value``/``content``: a string or a list of typed text/image parts); role and
                        placeholder checks are then skipped
  empty_turn         E  a turn whose text is empty or only whitespace (a user turn holding only ``<image>`` is fine)
  bad_role           E  a speaker other than human/user, gpt/assistant, system (case-insensitive)
  roles_out_of_order E  the rule: an optional single leading ``system`` turn, then user and assistant turns
                        alternating, starting with user and ending with assistant (so every question is answered)
  image_placeholder_mismatch
                     E  the number of ``<image>`` placeholders in user turns differs from the number of images,
                        or a placeholder appears in a system/assistant turn, or a text-only record has one.
                     W  one image and no placeholder: LLaVA's own loader accepts this and puts the image first
  bad_image_field    E  ``image``/``images`` is not a path, an ``{"bytes", "path"}`` struct or a list of these
                        (or both keys are set)
  unsafe_image_path  E  an absolute image path or one that leaves the images folder (``..``, symlinks); such a
                        file is never opened
  missing_image      E  the image file does not exist
  unreadable_image   E  the file cannot be opened, is not a regular file, or is not an image format PIL knows
  corrupt_image      E  PIL recognises the format but the data is broken (bad PNG chunks/CRC, truncated JPEG, ...)
Pool
  empty_pool         W  the pool has no records

Image checks open each distinct path once (cached), in a small thread pool: PNG files are verified chunk by chunk
(CRCs), JPEG files must end with an end-of-image marker (when it is missing, a reduced-size decode decides), other
formats are decoded. ``decode_images=True`` fully decodes every image instead (slower, stricter). Images embedded
in a Parquet pool are read row group by row group and decoded in memory, one row group at a time.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmsift.data.formats import BUILTIN, CANDIDATES, TurnError, image_field, read_turn
from mmsift.data.images import check_embedded, check_image_file
from mmsift.data.io import Pool, read_pool
from mmsift.data.paths import ImageResolver, UnsafePathError, check_images_dir, check_relative
from mmsift.data.records import ERROR, IMAGE_PLACEHOLDER, WARNING, EmbeddedImage, Problem, Record

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Problem", "ValidationReport", "validate_pool"]

# Display order of the kinds in reports.
KINDS = (
    "unparseable_file", "not_a_list", "unparseable_line", "not_an_object", "missing_id", "unknown_format", "bad_id", "duplicate_id",
    "missing_conversations", "malformed_turn", "empty_turn", "bad_role", "roles_out_of_order",
    "image_placeholder_mismatch", "bad_image_field", "unsafe_image_path", "missing_image", "unreadable_image",
    "corrupt_image", "empty_pool",
)
_KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
_UNREADABLE_TURNS = {"unknown_format", "missing_conversations", "malformed_turn", "bad_role"}


@dataclass
class ValidationReport:
    """Every problem found. ``bad_indices`` are the pool positions of records with at least one error."""

    problems: list[Problem]
    bad_indices: set[int]
    n_records: int
    path: str | None = None
    format: str | None = None
    images_dir: str | None = None
    checked_images: bool = False
    notes: list[str] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # good records per task (``Record.task``), largest first
    layouts: dict[str, int] = field(default_factory=dict)  # records per detected layout (Layout.describe())

    @property
    def n_errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == ERROR)

    @property
    def n_warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == WARNING)

    def counts_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (_KIND_ORDER.get(kv[0], len(KINDS)), kv[0])))

    def good_records(self, pool: Pool) -> list[Record]:
        """The records without errors, in pool order."""
        return [r for r in pool.records if r.index not in self.bad_indices]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "images_dir": self.images_dir,
            "checked_images": self.checked_images,
            "n_records": self.n_records,
            "n_bad_records": len(self.bad_indices),
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "counts_by_kind": self.counts_by_kind(),
            "bad_indices": sorted(self.bad_indices),
            "notes": list(self.notes),
            "tasks": dict(self.tasks),
            "layouts": dict(self.layouts),
            "problems": [asdict(p) for p in self.problems],
        }

    def format_text(self, max_per_kind: int = 20) -> str:
        lines = []
        if self.path is not None:
            lines.append(f"pool: {self.path} ({self.format}, {self.n_records} records)")
        for desc, n in self.layouts.items():
            lines.append(f"detected format: {desc}" + (f" ({n} records)" if len(self.layouts) > 1 else ""))
        if self.images_dir is not None:
            lines.append(f"images: {self.images_dir}" + ("" if self.checked_images else " (files not checked)"))
        lines.extend(f"note: {n}" for n in self.notes)
        if self.tasks:
            shown = ", ".join(f"{t} {n}" for t, n in list(self.tasks.items())[:10])
            more = f", ... {len(self.tasks) - 10} more" if len(self.tasks) > 10 else ""
            lines.append(f"tasks: {shown}{more}")
        if not self.problems:
            lines.append(f"OK: no problems in {self.n_records} records")
            return "\n".join(lines)
        if self.n_records or not self.n_errors:
            lines.append(f"{self.n_errors} errors, {self.n_warnings} warnings; {len(self.bad_indices)} of "
                         f"{self.n_records} records have errors and will be skipped")
        else:  # the file itself could not be read as a pool: there are no records to count
            lines.append(f"{self.n_errors} errors, {self.n_warnings} warnings: the file could not be read as a "
                         "pool, so no record was read")
        by_kind: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_kind.setdefault(p.kind, []).append(p)
        for kind in self.counts_by_kind():
            group = by_kind[kind]
            severities = sorted({p.severity for p in group})
            lines.append(f"{'/'.join(severities)} {kind} ({len(group)}):")
            for p in group[:max_per_kind]:
                lines.append(f"  [{p.where()}] {p.message}")
            if len(group) > max_per_kind:
                lines.append(f"  ... and {len(group) - max_per_kind} more")
        return "\n".join(lines)


def read_and_validate(data, images=None, *, task_field: str | None = None, check_images: bool = True,
                      layout=None):
    """Read the pool ``data`` and validate it as every command does; ``images`` defaults to the pool file's folder.

    ``layout``: see :func:`mmsift.data.io.read_pool`. Returns ``(pool, images_dir, report)``.
    """
    check_images_dir(images)
    pool = read_pool(data, task_field=task_field, layout=layout)
    images_dir = str(images) if images is not None else str(Path(pool.path).parent)
    return pool, images_dir, validate_pool(pool, images_dir, check_images=check_images)


def validate_pool(
    pool: Pool,
    images_dir: str | os.PathLike | None,
    *,
    check_images: bool = True,
    decode_images: bool = False,
    workers: int = 4,
) -> ValidationReport:
    """Check every record of ``pool``; image files under ``images_dir`` when ``check_images`` (the default).

    With ``images_dir=None`` image paths get the checks that need no file system (absolute, ``..``) only.
    """
    problems: list[Problem] = list(pool.problems)
    first_index_of: dict[str, int] = {}
    uses: dict[str, list[Record]] = {}  # image path -> records that use it, for one check per path
    embedded: list[tuple[EmbeddedImage, Record]] = []

    for rec in pool.records:
        if rec.id in first_index_of:
            problems.append(_problem("duplicate_id", ERROR, rec,
                                     f"id {rec.id!r} was already used by the record at index {first_index_of[rec.id]}"))
        else:
            first_index_of[rec.id] = rec.index
        id_problem = _check_id(rec)
        if id_problem is not None:
            problems.append(id_problem)
        if rec.layout is None:
            problems.append(_problem("unknown_format", ERROR, rec, _unknown_format_message(rec.raw)))
            continue
        conv_problems = _check_conversation(rec)
        problems.extend(conv_problems)
        image_problem = _check_image_field(rec)
        if image_problem is not None:
            problems.append(image_problem)
            continue
        # Placeholders are only counted in a conversation whose turns could all be read.
        if not any(p.kind in _UNREADABLE_TURNS for p in conv_problems):
            problems.extend(_check_placeholders(rec))
        refs = rec.embedded or [None] * len(rec.images)
        for relpath in dict.fromkeys(p for p, ref in zip(rec.images, refs) if ref is None):
            uses.setdefault(relpath, []).append(rec)
        for ref in refs:
            if ref is not None and check_images:
                embedded.append((ref, rec))

    do_files = check_images and images_dir is not None
    notes = []
    if images_dir is None and uses:
        notes.append("no images folder given: image files were not checked")
    elif do_files and uses and not os.path.isdir(images_dir):
        notes.append(f"the images folder {images_dir} does not exist")
    results = _check_paths(list(uses), images_dir, do_files, decode_images, workers)
    for relpath, recs in uses.items():
        found = results.get(relpath)
        if found is None:
            continue
        kind, message = found
        for rec in recs:
            problems.append(_problem(kind, ERROR, rec, message))
    if embedded:
        for (ref, rec), found in zip(embedded, check_embedded([ref for ref, _ in embedded], decode=decode_images)):
            if found is not None:
                problems.append(_problem(found[0], ERROR, rec, f"embedded image ({ref.column}): {found[1]}"))

    if not pool.records and not pool.problems:
        problems.append(Problem("empty_pool", WARNING, None, None, None, "the pool has no records"))
    problems.sort(key=lambda p: (_KIND_ORDER.get(p.kind, len(KINDS)), p.index if p.index is not None else -1,
                                 p.line or 0))
    bad = {p.index for p in problems if p.severity == ERROR and p.index is not None}
    log.info("validated %d records of %s: %d problems, %d records with errors", len(pool.records), pool.path,
             len(problems), len(bad))
    tasks: dict[str, int] = {}  # over the records that will be used: a bad path names no task
    for rec in pool.records:
        if rec.task is not None and rec.index not in bad:
            tasks[rec.task] = tasks.get(rec.task, 0) + 1
    layouts: dict[str, int] = {}
    for rec in pool.records:
        if rec.layout is not None:
            desc = rec.layout.describe()
            layouts[desc] = layouts.get(desc, 0) + 1
    return ValidationReport(
        layouts=dict(sorted(layouts.items(), key=lambda kv: (-kv[1], kv[0]))),
        problems=problems, bad_indices=bad, n_records=len(pool.records), path=str(pool.path), format=pool.format,
        images_dir=None if images_dir is None else str(images_dir), checked_images=do_files, notes=notes,
        tasks=dict(sorted(tasks.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _problem(kind: str, severity: str, rec: Record, message: str) -> Problem:
    return Problem(kind, severity, rec.id, rec.index, rec.line, message)


def _check_id(rec: Record) -> Problem | None:
    value = rec.raw.get("id")
    if value is None or isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
        return None  # a missing or null id is a missing_id warning from read_pool
    return _problem("bad_id", ERROR, rec, f"'id' must be a non-empty string or an integer, got {_short(value)}")


def _unknown_format_message(raw: dict) -> str:
    fields = ", ".join(repr(k) for k in list(raw)[:12]) + (", ..." if len(raw) > 12 else "")
    return (f"the record fits no known layout; its fields are {fields or '(none)'}. Known layouts: {CANDIDATES}. "
            "For renamed columns or tags, put a LLaMA-Factory dataset_info.json beside the pool with an entry whose "
            "file_name is the pool file (columns: messages, images; tags: role_tag, content_tag, user_tag, "
            "assistant_tag)")


def _check_conversation(rec: Record) -> list[Problem]:
    layout = rec.layout
    conv = rec.raw.get(layout.messages)
    if not isinstance(conv, (list, tuple)) or not conv:
        what = "missing" if conv is None else ("empty" if isinstance(conv, (list, tuple)) else
                                               f"a {type(conv).__name__}, not a list")
        return [_problem("missing_conversations", ERROR, rec, f"{layout.messages!r} is {what}")]
    malformed, empty, unknown = [], [], []
    for pos, turn in enumerate(conv):
        try:
            speaker, text, _ = read_turn(turn, layout)
        except TurnError as e:
            malformed.append(f"turn {pos} {e}")
            continue
        if layout.role_of(speaker) is None:
            unknown.append(f"turn {pos} is from {speaker!r}")
        if not text.strip():
            empty.append(pos)
    out = []
    if malformed:
        return [_problem("malformed_turn", ERROR, rec, "; ".join(malformed))]
    if empty:
        out.append(_problem("empty_turn", ERROR, rec, f"turn(s) {', '.join(map(str, empty))} have no text"))
    if unknown:
        tags = (f"{layout.user_tag}, {layout.assistant_tag} or {layout.system_tag}" if layout not in BUILTIN
                else "human/user, gpt/assistant or system")
        out.append(_problem("bad_role", ERROR, rec, "; ".join(unknown) + f" (expected {tags})"))
        return out
    order = _order_error([t.role for t in rec.turns])
    if order:
        out.append(_problem("roles_out_of_order", ERROR, rec, order))
    return out


def _order_error(roles: list[str]) -> str | None:
    start = 1 if roles and roles[0] == "system" else 0
    body = roles[start:]
    if not body:
        return "no user turn after the system turn"
    for pos, role in enumerate(body, start=start):
        expected = "user" if (pos - start) % 2 == 0 else "assistant"
        if role != expected:
            return f"turn {pos} is {role!r}, expected {expected!r} (turns: {' '.join(roles)})"
    if body[-1] != "assistant":
        return f"the last turn is {body[-1]!r}: the conversation must end with an assistant answer"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_image_field(rec: Record) -> Problem | None:
    raw = rec.raw
    if rec.layout in BUILTIN:
        both = [k for k in ("image", "images") if raw.get(k) not in (None, "", [])]
        if len(both) == 2 and raw["image"] != raw["images"]:
            return _problem("bad_image_field", ERROR, rec, "both 'image' and 'images' are set; keep one")
    value = image_field(raw, rec.layout)
    items = value if isinstance(value, (list, tuple)) else [] if value in (None, "") else [value]
    for item in items:
        if isinstance(item, str) and item:
            continue
        if isinstance(item, dict) and (isinstance(item.get("bytes"), EmbeddedImage)
                                       or item.get("bytes") is None and isinstance(item.get("path"), str)
                                       and item["path"]):
            continue
        hint = ""
        if isinstance(item, dict) and isinstance(item.get("bytes"), (bytes, bytearray)):
            hint = " (image bytes are read from Parquet pools only)"
        return _problem("bad_image_field", ERROR, rec, "the image field must be a path, an {'bytes', 'path'} "
                        f"struct or a list of these, got {_short(value)}{hint}")
    return None


def _check_placeholders(rec: Record) -> list[Problem]:
    if not rec.turns:
        return []
    in_user = sum(t.text.count(IMAGE_PLACEHOLDER) for t in rec.turns if t.role == "user")
    elsewhere = sum(t.text.count(IMAGE_PLACEHOLDER) for t in rec.turns if t.role != "user")
    n_img = len(rec.images)
    if elsewhere:
        return [_problem("image_placeholder_mismatch", ERROR, rec,
                         f"{elsewhere} '<image>' placeholder(s) outside user turns")]
    if in_user == n_img:
        return []
    if n_img == 1 and in_user == 0:
        return [_problem("image_placeholder_mismatch", WARNING, rec,
                         "1 image and no '<image>' placeholder (LLaVA puts the image before the first turn)")]
    if n_img == 0:
        return [_problem("image_placeholder_mismatch", ERROR, rec,
                         f"text-only record with {in_user} '<image>' placeholder(s)")]
    return [_problem("image_placeholder_mismatch", ERROR, rec,
                     f"{n_img} image(s) but {in_user} '<image>' placeholder(s) in user turns")]


def _check_paths(relpaths: list[str], images_dir, do_files: bool, decode: bool,
                 workers: int) -> dict[str, tuple[str, str]]:
    """Problems per image path: (kind, message) for the bad ones only."""
    out: dict[str, tuple[str, str]] = {}
    to_open: list[tuple[str, str]] = []
    resolver = ImageResolver(images_dir) if images_dir is not None else None
    for relpath in relpaths:
        try:
            if resolver is None:
                check_relative(relpath)
            else:
                full = resolver.resolve(relpath)
                if do_files:
                    to_open.append((relpath, full))
        except UnsafePathError as e:
            out[relpath] = ("unsafe_image_path", str(e))
    if not to_open:
        return out
    from tqdm.auto import tqdm

    def one(item):
        found = check_image_file(item[1], decode=decode)
        return item[0], None if found is None else (found[0], f"image {item[0]!r}: {found[1]}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for relpath, found in tqdm(ex.map(one, to_open), total=len(to_open), desc="checking images",
                                   unit="img", disable=None, leave=False):
            if found is not None:
                out[relpath] = found
    return out
