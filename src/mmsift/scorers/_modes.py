"""Turning one per-sample value into a score under a keep-low / keep-high / keep-middle mode."""

from __future__ import annotations

import numpy as np

MODES = ("low", "high", "mid")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def mode_score(value: np.ndarray, mode: str) -> np.ndarray:
    """``low``: -v; ``high``: v; ``mid``: -|v - median(v)| (median over finite values; closest to it first)."""
    value = np.asarray(value, dtype=np.float64)
    if mode == "low":
        return -value
    if mode == "high":
        return value.copy()
    finite = value[np.isfinite(value)]
    med = float(np.median(finite)) if len(finite) else 0.0
    return -np.abs(value - med)
