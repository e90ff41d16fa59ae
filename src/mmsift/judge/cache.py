"""On-disk cache of judge answers (one SQLite file in the run directory), so that a rerun or an interrupted run
asks the judge only for what it has not answered yet.

Key = SHA-256 of (model id, prompt text, SHA-256 of every image's bytes). The raw answer text is stored as
received, parseable or not; requests the backend gave up on (None) are not stored, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Sequence

from mmsift.judge.backends import JudgeBackend, JudgeRequest

log = logging.getLogger(__name__)

CACHE_FILE = "judge_cache.sqlite"


def request_key(model_id: str, request: JudgeRequest) -> str:
    payload = json.dumps([model_id, request.prompt, list(request.image_hashes)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """``get``/``put`` of raw answers by key; ``put_many`` commits, so finished work survives an interruption."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt TEXT NOT NULL,"
            " answer TEXT NOT NULL, created TEXT DEFAULT CURRENT_TIMESTAMP)"
        )
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, answer in self._db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", part):
                out[key] = answer
        return out

    def put_many(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Store (key, model, prompt, answer) rows and commit."""
        self._db.executemany("INSERT OR REPLACE INTO answers (key, model, prompt, answer) VALUES (?, ?, ?, ?)", rows)
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedBackend(JudgeBackend):
    """Wraps a backend: answers found in the cache are returned without asking it; new answers are stored.

    ``hits``, ``asked`` (requests passed to the backend) and ``failed`` (of those, how many got no answer) count
    over the wrapper's life.
    """

    def __init__(self, backend: JudgeBackend, cache: JudgeCache):
        self.backend = backend
        self.cache = cache
        self.model_id = backend.model_id
        self.hits = self.asked = self.failed = 0

    def generate(self, requests: Sequence[JudgeRequest]) -> list[str | None]:
        keys = [request_key(self.model_id, r) for r in requests]
        found = self.cache.get_many(keys)
        answers: list[str | None] = [found.get(k) for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in found]
        # The same question twice in one batch is asked once.
        first: dict[str, int] = {}
        unique = [i for i in todo if first.setdefault(keys[i], i) == i]
        self.hits += len(requests) - len(todo)
        if unique:
            new = self.backend.generate([requests[i] for i in unique])
            self.asked += len(unique)
            rows = []
            for i, ans in zip(unique, new):
                if ans is None:
                    self.failed += 1
                    continue
                rows.append((keys[i], self.model_id, requests[i].prompt, ans))
            self.cache.put_many(rows)
            by_key = {keys[i]: ans for i, ans in zip(unique, new)}
            for i in todo:
                answers[i] = by_key[keys[i]]
        return answers

    def close(self) -> None:
        self.backend.close()
        self.cache.close()
