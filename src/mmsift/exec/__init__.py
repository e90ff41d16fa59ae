"""Executors: run the probe's shard function over shard specs. Local is the default and never imports Ray."""

from __future__ import annotations

from typing import Callable


def get_executor(name: str) -> Callable:
    """``executor(specs, fn)`` for ``name``: ``local`` (in-process, sequential) or ``ray`` (optional extra)."""
    if name == "local":
        from mmsift.exec.local import run_local

        return run_local
    if name == "ray":
        try:
            from mmsift.exec.ray import run_ray
        except ImportError as e:
            raise ImportError(f"the ray executor is not available ({e}); install mmsift[ray]") from None
        return run_ray
    raise ValueError(f"unknown executor {name!r}; use 'local' or 'ray'")
