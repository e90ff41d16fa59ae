"""The one interface every judge backend implements, and what a request is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class JudgeRequest:
    """One question to the judge: a prompt and the images (resolved file paths) shown with it.

    ``image_hashes`` are the SHA-256 digests of the image files' bytes (see :func:`file_digest`), part of the
    cache key so that an image replaced under the same name is judged again.
    """

    prompt: str
    images: tuple[Path, ...] = ()
    image_hashes: tuple[str, ...] = ()


class JudgeBackend:
    """A judge model. :meth:`generate` answers a batch of requests in order: the answer text, or None when no
    answer could be had (the backend gave up after its retries). Backends never parse answers."""

    model_id: str = ""

    def generate(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (threads, model memory)."""

    def describe(self) -> str:
        """Where answers come from, for error messages."""
        return f"the judge model {self.model_id!r}"


def file_digest(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
