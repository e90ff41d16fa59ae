"""Turning a budget into counts: shared by the selector and by scorers that split a budget across groups."""

from __future__ import annotations

import numpy as np


def resolve_budget(budget: float | int, n: int) -> int:
    """A fraction in (0, 1] of ``n`` (rounded to nearest, at least 1 when n > 0) or an absolute count (int >= 1)."""
    if isinstance(budget, bool):
        raise ValueError("budget must be a number")
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise ValueError(f"a count budget must be >= 1, got {budget}")
        return int(min(budget, n))
    frac = float(budget)
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
    return int(min(n, max(1 if n else 0, round(frac * n))))


def parse_budget(text: str) -> float | int:
    """Parse a command-line budget: '0.15' is a fraction, '15%' the same fraction (as recipes accept it), '5000'
    a count, '1.0' everything."""
    text = text.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"budget {text!r} is not a percentage like 15%") from None
        return pct / 100.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"budget {text!r} is neither a fraction like 0.15 (or 15%) nor a count like 5000") from None
    if any(c in text for c in ".eE") :
        return value
    return int(value)


def apportion(weights, total: int, caps=None) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder), never above ``caps``.

    What a group cannot take because of its cap is handed to the others in proportion to their weights, so the
    parts sum to ``min(total, sum(caps))``. Ties in remainders go to the earlier group (stable).
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    # "No cap" is a cap of the whole total: a sentinel like int64 max would overflow when summed.
    caps = np.full(len(w), int(total), dtype=np.int64) if caps is None else np.asarray(caps, np.int64)
    total = int(min(total, caps.sum()))
    out = np.zeros(len(w), dtype=np.int64)
    remaining = total
    open_ = caps > 0
    while remaining > 0 and open_.any():
        ww = np.where(open_, w, 0.0)
        if ww.sum() <= 0:
            ww = open_.astype(np.float64)
        share = ww / ww.sum() * remaining
        base = np.minimum(np.floor(share).astype(np.int64), caps - out)
        out += base
        left = remaining - int(base.sum())
        if left > 0:
            rem = np.where(open_ & (out < caps), share - np.floor(share), -1.0)
            order = np.argsort(-rem, kind="stable")
            for g in order[:left]:
                if rem[g] < 0:
                    break
                out[g] += 1
        remaining = total - int(out.sum())
        open_ = out < caps
    return out
