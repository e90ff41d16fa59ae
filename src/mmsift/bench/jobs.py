"""One bench job: train the target from the base on a subset, evaluate it, then any post-training on top of it.

Jobs run in worker processes (:func:`mmsift.exec.processes.run_in_processes`); each process loads the base and
receives the encoded pool and evaluation items once (:class:`JobContext`), then trains job after job. Results are
plain data (per-item correctness, accuracies, step counts and times), so a run gives the same table with one
worker or several: every job is seeded and runs deterministically on one thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mmsift.train.target import TargetRecipe


@dataclass
class TrainJob:
    kept: np.ndarray  # pool positions to train on
    seed: int
    recipe: TargetRecipe
    all_items: bool = False  # evaluate every item (reference rows); False: the score columns' items only
    then: list = field(default_factory=list)  # TrainJobs trained on top of this job's model (post-training)
    masked: bool = False  # train with the context's token masks (a token-cleaning twin row)


@dataclass
class JobResult:
    correct: dict  # kind -> per-item bool
    acc: dict  # kind -> accuracy
    steps: int
    train_s: float
    eval_s: float
    then: list = field(default_factory=list)  # JobResults of the follow-up jobs, in order
    token_masks: dict = field(default_factory=dict)  # counts from train.masks.masked_inputs (masked jobs)
    train_loss: float = float("nan")  # mean answer loss over the training steps


@dataclass
class JobContext:
    """What every job needs; pickled once to each worker process."""

    base_dir: str
    device: str
    threads: int
    encoded_pool: list  # the pool's records encoded by the base's adapter, by pool position
    items: list  # evaluation items
    encoded_items: list
    score_columns: tuple
    records: list | None = None  # the pool's Records by position: recipes with a perception stage read images
    images_dir: str | None = None
    token_masks: dict | None = None  # record id -> turn -> masked spans (mmsift.bench.tokens), for masked jobs


_CONTEXT: dict = {}


def init_worker(ctx: JobContext) -> None:
    """Load the base once in this process; later jobs copy it."""
    import torch

    from mmsift.models.loading import load_model

    torch.set_num_threads(ctx.threads)
    _CONTEXT.clear()
    _CONTEXT["ctx"] = ctx
    _CONTEXT["base"] = load_model(ctx.base_dir, device=ctx.device, dtype="float32")
    scored = [k for k, x in enumerate(ctx.items) if x.kind in ctx.score_columns]
    _CONTEXT["score_items"] = ([ctx.items[k] for k in scored], [ctx.encoded_items[k] for k in scored])


def run_job(job: TrainJob) -> JobResult:
    """Train (from the base) and evaluate ``job``, then its follow-ups from the model it trained."""
    ctx: JobContext = _CONTEXT["ctx"]
    return _train_and_evaluate(_CONTEXT["base"], job, ctx)


def _train_and_evaluate(init, job: TrainJob, ctx: JobContext) -> JobResult:
    from mmsift.bench.evaluate import evaluate_items
    from mmsift.train.target import train_target

    encs = [ctx.encoded_pool[i] for i in job.kept]
    if job.masked and (ctx.token_masks is None or ctx.records is None):
        raise ValueError("a token-cleaning job needs the pool's records and token masks in its context")
    # The masks need the records beside their encoded inputs (train.masks places each answer's tokens).
    records = [ctx.records[i] for i in job.kept] if job.recipe.perception or job.masked else None
    trained = train_target(init, records, ctx.images_dir if records else None, recipe=job.recipe, seed=job.seed,
                           device=ctx.device, encoded=encs, token_masks=ctx.token_masks if job.masked else None)
    items, encoded = (ctx.items, ctx.encoded_items) if job.all_items else _CONTEXT["score_items"]
    t1 = time.perf_counter()
    correct, acc = evaluate_items(trained.model, items, encoded, threads=ctx.threads)
    result = JobResult(correct=correct, acc=acc, steps=len(trained.losses), train_s=round(trained.seconds, 2),
                       eval_s=round(time.perf_counter() - t1, 2), token_masks=dict(trained.token_masks),
                       train_loss=float(np.mean(trained.losses)) if trained.losses else float("nan"))
    result.then = [_train_and_evaluate(trained.model, follow, ctx) for follow in job.then]
    return result
