"""Resolving a record's image path inside the images folder, refusing paths that would leave it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath


class UnsafePathError(ValueError):
    """An image path that is absolute or escapes the images folder (``..``, or a symlink pointing outside)."""


def is_absolute_path(relpath: str) -> bool:
    """True for POSIX absolute paths and for Windows drive or UNC paths, whatever OS this runs on."""
    win = PureWindowsPath(relpath)
    return PurePosixPath(relpath).is_absolute() or bool(win.drive) or win.is_absolute() or relpath.startswith("\\")


def check_relative(relpath: str) -> None:
    """The checks that need no file system: a non-empty relative path that does not climb out with ``..``."""
    if not isinstance(relpath, str) or not relpath:
        raise UnsafePathError(f"image path {relpath!r} is not a non-empty string")
    if "\x00" in relpath:
        raise UnsafePathError(f"image path {relpath!r} contains a NUL byte")
    if is_absolute_path(relpath):
        raise UnsafePathError(f"image path {relpath!r} is absolute; paths must be relative to the images folder")
    # Lexical check: "a/../../x" climbs out even if no file exists yet.
    depth = 0
    for part in relpath.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnsafePathError(f"image path {relpath!r} escapes the images folder")
        elif part not in ("", "."):
            depth += 1


def resolve_image(images_dir: str | os.PathLike, relpath: str) -> Path:
    """The file ``relpath`` names inside ``images_dir``, fully resolved.

    Raises :class:`UnsafePathError` for an absolute path or one that ends up outside ``images_dir`` (through
    ``..`` or a symlink). Nothing is opened; resolving follows symlinks only to learn where they point.
    """
    check_relative(relpath)
    base = Path(images_dir).resolve()
    target = (base / relpath).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"image path {relpath!r} resolves to {target}, outside the images folder {base}")
    if target == base:
        raise UnsafePathError(f"image path {relpath!r} names the images folder itself")
    return target
