"""The bench's results table, as Markdown, CSV and JSON.

``score`` is the mean of the open-question accuracy (``all_open``: easy-vqa shape/colour/yes-no plus OCR) and
the mean of the four multiple-choice columns; ``rel_full`` is ``score`` as a percentage of the ``full`` row.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

MC_COLUMNS = ("mc_clean", "mc_perm", "mc_sym", "mc_both")
TABLE = (  # (column, header, format)
    ("method", "method", "{}"), ("budget", "budget", "{:g}"), ("n_kept", "n", "{}"), ("steps", "steps", "{}"),
    ("vqa", "vqa", "{:.3f}"), ("shape", "shape", "{:.3f}"), ("color", "color", "{:.3f}"),
    ("yesno", "yes/no", "{:.3f}"), ("ocr", "ocr", "{:.3f}"), ("mc_clean", "MC clean", "{:.3f}"),
    ("mc_perm", "MC perm", "{:.3f}"), ("mc_sym", "MC sym", "{:.3f}"), ("mc_both", "MC both", "{:.3f}"),
    ("score", "score", "{:.3f}"), ("rel_full", "% of full", "{:.1f}"), ("corrupt_kept", "corrupt kept", "{:.2f}"),
    ("auroc", "AUROC", "{:.3f}"), ("dup_pairs_kept", "dup pairs", "{}"), ("select_s", "select s", "{:.1f}"),
    ("train_s", "train s", "{:.1f}"), ("eval_s", "eval s", "{:.1f}"),
)


def add_scores(rows: list[dict]) -> list[dict]:
    """Fill ``score`` and ``rel_full`` (needs a ``full`` row for the latter)."""
    for r in rows:
        mc = [r[c] for c in MC_COLUMNS if c in r]
        parts = [r["all_open"]] if "all_open" in r else []
        if mc:
            parts.append(sum(mc) / len(mc))
        r["score"] = sum(parts) / len(parts) if parts else float("nan")
    full = next((r["score"] for r in rows if r["method"] == "full"), None)
    for r in rows:
        r["rel_full"] = 100.0 * r["score"] / full if full else float("nan")
    return rows


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown(rows: list[dict], meta: dict) -> str:
    cols = [c for c in TABLE if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c), f) for c, _, f in cols) + " |")
    lines.append("")
    chance = meta.get("eval", {}).get("chance", {})
    if chance:
        lines.append("Chance (knows the question type, not the image): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in sorted(chance.items())))
    if meta.get("stage_seconds"):
        lines.append("Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in meta["stage_seconds"].items()))
    if meta.get("pool"):
        lines.append(f"Pool: {meta['pool']['n_records']} records; injected: "
                     + ", ".join(f"{k} {v}" for k, v in meta["pool"]["defects"].items()))
    for m, why in sorted(meta.get("skipped", {}).items()):
        lines.append(f"Skipped {m}: {why}")
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], meta: dict, out) -> dict:
    out = Path(out)
    rows = add_scores(rows)
    md = markdown(rows, meta)
    (out / "results.md").write_text(md, encoding="utf-8")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    paths = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv"),
             "json": str(out / "results.json")}
    result = {"rows": rows, "meta": meta, "paths": paths}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True) + "\n",
                                      encoding="utf-8")
    result["markdown"] = md
    return result
