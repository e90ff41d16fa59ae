"""A selection as one self-contained HTML file: charts and thumbnails are inlined as data URIs (opens offline).

Sections: settings and notes; kept vs pool per task; score distribution of kept vs dropped records; a 2-D map
(PCA) of the probe's vectors coloured kept/dropped; the highest- and lowest-scored records with their image
thumbnails and conversation; after a token cleaning, records with their masked tokens struck through. Charts
are drawn with matplotlib (``Figure`` objects, no global pyplot state). Every piece of dataset text goes through
:func:`html.escape`: a pool is untrusted input.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KEPT, DROPPED = "#1b7837", "#b2182b"
_VECTOR_PREFERENCE = ("last", "txt_mean", "img_mean", "mean", "attn_pool")
_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}.rec{display:flex;align-items:flex-start;gap:12px;border:1px solid #ddd;padding:8px;margin:8px 0}
.rec img{flex:none;width:128px;height:auto;object-fit:contain;border:1px solid #ccc}.turn{white-space:pre-wrap;margin:2px 0}
.role{font-weight:600}s.masked{color:#b2182b}.note{background:#fff4e5;padding:4px 8px;margin:4px 0}.fig{max-width:100%}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img class="fig" src="{uri}" alt="{html.escape(alt)}">'


def task_chart(kept_per_task: dict, total_per_task: dict) -> str:
    from matplotlib.figure import Figure

    tasks = sorted(total_per_task, key=lambda t: (-total_per_task[t], t))[:30]
    y = np.arange(len(tasks))
    fig = Figure(figsize=(8, 0.35 * len(tasks) + 1.2))
    ax = fig.subplots()
    ax.barh(y + 0.2, [total_per_task[t] for t in tasks], height=0.4, color="#bbbbbb", label="pool")
    ax.barh(y - 0.2, [kept_per_task.get(t, 0) for t in tasks], height=0.4, color=KEPT, label="kept")
    ax.set_yticks(y, [str(t) for t in tasks])
    ax.invert_yaxis()
    ax.set_xlabel("records")
    # Outside the axes: inside, it covered the longest bars.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _img(_png(fig), "kept vs pool per task")


def score_chart(shown: np.ndarray, kept: np.ndarray, label: str) -> str:
    from matplotlib.figure import Figure

    finite = np.isfinite(shown)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    values = shown[finite]
    bins = np.histogram_bin_edges(values, bins=40) if len(values) else 10
    ax.hist(shown[finite & ~kept], bins=bins, color=DROPPED, alpha=0.6, label=f"dropped ({int((~kept).sum())})")
    ax.hist(shown[finite & kept], bins=bins, color=KEPT, alpha=0.6, label=f"kept ({int(kept.sum())})")
    ax.set_xlabel(label)
    ax.set_ylabel("records")
    ax.legend()
    return _img(_png(fig), "score distribution")


def map_chart(vectors: np.ndarray, kept: np.ndarray, name: str, *, seed: int = 0) -> str:
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    x = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    xy = PCA(n_components=2, random_state=seed).fit_transform(x) if len(x) >= 2 else np.zeros((len(x), 2))
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    ax.scatter(xy[~kept, 0], xy[~kept, 1], s=8, c=DROPPED, alpha=0.5, label="dropped")
    ax.scatter(xy[kept, 0], xy[kept, 1], s=10, c=KEPT, alpha=0.8, label="kept")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"probe vectors '{name}' (PCA)")
    ax.legend()
    return _img(_png(fig), "2-D map of probe vectors")


def _thumbnail(record, images_dir) -> str:
    from mmsift.data.images import load_images

    if not record.images:
        return "<div>(text only)</div>"
    try:
        im = load_images(record, images_dir)[0]
    except Exception as e:  # a missing file must not stop the report
        return f"<div>(image not readable: {html.escape(str(e))})</div>"
    im.thumbnail((256, 256))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}" alt="thumbnail">'


def _record_html(record, images_dir, heading: str, masked: dict | None = None) -> str:
    turns = "".join(f'<div class="turn"><span class="role">{html.escape(t.role)}:</span> '
                    f"{_masked_html(t.text, (masked or {}).get(k, ()))}</div>" for k, t in enumerate(record.turns))
    return (f'<div class="rec">{_thumbnail(record, images_dir)}<div><div><b>{html.escape(heading)}</b> '
            f"id {html.escape(record.id)}</div>{turns}</div></div>")


def _masked_html(text: str, spans) -> str:
    """``text`` escaped, with the characters of ``spans`` (sorted, disjoint) struck through."""
    parts, at = [], 0
    for start, end in spans:
        parts.append(html.escape(text[at:start]) + f'<s class="masked">{html.escape(text[start:end])}</s>')
        at = end
    return "".join(parts) + html.escape(text[at:])


def token_section(records, entries: list[dict], *, images=None, n_examples: int = 5) -> str:
    """Token cleaning: the records with the most masked tokens (then the first records), masked tokens struck
    through; ``entries`` are sidecar entries (:mod:`mmsift.token_select`)."""
    by_id = {r.id: r for r in records}
    scored = [e for e in entries if "unscored" not in e and e["id"] in by_id]
    order = sorted(range(len(scored)), key=lambda k: (-scored[k]["n_masked"], k))[:n_examples]
    n_tok = sum(e["n_tokens"] for e in scored)
    n_masked = sum(e["n_masked"] for e in scored)
    parts = ['<h2 id="tokens">Token cleaning</h2>',
             f"<p>{n_masked} of {n_tok} ranked answer tokens are masked out of the loss "
             f"({n_masked / max(1, n_tok):.1%}); struck-through text is masked, the rest keeps its labels. "
             "The end-of-turn marker always keeps its label.</p>"]
    for k in order:
        e = scored[k]
        masked = {t["turn"]: [tuple(s) for s in t["masked"]] for t in e["turns"]}
        parts.append(_record_html(by_id[e["id"]], images, f"{e['n_masked']} of {e['n_tokens']} tokens masked,",
                                  masked))
    return "".join(parts)


def write_token_report(path, *, records, result, images=None, n_examples: int = 8) -> Path:
    """A self-contained HTML page of a token cleaning (``result``: :class:`mmsift.token_cleaning.TokenCleanResult`):
    the counts per part and per answer length, and records with their masked tokens struck through."""
    e = html.escape
    rows = "".join(f"<tr><td>{b['tokens']}</td><td>{b['records']}</td><td>{b['kept_share']:.1%}</td>"
                   f"<td>{b['fully_masked']}</td></tr>" for b in result.by_answer_length())
    body = (f"<h1>mmsift token cleaning: kept {result.n_kept} of {result.n_ranked} answer tokens</h1>"
            + "".join(f"<p>{e(line)}</p>" for line in result.summary_lines()[: len(result.parts)])
            + "<h2>By answer length</h2><table><tr><th>answer tokens</th><th>records</th><th>kept</th>"
            + f"<th>fully masked</th></tr>{rows}</table>"
            + token_section(records, result.entries, images=images, n_examples=n_examples))
    return _write_page(Path(path), "mmsift token cleaning", body)


def _write_page(path: Path, title: str, body: str) -> Path:
    doc = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{body}</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    log.info("wrote the HTML report to %s", path)
    return path


def setting_text(value) -> str:
    """A setting as a person reads it: lists comma-separated, mappings as ``key=value``, nothing as a dash."""
    if value is None or value == "" or value == [] or value == {}:
        return "\u2013"
    if isinstance(value, dict):  # nested mappings in parentheses: clean (method=selfcheck, drop=0.1)
        return ", ".join(f"{k} ({setting_text(v)})" if isinstance(v, dict) and v else f"{k}={setting_text(v)}"
                         for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ("; " if any(isinstance(v, dict) for v in value) else ", ").join(setting_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def stages_table(stages: list | None, n_pool=None) -> str:
    """A recipe's chain: records in and out of each stage (empty without stages)."""
    if not stages:
        return ""
    e = html.escape
    rows = "".join(f"<tr><td>{k + 1}</td><td>{e(str(s['stage']))}</td><td>{e(str(s['method']))}</td>"
                   f"<td>{s['in']}</td><td>{s['out']}</td><td>{s['in'] - s['out']}</td>"
                   f"<td>{e(s.get('warning') or '')}</td></tr>" for k, s in enumerate(stages))
    head = (f"<p>The pool's {n_pool} probed records went through these stages; the charts below show the records "
            "that reached the last one (the scores file lists every record and the stage that dropped it).</p>"
            if n_pool is not None else "")
    return ('<h2 id="stages">Stages</h2>' + head + "<table><tr><th>#</th><th>stage</th><th>method</th><th>in</th>"
            f"<th>out</th><th>removed</th><th>note</th></tr>{rows}</table>")


