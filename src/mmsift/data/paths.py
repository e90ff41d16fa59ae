"""Resolving a record's image path inside the images folder, refusing paths that would leave it.

Plain ``os.path`` string functions rather than ``pathlib``, and a per-folder cache of resolved directories: a
large pool resolves hundreds of thousands of paths that share a few folders.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """An image path that is absolute or escapes the images folder (``..``, or a symlink pointing outside)."""


def is_absolute_path(relpath: str) -> bool:
    """True for POSIX absolute paths and for Windows drive or UNC paths, whatever OS this runs on."""
    return relpath.startswith(("/", "\\")) or bool(_DRIVE.match(relpath))


def check_relative(relpath: str) -> None:
    """The checks that need no file system: a non-empty relative path that does not climb out with ``..``."""
    if not isinstance(relpath, str) or not relpath:
        raise UnsafePathError(f"image path {relpath!r} is not a non-empty string")
    if "\x00" in relpath:
        raise UnsafePathError(f"image path {relpath!r} contains a NUL byte")
    if is_absolute_path(relpath):
        raise UnsafePathError(f"image path {relpath!r} is absolute; paths must be relative to the images folder")
    # Lexical: "a/../../x" climbs out even if no file exists. Backslashes count as separators, so that a
    # Windows-made "..\\x" is refused too.
    depth = 0
    for part in relpath.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnsafePathError(f"image path {relpath!r} escapes the images folder")
        elif part not in ("", "."):
            depth += 1
    if depth == 0:
        raise UnsafePathError(f"image path {relpath!r} names the images folder itself, not a file")


class ImageResolver:
    """Resolves many image paths against one images folder, caching the resolved parent folders.

    ``resolve(relpath)`` has the semantics of :func:`resolve_image`; it follows symlinks (only ``lstat`` and
    ``readlink``, never opening a file) to learn where a path really points.
    """

    def __init__(self, images_dir: str | os.PathLike):
        self.base = os.path.realpath(os.fspath(images_dir))
        self._prefix = self.base.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str] = {}

    def _inside(self, path: str) -> bool:
        return path.startswith(self._prefix)

    def resolve(self, relpath: str) -> str:
        check_relative(relpath)
        joined = os.path.join(self.base, relpath)
        if ".." in relpath.split("/"):
            # "link/../x" means "the parent of where link points": the OS resolves symlinks before "..".
            target = os.path.realpath(joined)
        else:
            folder, name = os.path.split(os.path.normpath(joined))
            real_folder = self._dirs.get(folder)
            if real_folder is None:
                real_folder = self._dirs[folder] = os.path.realpath(folder)
            target = os.path.join(real_folder, name)
            try:
                if stat.S_ISLNK(os.lstat(target).st_mode):
                    target = os.path.realpath(target)
            except OSError:
                pass  # missing: nothing to follow; reported later as missing_image
        if not self._inside(target):
            raise UnsafePathError(
                f"image path {relpath!r} resolves to {target}, outside the images folder {self.base}")
        return target


def resolve_image(images_dir: str | os.PathLike, relpath: str) -> Path:
    """The file ``relpath`` names inside ``images_dir``, fully resolved.

    Raises :class:`UnsafePathError` for an absolute path or one that ends up outside ``images_dir`` (through
    ``..`` or a symlink). Nothing is opened; resolving follows symlinks only to learn where they point.
    """
    return Path(ImageResolver(images_dir).resolve(relpath))


def check_images_dir(images) -> None:
    """Refuse an ``--images`` that is not a folder up front (else every record would be reported as missing)."""
    if images is not None and not Path(images).is_dir():
        raise ValueError(f"--images {images} is not a folder")
