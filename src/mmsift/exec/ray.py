"""The Ray executor: the probe's shards run in Ray actors, one model copy per actor (the optional ``mmsift[ray]``).

Each actor is a long-lived worker process: it loads the model on its first shard and keeps it for the next ones
(``runner.get_model`` caches it per process), so a shard costs only its own compute. Shards are handed out one at a
time to whichever actor is free, so the actors always work on disjoint shards.

Resources: on a GPU run (``config.device`` starts with ``cuda``) each actor reserves ``num_gpus=1``, so a node with
k GPUs runs k actors, one per GPU (Ray sets ``CUDA_VISIBLE_DEVICES`` per actor, so ``cuda`` is that actor's GPU).
On CPU each actor reserves a fraction of a CPU (0.5 by default): an actor that reserves every CPU of a small node
can leave Ray no CPU for its own bookkeeping and deadlock (ray-project/ray#44687).

Failures: a shard is finished when its ``.done`` marker exists (``mmsift.store.ShardWriter``). When an actor's
process dies (killed, out of memory, node lost) the actor is replaced by a new one and its shard is handed out
again, up to ``max_retries`` times per shard; every other shard is untouched, and a shard whose marker was
written before the death is not redone. An exception raised by the shard function itself is a bug or bad input,
not a lost worker: the run stops with that exception, as with the local executor (finished shards stay done).

Cluster: ``address`` (or ``RAY_ADDRESS``) connects to a running cluster (``ray start --head`` on one node,
``ray start --address=HEAD:6379`` on the others); without one a local Ray instance is started for the run and
shut down after it. An already initialised Ray (``ray.init`` in the caller) is used as it is.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DEFAULT_CPU_FRACTION = 0.5


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else None


def _is_done(spec) -> bool:
    from mmsift.store import ShardWriter

    out, shard = getattr(spec, "out", None), getattr(spec, "shard", None)
    return out is not None and shard is not None and ShardWriter(out).is_done(shard)


def _device_of(specs) -> str:
    config = getattr(specs[0], "config", None)
    return str(getattr(config, "device", "cpu"))


def _worker_class(ray):
    @ray.remote
    class ShardWorker:
        """Runs shard functions in one long-lived process (so the model loaded by the first shard is reused)."""

        def run(self, fn, spec):
            fn(spec)
            return getattr(spec, "shard", None)

        def pid(self) -> int:
            return os.getpid()

    return ShardWorker


def run_ray(
    specs: list,
    fn: Callable,
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    workers: int | None = None,
    max_retries: int | None = None,
    progress: bool = True,
) -> None:
    """Call ``fn(spec)`` for every spec in Ray actors; returns when every shard is done.

    ``num_cpus`` / ``num_gpus``: resources each actor reserves (default: 1 GPU and 1 CPU for a ``cuda`` device,
    else 0.5 CPU). ``workers``: number of actors (default: as many as the cluster's resources allow, at most one
    per shard). ``max_retries``: how often one shard is handed out again after its worker died (default 3).
    Each default can also be set with ``MMSIFT_RAY_NUM_CPUS``, ``MMSIFT_RAY_NUM_GPUS``, ``MMSIFT_RAY_WORKERS``,
    ``MMSIFT_RAY_MAX_RETRIES``; ``address`` defaults to ``RAY_ADDRESS``.
    """
    import ray

    specs = [s for s in specs if not _is_done(s)]
    if not specs:
        return
    gpu_run = _device_of(specs).startswith("cuda")
    num_gpus = num_gpus if num_gpus is not None else _env_float("MMSIFT_RAY_NUM_GPUS")
    num_gpus = (1.0 if gpu_run else 0.0) if num_gpus is None else float(num_gpus)
    num_cpus = num_cpus if num_cpus is not None else _env_float("MMSIFT_RAY_NUM_CPUS")
    num_cpus = (1.0 if gpu_run else DEFAULT_CPU_FRACTION) if num_cpus is None else float(num_cpus)
    max_retries = max_retries if max_retries is not None else int(_env_float("MMSIFT_RAY_MAX_RETRIES") or 3)
    workers = workers if workers is not None else (int(_env_float("MMSIFT_RAY_WORKERS") or 0) or None)

    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
            started_here = True
    try:
        _run(ray, specs, fn, num_cpus=num_cpus, num_gpus=num_gpus, workers=workers, max_retries=max_retries,
             progress=progress)
    finally:
        if started_here:
            ray.shutdown()


def _capacity(ray, num_cpus: float, num_gpus: float) -> int:
    total = ray.cluster_resources()
    fits = []
    if num_gpus > 0:
        fits.append(int(total.get("GPU", 0) // num_gpus))
    if num_cpus > 0:
        fits.append(int(total.get("CPU", 0) // num_cpus))
    return max(1, min(fits)) if fits else 1


def _run(ray, specs, fn, *, num_cpus, num_gpus, workers, max_retries, progress) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    if num_gpus > 0 and ray.cluster_resources().get("GPU", 0) < num_gpus:
        raise RuntimeError(f"each Ray worker needs {num_gpus} GPU(s) but the cluster has "
                           f"{ray.cluster_resources().get('GPU', 0)}; use device='cpu' or a cluster with GPUs")
    n_workers = min(len(specs), workers or _capacity(ray, num_cpus, num_gpus))
    worker_cls = _worker_class(ray).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
    fn_ref = ray.put(fn)
    log.info("ray: %d shards on %d workers (%.2g CPU, %.2g GPU each)", len(specs), n_workers, num_cpus, num_gpus)

    queue = deque(specs)
    attempts: dict[int, int] = {}
    running: dict = {}  # object ref -> (actor, spec)
    idle = [worker_cls.remote() for _ in range(n_workers)]
    bar = tqdm(total=len(specs), desc="probe shards (ray)", unit="shard", disable=not progress)
    try:
        while queue or running:
            while queue and idle:
                actor, spec = idle.pop(), queue.popleft()
                key = id(spec)
                attempts[key] = attempts.get(key, 0) + 1
                running[actor.run.remote(fn_ref, spec)] = (actor, spec)
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            actor, spec = running.pop(ref)
            try:
                ray.get(ref)
            except RayTaskError as e:  # the shard function raised: stop, as the local executor does
                raise e.as_instanceof_cause() from None
            except RayActorError as e:  # the worker process died: replace it, hand the shard out again
                ray.kill(actor, no_restart=True)
                idle.append(worker_cls.remote())
                if _is_done(spec):
                    log.warning("ray worker died after shard %s was written; not redone", spec.shard)
                    bar.update(1)
                    continue
                if attempts[id(spec)] > max_retries:
                    raise RuntimeError(f"shard {getattr(spec, 'shard', '?')}: worker died "
                                       f"{attempts[id(spec)]} times (last: {e})") from None
                log.warning("ray worker died on shard %s (%s); retrying it (attempt %d of %d)",
                            getattr(spec, "shard", "?"), type(e).__name__, attempts[id(spec)] + 1,
                            max_retries + 1)
                queue.appendleft(spec)
                continue
            idle.append(actor)
            bar.update(1)
    finally:
        bar.close()
        for actor, _ in running.values():
            ray.kill(actor, no_restart=True)
        for actor in idle:
            ray.kill(actor, no_restart=True)