def tie_notes(scores: np.ndarray) -> list[str]:
    """A note when every finite score is the same: the records kept were then picked by the tie-break alone."""
    finite = np.asarray(scores, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) > 1 and float(finite.max()) == float(finite.min()):
        return [f"every scored record has the same score ({finite[0]:.4g}): the method told no record from "
                "another here, and the records kept were chosen by the seeded tie-break alone (as random)"]
    return []


def _vector_name(store) -> str | None:
    names = sorted(p.stem[len("vec_"):] for p in Path(store.root).glob("vec_*.npy"))
    return next((n for n in _VECTOR_PREFERENCE if n in names), names[0] if names else None)


def write_html_report(path, *, selection, store, pool, report: dict, meaning, images=None, n_examples: int = 5,
                      rows_index=None, token_entries: list | None = None) -> Path:
    """Write the report of ``selection`` (from ``store``, on ``pool``) to ``path``; returns the path.

    ``rows_index``: the pool positions of the rows ``selection`` scored, when it scored only some of the store's
    rows (a recipe's later stages); by default every store row. ``token_entries``: a token cleaning of the kept
    records (sidecar entries): a section shows records with their masked tokens struck through.
    """
    from mmsift.explain import describe_components

    path = Path(path)
    store_index = np.asarray(store.load([]).index)
    index = store_index if rows_index is None else np.asarray(rows_index)
    position = {int(i): k for k, i in enumerate(store_index)}
    store_rows = np.fromiter((position[int(i)] for i in index), dtype=np.int64, count=len(index))
    kept = np.zeros(len(selection.scores), dtype=bool)
    kept[selection.rows] = True
    shown = meaning.shown(selection.scores)
    e = html.escape
    parts = [f"<h1>mmsift selection: {e(selection.method)}, kept {len(selection.rows)} of {selection.n_total}</h1>"]
    settings = report.get("settings") or {k: report.get(k) for k in ("method", "budget", "seed", "params")}
    parts.append("<h2>Settings</h2><table>" + "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(setting_text(v))}</td></tr>" for k, v in settings.items()) + "</table>")
    parts.append(stages_table(report.get("stages"), report.get("n_pool")))
    notes = ([f"warning: {report['proxy_warning']}"] if report.get("proxy_warning") else []) + list(
        report.get("task_notes", [])) + list(selection.notes) + tie_notes(selection.scores)
    parts.extend(f'<div class="note">{e(n)}</div>' for n in notes)
    parts.append(f"<p>Scores: {e(meaning.sentence)}.</p>")
    comps = describe_components(selection.details)
    if comps:
        parts.append("<ul>" + "".join(f"<li>{e(c)}</li>" for c in comps) + "</ul>")
    parts.append('<h2 id="tasks">Kept vs pool per task</h2>'
                 + task_chart(selection.kept_per_task, selection.total_per_task))
    parts.append('<h2 id="scores">Scores of kept and dropped records</h2>' + score_chart(shown, kept, meaning.label))
    name = _vector_name(store)
    if name is None:
        parts.append('<h2 id="map">Map</h2><p>This run has no probe vectors to map.</p>')
    else:
        parts.append('<h2 id="map">Map of the probe vectors</h2>'
                     + map_chart(np.asarray(store.load([name])[name])[store_rows], kept, name,
                                 seed=int(settings.get("seed") or 0)))
    by_index = {r.index: r for r in pool.records}
    finite = np.flatnonzero(np.isfinite(selection.scores))
    order = finite[np.lexsort((index[finite], -selection.scores[finite]))]
    for title, rows in (("Highest-scored records", order[:n_examples]),
                        ("Lowest-scored records", order[::-1][:n_examples])):
        parts.append(f'<h2 id="{"top" if title.startswith("High") else "bottom"}">{title}</h2>')
        for row in rows:
            rec = by_index.get(int(index[row]))
            if rec is None:
                continue
            heading = f"{'kept' if kept[row] else 'dropped'}, {meaning.label} {shown[row]:.4g}"
            parts.append(_record_html(rec, images, heading))
    if token_entries is not None:
        parts.append(token_section(pool.records, token_entries, images=images, n_examples=n_examples))
    return _write_page(path, "mmsift selection", "".join(parts))
