"""Image files and embedded image bytes: the checks ``validate`` runs on them, and decoding a record's images.

:func:`check_image_file` / :func:`check_image_data` say whether a file (or the bytes of an image embedded in a
Parquet pool, :func:`check_embedded`) is an image PIL can read and whether its data is whole (see
``validate.py`` for the problem kinds); :func:`load_images` decodes a record's images for a model.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mmsift.data.parquet import open_embedded, read_embedded
from mmsift.data.paths import resolve_image
from mmsift.data.records import EmbeddedImage, Record


def check_image_file(path: str | os.PathLike, *, decode: bool = False) -> tuple[str, str] | None:
    """``None`` for a good image file, else ``(kind, message)``. See the module docstring for what is checked."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing_image", f"not found at {path}"
    except OSError as e:
        return "unreadable_image", f"cannot stat {path}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):  # checked before opening: opening a FIFO would block
        return "unreadable_image", f"{path} is not a regular file"
    try:
        f = open(path, "rb")
    except OSError as e:
        return "unreadable_image", f"cannot open {path}: {e.strerror or e}"
    with f:  # one open per file: PIL reads from it, and so does the JPEG end-marker check
        return check_image_data(f, st.st_size, str(path), decode=decode)


_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP"}
_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WebP",
             ".tif": "TIFF", ".tiff": "TIFF"}


def _looks_like(f, path: str) -> str | None:
    """How a file PIL cannot identify still looks like an image: its first bytes or its name."""
    try:
        f.seek(0)
        head = f.read(8)
    except OSError:
        head = b""
    for sig, name in _SIGNATURES.items():
        if head.startswith(sig):
            return f"starts like a {name} file"
    name = _SUFFIXES.get(Path(str(path)).suffix.lower())
    return f"is named as a {name} file" if name else None


def check_image_data(f, size: int, path: str, *, decode: bool = False) -> tuple[str, str] | None:
    """The image checks of :func:`check_image_file` on an open binary file object of ``size`` bytes; ``path``
    names it in messages."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(f)
    except UnidentifiedImageError:
        looks = _looks_like(f, path)
        if looks and looks.startswith("starts"):  # the signature is there, the rest of the header is not
            return "corrupt_image", f"{path} is damaged: it {looks}, but PIL cannot read its header"
        if looks:  # a damaged image and a text file with an image's name look the same from here
            return "unreadable_image", (f"{path} {looks}, but PIL cannot read it: a damaged image, or not an "
                                        "image at all")
        return "unreadable_image", f"{path} is not an image format PIL can read"
    except Image.DecompressionBombError as e:
        return "unreadable_image", f"{path}: {e}"
    except OSError as e:
        if e.errno is not None:  # the OS refused (I/O error)
            return "unreadable_image", f"cannot read {path}: {e.strerror or e}"
        return "corrupt_image", f"{path} has a broken header: {e}"
    fmt = im.format
    try:
        if decode:
            im.load()
        elif fmt == "PNG":
            im.verify()
        elif fmt == "JPEG":
            f.seek(max(0, size - 64))
            if b"\xff\xd9" not in f.read():
                # No end marker: often truncated, sometimes only trailing padding; decoding decides.
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        else:
            im.load()
    except Exception as e:  # PIL raises many types here (OSError, SyntaxError, ValueError, struct.error...)
        return "corrupt_image", f"{path} ({fmt}) is broken: {e}"
    finally:
        im.close()
    return None


def check_embedded(refs: list[EmbeddedImage], *, decode: bool = False) -> list[tuple[str, str] | None]:
    """Per reference: None for a good image, else ``(kind, message)`` (the checks of image files, on the bytes).

    References are visited in file order, so each row group's image column is read once.
    """
    import io

    from tqdm.auto import tqdm

    order = sorted(range(len(refs)), key=lambda k: (refs[k].source, refs[k].row_group, refs[k].row))
    out: list = [None] * len(refs)
    for k in tqdm(order, desc="checking embedded images", unit="img", disable=None, leave=False):
        try:
            data = read_embedded(refs[k])
        except ValueError as e:
            out[k] = ("unreadable_image", str(e))
            continue
        out[k] = check_image_data(io.BytesIO(data), len(data), "the image data", decode=decode)
    return out


def load_images(record: Record, images_dir) -> list:
    """The record's images decoded to RGB PIL images (paths resolved safely inside ``images_dir``, embedded
    Parquet images read from their file)."""
    from PIL import Image

    out = []
    refs = record.embedded or [None] * len(record.images)
    for rel, ref in zip(record.images, refs):
        if ref is not None:  # bytes inside a Parquet pool, read on demand
            out.append(open_embedded(ref))
            continue
        path = resolve_image(images_dir, rel)
        with Image.open(path) as im:
            im.load()
            out.append(im.convert("RGB"))
    return out


def header_sizes(record: Record, images_dir) -> list:
    """(width, height) of each of the record's image files from its header (no pixels decoded); None for an image
    embedded in a Parquet pool or one whose header cannot be read (the caller falls back to a nominal size)."""
    from PIL import Image

    sizes = []
    refs = record.embedded or [None] * len(record.images)
    for rel, ref in zip(record.images, refs):
        size = None
        if ref is None:
            try:
                with Image.open(resolve_image(images_dir, rel)) as im:
                    size = tuple(im.size)
            except Exception:  # reported when the record is encoded, with its kind
                size = None
        sizes.append(size)
    return sizes
