"""A user's evaluation file -> bench evaluation items (``mmsift bench --eval``).

The file is any pool format mmsift reads (LLaVA JSON/JSONL, ShareGPT, Parquet...). Every user/assistant round of a
record is one item, asked on its own with the record's image (earlier rounds are not fed as context), scored by
answer log-likelihood as the preset's items are (:mod:`mmsift.bench.evaluate`):

- a record with an ``options`` list is multiple choice: the prompt lists the options as ``A. ...``, ``B. ...``, the
  candidates are the letters and the gold answer (the option text, or its letter) is scored by its letter;
- otherwise the question is open: its candidates are the distinct gold answers of every eval item with the same
  question text. An item whose question has a single distinct answer in the file cannot be scored (every model
  would be right) and is left out, counted in the summary.

Columns (the bench's per-column accuracies) are the records' task (``mmsift.data.tasks.task_of``, with
``task_field``) or, with ``column_by="question"``, the question text. Chance per item is 1 / candidates.
Problems are raised as ``EvalFileError`` naming the record and what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mmsift.bench.evaluate import EvalItem

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
COLUMN_BY = ("task", "question")


class EvalFileError(ValueError):
    """An evaluation file the bench cannot use; the message names the record and the problem."""


@dataclass
class EvalSet:
    items: list[EvalItem]
    columns: list[str]
    n_records: int
    left_out: dict = field(default_factory=dict)  # reason -> count of items left out

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in self.left_out.items() if n)
        return (f"evaluation: {len(self.items)} items from {self.n_records} records in {len(self.columns)} columns"
                + (f" (left out: {dropped})" if dropped else ""))


def _rounds(record) -> list[tuple[str, str]]:
    """(question, answer) per user/assistant round; system turns are ignored."""
    turns = [t for t in record.turns if t.role in ("user", "assistant")]
    out = []
    for k in range(0, len(turns) - 1, 2):
        user, asst = turns[k], turns[k + 1]
        if user.role != "user" or asst.role != "assistant":
            raise EvalFileError(f"record {record.id!r}: turns must alternate user/assistant, found "
                                f"{user.role} then {asst.role} at turn {k}")
        out.append((user.text.replace("<image>", "").strip(), asst.text.strip()))
    return out


def _options(record) -> list[str] | None:
    opts = record.raw.get("options")
    if opts is None:
        return None
    if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
        raise EvalFileError(f"record {record.id!r}: 'options' must be a list of at least two non-empty strings")
    if len(opts) > len(LETTERS):
        raise EvalFileError(f"record {record.id!r}: {len(opts)} options; at most {len(LETTERS)} can be lettered")
    return [o.strip() for o in opts]


def mc_item(record, question: str, answer: str, options: list[str], column: str, image: str) -> EvalItem:
    letters = list(LETTERS[: len(options)])
    if answer in options:
        gold = letters[options.index(answer)]
    elif answer.rstrip(".").upper() in letters:
        gold = answer.rstrip(".").upper()
    else:
        raise EvalFileError(f"record {record.id!r}: answer {answer!r} is neither one of its options {options} "
                            f"nor one of their letters {letters}")
    prompt = "\n".join([question] + [f"{x}. {o}" for x, o in zip(letters, options)] + [MC_INSTRUCTION])
    return EvalItem(image, prompt, gold, letters, column, chance=1.0 / len(letters))


def load_eval_file(path, images_dir, *, column_by: str = "task", task_field: str | None = None) -> EvalSet:
    """Read ``path`` and return its items (see the module docstring); every record needs exactly one image
    that exists under ``images_dir``."""
    from mmsift.data.io import read_pool
    from mmsift.data.tasks import task_of

    if column_by not in COLUMN_BY:
        raise ValueError(f"column_by must be one of {COLUMN_BY}, got {column_by!r}")
    path = Path(path)
    if not path.exists():
        raise EvalFileError(f"--eval {path}: no such file")
    pool = read_pool(path)
    if pool.problems:
        p = pool.problems[0]
        raise EvalFileError(f"--eval {path}: {len(pool.problems)} records cannot be read, first: "
                            f"[{p.where()}] {p.message}")
    if not pool.records:
        raise EvalFileError(f"--eval {path}: no records")
    images_dir = Path(images_dir)
    open_rows: list[tuple] = []
    items: list[EvalItem] = []
    for r in pool.records:
        if len(r.images) != 1:
            raise EvalFileError(f"record {r.id!r}: {len(r.images)} images; the bench evaluates single-image "
                                "records only")
        if not (images_dir / r.images[0]).is_file():
            raise EvalFileError(f"record {r.id!r}: image {r.images[0]!r} not found under {images_dir}")
        rounds = _rounds(r)
        if not rounds:
            raise EvalFileError(f"record {r.id!r}: no user/assistant round to evaluate")
        options = _options(r)
        for question, answer in rounds:
            if not question or not answer:
                raise EvalFileError(f"record {r.id!r}: an empty question or answer")
            column = task_of(r, task_field) if column_by == "task" else question
            if options is not None:
                items.append(mc_item(r, question, answer, options, column, r.images[0]))
            else:
                open_rows.append((question, answer, column, r.images[0]))
    answers_by_q: dict[str, set[str]] = {}
    for q, a, _, _ in open_rows:
        answers_by_q.setdefault(q, set()).add(a)
    left_out = {"open items whose question has one distinct answer": 0}
    for q, a, column, image in open_rows:
        cands = sorted(answers_by_q[q])
        if len(cands) < 2:
            left_out["open items whose question has one distinct answer"] += 1
            continue
        items.append(EvalItem(image, q, a, cands, column, chance=1.0 / len(cands)))
    if not items:
        raise EvalFileError(f"--eval {path}: no scorable item (an open question needs at least two distinct "
                            "answers among the items that ask it; or give 'options')")
    columns = sorted({x.kind for x in items})
    out = EvalSet(items, columns, len(pool.records), left_out)
    log.info("%s", out.summary())
    return out
