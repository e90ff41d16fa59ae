"""One record into model inputs: decode its images, then the family adapter's template, tokens and masks.

Shared by the probe (which adds perturbed variants) and training. A record that cannot be encoded raises
:class:`RecordError` with a stable ``kind`` (``image_error``, ``too_long``, ``encode_error``), so every caller
reports and counts failures the same way instead of stopping on one bad record.
"""

from __future__ import annotations

from mmsift.data.images import load_images
from mmsift.data.records import Record
from mmsift.failures import traceback_text
from mmsift.models.base import Encoded, EncodeError, FamilyAdapter


class RecordError(Exception):
    """A record that cannot be turned into model inputs; ``kind`` names the failure, ``traceback`` its origin."""

    def __init__(self, kind: str, message: str, traceback: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.traceback = traceback


def decode_images(record: Record, images_dir) -> list:
    """The record's images as RGB PIL images; :class:`RecordError` (``image_error``) when one cannot be read."""
    if not record.images:
        return []
    try:
        return load_images(record, images_dir)
    except Exception as e:  # missing/corrupt file found only now (validation may have been skipped)
        raise RecordError("image_error", f"{type(e).__name__}: {e}", traceback_text(e)) from e


def encode_record(adapter: FamilyAdapter, record: Record, images: list, *, max_length: int | None = None) -> Encoded:
    """The record's inputs with its decoded ``images``; :class:`RecordError` (``too_long`` or ``encode_error``)."""
    try:
        enc = adapter.encode(record.turns, images)
    except EncodeError as e:
        raise RecordError("encode_error", str(e), traceback_text(e)) from e
    except Exception as e:  # a processor or template error on this record's content
        raise RecordError("encode_error", f"{type(e).__name__}: {e}", traceback_text(e)) from e
    if max_length and len(enc) > max_length:
        raise RecordError("too_long", f"{len(enc)} tokens, longer than the model's context of {max_length}")
    return enc


def encode_records(adapter: FamilyAdapter, records, images_dir) -> tuple[list[Encoded], list[tuple]]:
    """Encoded inputs of ``records``, and the records that cannot be encoded as (id, kind, message, traceback)."""
    encs, failed = [], []
    for rec in records:
        try:
            encs.append(encode_record(adapter, rec, decode_images(rec, images_dir)))
        except RecordError as e:
            failed.append((rec.id, e.kind, e.message, e.traceback))
    return encs, failed
