"""Judge through any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp server, hosted APIs).

Standard library only (urllib + a thread pool), so no HTTP client dependency. The API key is read from the
environment variable whose *name* is configured (default ``OPENAI_API_KEY``) and is only ever put in the
request header, never logged or written to disk.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from mmsift.judge.backends import JudgeBackend, JudgeRequest

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)  # a record's image goes with each of its ~15 questions: encode it once
def image_data_url(path: Path) -> str:
    """The image re-encoded as PNG in a ``data:`` URL (every server accepts PNG; the source may be anything
    Pillow reads)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Retryable(Exception):
    pass


class OpenAIBackend(JudgeBackend):
    """POST ``{base_url}/chat/completions`` with one user message (text part + ``image_url`` parts).

    At most ``concurrency`` requests are in flight. A request that times out (``timeout`` seconds), fails to
    connect, or gets HTTP 5xx/429 is retried up to ``retries`` times after ``backoff * 2**attempt`` seconds;
    other 4xx answers and malformed response bodies are not retried. A request that gets no answer yields None.
    Counters: ``n_http`` (HTTP attempts), ``n_retries``, ``n_failed``.
    """

    def __init__(self, *, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, max_tokens: int = 256,
                 temperature: float = 0.0):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_id = model
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.n_http = self.n_retries = self.n_failed = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge-http")
        if not os.environ.get(api_key_env):
            log.info("environment variable %s is not set: sending requests without an API key", api_key_env)

    def describe(self) -> str:
        return f"the server at {self.url} (model {self.model_id!r})"

    def _body(self, request: JudgeRequest) -> bytes:
        content: list[dict] = [{"type": "text", "text": request.prompt}]
        content += [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in request.images]
        body = {"model": self.model_id, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        return json.dumps(body).encode("utf-8")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _post(self, body: bytes) -> str:
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        self._count("n_http")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                raise _Retryable(f"HTTP {e.code}") from None
            raise ValueError(f"HTTP {e.code}: {e.read()[:200]!r}") from None
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"malformed response body: {raw[:200]!r}") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError(f"malformed response content: {content!r:.200}")
        return content

    def _one(self, request: JudgeRequest) -> str | None:
        try:
            body = self._body(request)
        except OSError as e:
            log.warning("judge request not sent: cannot read its image: %s", e)
            self._count("n_failed")
            return None
        for attempt in range(self.retries + 1):
            try:
                return self._post(body)
            except _Retryable as e:
                if attempt == self.retries:
                    log.warning("judge request failed after %d attempts: %s", attempt + 1, e)
                    break
                self._count("n_retries")
                time.sleep(self.backoff * 2 ** attempt)
            except ValueError as e:
                log.warning("judge request failed (not retried): %s", e)
                break
        self._count("n_failed")
        return None

    def generate(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
