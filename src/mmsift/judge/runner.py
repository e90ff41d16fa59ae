"""run_judge: read and validate a pool, ask the judge every question the requested methods need, parse the
answers strictly, and write the answers as signal columns of a run directory (or merge them into a probe run).

Columns written (NaN = no parseable answer):
- mmSSR: ``cap_<capability>`` (0-5) for each chosen capability, ``style_<style>`` (0/1) for the nine styles;
- SCALE: ``scale_task`` (the judge's task type, see ``scorers.scale.TASK_TEXT``), ``caption_general``,
  ``caption_task`` (strings, missing = null), ``scale_alignment``, ``scale_clarity``,
  ``scale_coherence``, ``scale_image_clarity`` (0-5; image clarity is not asked for text-only records);
- ``judge_unparseable``: per record, how many of its answers could not be parsed or were never received.
The record's task/source (``mmsift.data.tasks.task_of``) goes in the store's ``task`` key column. The manifest's
``judge`` entry counts unparseable answers per column; ``judge_unparseable.jsonl`` keeps their raw text.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from mmsift.data.io import read_pool
from mmsift.data.paths import resolve_image
from mmsift.data.records import ERROR, Record
from mmsift.data.validate import validate_pool
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, FailureGuard, check_max_failure_rate
from mmsift.judge import parse, prompts
from mmsift.judge.backends import JudgeBackend, JudgeRequest, file_digest
from mmsift.judge.cache import CACHE_FILE, CachedBackend, JudgeCache
from mmsift.scorers.mmssr import CAPABILITIES, STYLES
from mmsift.scorers.scale import TASK_TEXT
from mmsift.store import SignalStore, write_store

log = logging.getLogger(__name__)

METHODS = ("mmssr", "scale", "ds2")
SCALE_COLUMNS = tuple(f"scale_{c}" for c in prompts.SCALE_CRITERIA)
UNPARSEABLE_FILE = "judge_unparseable.jsonl"


@dataclass
class JudgeResult:
    store: SignalStore
    n_records: int
    skipped: list[tuple[str | None, str, str]]
    n_questions: int = 0
    n_cached: int = 0
    n_asked: int = 0
    n_no_answer: int = 0
    unparseable: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def n_unparseable(self) -> int:
        return sum(self.unparseable.values())

    def summary_lines(self) -> list[str]:
        lines = [f"judged {self.n_records} records into {self.store.root}",
                 f"questions: {self.n_questions} ({self.n_cached} from cache, {self.n_asked} asked, "
                 f"{self.n_no_answer} got no answer)",
                 f"unparseable or missing answers: {self.n_unparseable}"]
        lines += [f"  {col}: {k}" for col, k in sorted(self.unparseable.items()) if k]
        if self.skipped:
            lines.append(f"skipped {self.n_skipped} records with errors (run `mmsift validate` for details)")
        return lines + self.notes


def _methods(methods) -> list[str]:
    ms = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in ms if m not in METHODS]
    if unknown or not ms:
        raise ValueError(f"judge methods must be among {', '.join(METHODS)}; got {ms}")
    # DS2 corrects judge ratings; without another method it corrects mmSSR's capability ratings.
    if "ds2" in ms and not ({"mmssr", "scale"} & set(ms)):
        ms.append("mmssr")
    return ms


class _Asker:
    """Streams questions through the cached backend in chunks and hands each parsed answer to ``fill``;
    answers that do not parse go to ``bad`` (column -> [(row, raw answer)]). Jobs are generated lazily, so a
    million-record pool never holds all its prompts in memory. ``guard`` stops the run when most questions get no
    usable answer (an unreachable server, a model that cannot follow the prompt): that is not bad data."""

    def __init__(self, backend: CachedBackend, chunk_size: int, bad: dict[str, list[tuple[int, str | None]]],
                 guard: FailureGuard, ids: list[str]):
        self.backend = backend
        self.chunk_size = chunk_size
        self.bad = bad
        self.guard = guard
        self.ids = ids
        self.n_questions = 0

    def ask(self, jobs: Iterable[tuple[int, str, JudgeRequest]], total: int, desc: str,
            parsers: dict[str, Callable], fill: Callable[[int, str, object], None]) -> None:
        it = iter(jobs)
        with tqdm(total=total, desc=desc, unit="q", disable=None) as bar:
            while part := list(islice(it, self.chunk_size)):
                answers = self.backend.generate([r for _, _, r in part])
                for (row, col, _), raw in zip(part, answers):
                    value = parsers[col](raw)
                    if value is None:
                        self.bad.setdefault(col, []).append((row, raw))
                        why = "no answer (backend error or time-out)" if raw is None else "answer did not parse"
                        self.guard.failed(self.ids[row], f"{col}: {why}")
                    else:
                        fill(row, col, value)
                        self.guard.ok()
                self.n_questions += len(part)
                bar.update(len(part))
                self.guard.check()


def run_judge(
    data: str | os.PathLike,
    *,
    images: str | os.PathLike | None,
    backend: JudgeBackend,
    out: str | os.PathLike | None,
    methods=("mmssr",),
    capabilities=None,
    task_field: str | None = None,
    into: str | os.PathLike | None = None,
    limit: int | None = None,
    chunk_size: int = 64,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
) -> JudgeResult:
    """Judge the pool ``data`` and write the judge columns to the run directory ``out``, or, with ``into``, add
    them to that existing run (aligned by record id; rows the judge did not see get NaN). The answer cache lives
    in the written run directory, so rerunning the same command asks the judge nothing it has answered."""
    ms = _methods(methods)
    caps = list(CAPABILITIES if capabilities is None else
                ([c.strip() for c in capabilities.split(",") if c.strip()] if isinstance(capabilities, str)
                 else capabilities))
    unknown = [c for c in caps if c not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
    if out is None and into is None:
        raise ValueError("give an output run directory (out) or a run to add the columns to (into)")
    root = Path(into if into is not None else out)
    if into is not None:
        SignalStore(into)  # fail early on a run that is not finished

    pool = read_pool(data, task_field=task_field)
    report = validate_pool(pool, images)
    skipped = [(p.record_id, p.kind, p.message) for p in report.problems if p.severity == ERROR]
    records = report.good_records(pool)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        records = records[: int(limit)]
    if not records:
        kinds = ", ".join(f"{k} {v}" for k, v in report.counts_by_kind().items()) or "the pool has no records"
        raise ValueError(f"{data}: no valid record to judge ({kinds}; run mmsift validate)")
    if images is None and any(r.images for r in records):
        raise ValueError("the pool has image records: give the images folder (--images)")
    digests: dict[Path, str] = {}

    def request(prompt: str, rec: Record, with_images: bool = True) -> JudgeRequest:
        if not with_images or not rec.images:
            return JudgeRequest(prompt)
        paths = tuple(resolve_image(images, p) for p in rec.images)
        for p in paths:
            if p not in digests:
                digests[p] = file_digest(p)
        return JudgeRequest(prompt, paths, tuple(digests[p] for p in paths))

    root.mkdir(parents=True, exist_ok=True)
    cached = CachedBackend(backend, JudgeCache(root / CACHE_FILE))
    n = len(records)
    columns: dict[str, np.ndarray] = {}
    bad: dict[str, list[tuple[int, str | None]]] = {}  # column -> (row, raw answer) that did not parse
    guard = FailureGuard("judge", log_dir=root, max_failure_rate=check_max_failure_rate(max_failure_rate),
                         unit="questions", cause=f"{backend.describe()} is unreachable, keeps failing, or does not "
                                                 "answer in the format the prompts ask for")
    asker = _Asker(cached, chunk_size, bad, guard, [r.id for r in records])

    def fill(row: int, col: str, value) -> None:
        if col == "styles":
            for st in STYLES:
                columns[f"style_{st}"][row] = 1.0 if st in value else 0.0
        else:
            columns[col][row] = value

    try:
        if "mmssr" in ms:
            for c in caps:
                columns[f"cap_{c}"] = np.full(n, np.nan)
            for st in STYLES:
                columns[f"style_{st}"] = np.full(n, np.nan)
            jobs = ((i, col, request(prompt, rec)) for i, rec in enumerate(records)
                    for col, prompt in [(f"cap_{c}", prompts.mmssr_rating_prompt(rec, c)) for c in caps]
                    + [("styles", prompts.mmssr_style_prompt(rec))])
            parsers = {f"cap_{c}": parse.parse_rating for c in caps} | {"styles": parse.parse_styles}
            asker.ask(jobs, n * (len(caps) + 1), "judge mmssr", parsers, fill)
        if "scale" in ms:
            _scale(records, asker, request, columns, fill, bad)
        guard.check(final=True)
    finally:
        cached.close()

    per_row_bad = np.zeros(n, dtype=np.int64)
    for col, items in bad.items():
        for row, _ in items:
            per_row_bad[row] += 1
    columns["judge_unparseable"] = per_row_bad
    unparseable = {col: len(items) for col, items in bad.items()}
    with open(root / UNPARSEABLE_FILE, "w", encoding="utf-8") as f:
        for col, items in sorted(bad.items()):
            for row, raw in items:
                f.write(json.dumps({"id": records[row].id, "column": col, "answer": raw}, ensure_ascii=False) + "\n")
    meta = {"judge": {"model": backend.model_id, "backend": type(backend).__name__, "methods": ms,
                      "capabilities": caps if "mmssr" in ms else [], "n_records": n,
                      "n_skipped": len(skipped), "skipped_by_kind": report.counts_by_kind(),
                      "questions": asker.n_questions, "from_cache": cached.hits, "asked": cached.asked,
                      "no_answer": cached.failed, "unparseable": unparseable,
                      "n_unparseable": int(sum(unparseable.values()))}}
    notes: list[str] = []
    ids = [r.id for r in records]
    if into is None:
        # Like a probe run, a judge run names its pool, so `mmsift select RUN` can write the subset.
        pool_meta = {"pool": str(Path(pool.path).resolve()), "pool_format": pool.format,
                     "images": None if images is None else str(Path(images).resolve()), "task_field": task_field,
                     "skipped": [{"id": i, "kind": k, "message": m} for i, k, m in skipped]}
        store = write_store(root, ids=ids, index=[r.index for r in records], tasks=[r.task for r in records],
                            columns=columns, meta={**pool_meta, **meta})
    else:
        store, notes = _merge_into(Path(into), ids, columns, meta)
    log.info("judge wrote %d records to %s", n, store.root)
    return JudgeResult(store=store, n_records=n, skipped=skipped, n_questions=asker.n_questions,
                       n_cached=cached.hits, n_asked=cached.asked, n_no_answer=cached.failed,
                       unparseable=unparseable, notes=notes)


def _scale(records, asker, request, columns, fill, bad) -> None:
    """SCALE: the judge assigns each record a task, writes two captions per image record (general, and one for
    that task), then rates the text-only criteria against those captions."""
    n = len(records)
    columns["scale_task"] = np.full(n, None, dtype=object)
    asker.ask(((i, "scale_task", request(prompts.scale_task_prompt(rec), rec)) for i, rec in enumerate(records)),
              n, "judge scale tasks", {"scale_task": parse.parse_task}, fill)
    task = columns["scale_task"]

    def task_text(i: int) -> str:
        # A record whose task answer did not parse is captioned for its source instead (still counted).
        return TASK_TEXT[task[i]] if task[i] is not None else (records[i].task or "all")

    columns["caption_general"] = np.full(n, None, dtype=object)
    columns["caption_task"] = np.full(n, None, dtype=object)
    with_images = [i for i, rec in enumerate(records) if rec.images]
    jobs = ((i, col, request(prompt, records[i])) for i in with_images
            for col, prompt in zip(("caption_general", "caption_task"), prompts.scale_caption_prompts(task_text(i))))
    parsers = {"caption_general": parse.parse_caption, "caption_task": parse.parse_caption}
    asker.ask(jobs, 2 * len(with_images), "judge scale captions", parsers, fill)
    gen, spec = columns["caption_general"], columns["caption_task"]
    for crit in prompts.SCALE_CRITERIA:
        columns[f"scale_{crit}"] = np.full(n, np.nan)
    # A record whose captions did not come back has nothing to be judged against: its ratings stay NaN.
    no_caption = [i for i in with_images if gen[i] is None or spec[i] is None]
    if no_caption:
        bad["scale_not_rated_no_caption"] = [(i, None) for i in no_caption]
    skip = set(no_caption)

    def rating_jobs():
        for i, rec in enumerate(records):
            if i in skip:
                continue
            g, s = (gen[i], spec[i]) if rec.images else ("(no image)", "(no image)")
            for crit in prompts.SCALE_CRITERIA:
                if crit == "image_clarity" and not rec.images:
                    continue
                yield i, f"scale_{crit}", request(prompts.scale_rating_prompt(rec, crit, g, s), rec, with_images=False)

    n_img, n_txt = len(with_images) - len(skip), n - len(with_images)
    total = n_img * len(prompts.SCALE_CRITERIA) + n_txt * (len(prompts.SCALE_CRITERIA) - 1)
    parsers = {f"scale_{c}": parse.parse_rating for c in prompts.SCALE_CRITERIA}
    asker.ask(rating_jobs(), total, "judge scale ratings", parsers, fill)


def _merge_into(run: Path, ids: list[str], columns: dict[str, np.ndarray], meta: dict):
    """Rewrite ``run`` with the judge columns added, aligned by id (vectors are read fully first, since the
    files they are mapped from are rewritten)."""
    old = SignalStore(run)
    sig = old.load(None, mmap=False)
    pos = {rid: i for i, rid in enumerate(ids)}
    rows = np.array([pos.get(str(rid), -1) for rid in sig.ids], dtype=np.int64)
    have = rows >= 0
    merged = dict(sig.columns)
    for name, arr in columns.items():
        if arr.dtype == object:
            full = np.full(len(sig), None, dtype=object)
        elif name == "judge_unparseable":
            full = np.zeros(len(sig), dtype=np.int64)
        else:
            full = np.full(len(sig), np.nan)
        full[have] = arr[rows[have]]
        merged[name] = full
    keep_meta = {k: v for k, v in old.manifest.items() if k not in ("mmsift_version", "created", "count", "signals")}
    n_unjudged = int((~have).sum())
    n_extra = len(ids) - int(have.sum())
    notes = []
    if n_unjudged:
        notes.append(f"{n_unjudged} rows of {run} were not judged (skipped or not in the pool): their judge "
                     "columns are NaN")
    if n_extra:
        notes.append(f"{n_extra} judged records are not in {run} and were left out")
    meta = {**meta, "judge": {**meta["judge"], "merged_into": str(run), "rows_not_judged": n_unjudged,
                              "judged_not_in_run": n_extra}}
    store = write_store(run, ids=sig.ids, index=sig.index, tasks=sig.tasks, columns=merged,
                        meta={**keep_meta, **meta})
    return store, notes
