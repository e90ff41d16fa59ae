"""``mmsift validate``: report every problem of a pool, by kind and record id; exit 1 if there is any error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.data.io import read_pool
from mmsift.data.paths import check_images_dir
from mmsift.data.validate import validate_pool


def validate_command(
    data: Annotated[Path, typer.Argument(
        help="The pool: .json, .jsonl or .parquet (LLaVA or ShareGPT layout), a folder or a glob of shards.")],
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the records' image paths are relative to (default: the data file's folder).",
    )] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    check_images: Annotated[bool, typer.Option(
        "--check-images/--no-check-images", help="Open every image file (missing, unreadable, corrupt).",
    )] = True,
    decode_images: Annotated[bool, typer.Option(
        "--decode-images", help="Fully decode every image (slower, stricter than the default checks).",
    )] = False,
    task_field: Annotated[Optional[str], typer.Option(
        "--task-field", help="Record field naming its task (default: the image path's top folder).",
    )] = None,
    max_listed: Annotated[int, typer.Option("--max-listed", help="Records listed per problem kind.")] = 20,
    workers: Annotated[int, typer.Option("--workers", help="Threads opening image files.")] = 4,
) -> None:
    """Check a pool before probing it: parse errors, conversations, placeholders, ids and image files."""
    try:
        pool = read_pool(data, task_field=task_field)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    note = None
    if images is None and any(r.images for r in pool.records):
        images = data.resolve().parent
        note = f"--images not given: image paths resolved relative to the data file's folder {images}"
    else:
        try:
            check_images_dir(images)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    report = validate_pool(pool, images, check_images=check_images, decode_images=decode_images, workers=workers)
    if note:
        report.notes.insert(0, note)
        beside = data.resolve().parent / "images"
        if report.counts_by_kind().get("missing_image") and beside.is_dir():
            report.notes.insert(1, f"images are missing here, but there is a folder {beside}: try --images {beside}")
    if json_out:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(report.format_text(max_per_kind=max_listed))
    if report.n_errors:
        raise typer.Exit(1)
