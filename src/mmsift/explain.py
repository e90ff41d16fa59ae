"""Words for a selection: what each method's score and score components mean, and which tasks look skewed.

Used by ``mmsift select``, the HTML report, the demo and recipes, so a number is never printed without its
meaning (e.g. perplexity is shown as perplexity with "lower perplexity kept", not as the negative score the
selector ranks by).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

# Per-sample arrays scorers put in ``details_``, in words.
COMPONENTS = {
    "I": "informativeness: entropy of the singular values of the sample's hidden states (higher = richer)",
    "U": "uniqueness: distance to the other samples of its domain cluster, weighted by their informativeness",
    "R": "representativeness: how strongly its domain cluster relates to the task's other clusters, x I",
    "domain": "domain cluster id inside the task (Ward clustering of the last hidden state)",
    "subgroup": "ARDS subgroup id (k-means of the conversation vectors per instruction format; -1: text only)",
    "gap": "ARDS perturbation gap: |loss under the symbol/permutation attack - clean loss| on the multiple-choice "
           "rounds, or |loss with the image noised - clean loss|",
    "cluster": "COINCIDE cluster id (spherical k-means of image+text features)",
    "T": "COINCIDE transferability of the sample's cluster (mean cosine to the other clusters)",
    "D": "COINCIDE density of the sample's cluster (mean kernel similarity of its members)",
    "ifd": "instruction-following difficulty: loss with the question / loss of the answer alone",
    "ds2_rated": "judge rating before correction",
    "ds2_corrected": "judge rating after curation (replaced where SimiFeat found it wrong with enough confidence)",
    "ds2_noisy": "DS2: share of SimiFeat rounds that flagged the rating as wrong",
    "ds2_confidence": "DS2: confidence in the rating its neighbours vote for (a flagged rating is replaced at >= 0.5)",
    "ds2_rarity": "rarity: mean distance to the nearest neighbours (long-tail tie-break)",
    "scale_rarity": "SCALE rarity of the caption/task",
    "scale_combined": "SCALE combined alignment/clarity/rarity/coherence score",
    "kept": "1 if SemDeDup keeps the sample, 0 if it is a near-duplicate of a kept one",
    "cos_centroid": "cosine similarity to its SemDeDup cluster centroid",
}

# Methods whose score is minus a quantity in some modes: what that quantity is called.
_MODE_QUANTITY = {"loss": "answer loss", "perplexity": "perplexity"}


@dataclass(frozen=True)
class ScoreMeaning:
    """How to show a method's scores: ``label`` of the shown value, ``sign`` (shown = sign x score), a sentence."""

    label: str
    sign: float
    sentence: str

    def shown(self, scores: np.ndarray) -> np.ndarray:
        return self.sign * np.asarray(scores, dtype=np.float64)


def _param_value(method: str, params: dict | None, name: str):
    from mmsift.scorers import get_scorer_class

    if params and name in params:
        return params[name]
    p = inspect.signature(get_scorer_class(method).__init__).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def score_meaning(method: str, params: dict | None = None) -> ScoreMeaning:
    """The meaning of ``method``'s scores with ``params`` (defaults filled from the scorer's signature)."""
    if method == "selfcheck":
        # -loss, or -(loss - loss_ref) with a reference run: shown as the (change of) loss, lower kept.
        return ScoreMeaning("answer loss (minus the reference loss, with --reference-run)", -1.0,
                            "lower answer loss (or lower loss change against the reference run) kept")
    quantity = _MODE_QUANTITY.get(method)
    if quantity is not None:
        mode = _param_value(method, params, "mode")
        if mode == "low":
            return ScoreMeaning(quantity, -1.0, f"lower {quantity} kept")
        if mode == "high":
            return ScoreMeaning(quantity, 1.0, f"higher {quantity} kept")
        if mode == "mid":
            # perplexity's mid mode measures the distance in loss space (log perplexity), as loss's does
            return ScoreMeaning("distance of the answer loss from its median", -1.0,
                                f"{quantity} closest to the median kept (distance measured on the answer loss)")
    return ScoreMeaning(f"{method} score", 1.0, f"higher {method} score kept")


def describe_components(details: dict) -> list[str]:
    """One line per score component a selection carries: its name and what it means."""
    return [f"{name}: {COMPONENTS.get(name, 'per-sample value the method reports')}" for name in details]


def constant_notes(details: dict) -> list[str]:
    """A note per score component that has one value for every record (DataTailor's U = 0 everywhere, one
    COINCIDE cluster): it told no record from another, and says why a ranking looks degenerate."""
    import numpy as np

    notes = []
    for name, values in details.items():
        v = np.asarray(values)
        if v.ndim != 1 or len(v) < 2 or v.dtype.kind not in "fiu":
            continue
        finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        if len(finite) > 1 and float(finite.min()) == float(finite.max()):
            notes.append(f"component {name} is {float(finite[0]):.4g} for every record: it tells no record from "
                         "another here (too few records or clusters, or probe vectors that barely differ), so the "
                         "ranking rests on the other components")
    return notes


def task_notes(kept_per_task: dict, total_per_task: dict, *, far: float = 4.0, min_expected: float = 5.0
               ) -> list[str]:
    """Notes for tasks kept at 0% or far from their pool share (below 1/``far`` or above ``far`` times it).

    A task whose expected count (its pool share x the subset size) is under ``min_expected`` is only flagged at
    0 kept: small numbers wander by chance.
    """
    n_total = sum(total_per_task.values())
    n_kept = sum(kept_per_task.values())
    notes = []
    if not n_total or not n_kept:
        return notes
    for task in sorted(total_per_task):
        total, kept = total_per_task[task], kept_per_task.get(task, 0)
        expected = total / n_total * n_kept
        if kept == 0 and expected >= 1:
            notes.append(f"task {task!r}: 0 of {total} kept (its pool share would give {expected:.0f}); "
                         "the method dropped this task entirely — add --balance-tasks to keep every task's share")
        elif expected >= min_expected and not (1 / far <= kept / expected <= far):
            notes.append(f"task {task!r}: kept {kept} of {total} ({kept / total:.0%}), {kept / expected:.1f}x its pool "
                         f"share of the subset ({expected:.0f} expected)")
    return notes


def rerun_commands(*, pool, images, model, run, methods, budget, subsets: dict, seed: int = 0,
                   warmup_epochs: int | None = None, warmup_samples: int | None = None) -> list[str]:
    """The shell commands that redo each step of a run on its outputs (validate, warmup when ``warmup_epochs`` is
    given, probe, one select per method)."""
    import shlex

    q = shlex.quote
    lines = [f"mmsift validate {q(str(pool))} --images {q(str(images))}"]
    if warmup_epochs is not None:
        lines.append(f"mmsift warmup {q(str(pool))} --images {q(str(images))} --out {q(str(model))} "
                     f"--epochs {warmup_epochs} --seed {seed}"
                     + (f" --n-samples {warmup_samples}" if warmup_samples is not None else ""))
    lines.append(f"mmsift probe {q(str(pool))} --images {q(str(images))} --model {q(str(model))} "
                 f"--out {q(str(run))} --methods {','.join(methods)} --overwrite")
    for method in methods:
        out = subsets[method]
        html = str(out.with_name(out.stem + ".html")) if hasattr(out, "with_name") else f"{out}.html"
        lines.append(f"mmsift select {q(str(run))} --method {method} --budget {budget} --seed {seed} "
                     f"--out {q(str(out))} --scores {q(html[:-5] + '.scores.csv')} --html {q(html)}")
    return lines
