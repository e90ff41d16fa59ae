"""The local executor: shards one after the other in this process (the loaded model is reused between them)."""

from __future__ import annotations

import logging
from typing import Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def run_local(specs: list, fn: Callable, *, progress: bool = True) -> None:
    """Call ``fn(spec)`` for every spec in order. An exception stops the run; finished shards stay done."""
    for spec in tqdm(specs, desc="probe shards", unit="shard", disable=not progress or len(specs) <= 1):
        fn(spec)
        log.debug("shard %s done", getattr(spec, "shard", "?"))
