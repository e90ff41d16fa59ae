"""The Ray executor on a local 2-CPU Ray cluster: a worker killed in the middle of a shard costs only that shard,
and the finished run holds the same signals as a clean local run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mmsift.probe.config import ProbeConfig

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray instance for the module (starting one costs ~10 s here). It also declares 2 GPUs: Ray only
    accounts for them (and sets CUDA_VISIBLE_DEVICES per actor), which is all the GPU placement test needs."""
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()

SIGNALS = ["loss", "el2n", "tok_loss_std", "sv_entropy", "loss_noq", "loss_imgnoise", "last", "attn_pool",
           "img_mean", "fmt"]


def make_dying_shard_fn(log_dir: str, victim: int):
    """The probe's shard function, except that the first attempt at shard ``victim`` computes everything, writes
    part of its output and then kills its worker process before the completion marker.

    Built in a closure so Ray ships it by value (the test module cannot be imported in Ray's workers).
    """

    def shard_fn(spec):
        import os
        from pathlib import Path

        from mmsift.probe import shard as shard_module

        log = Path(log_dir) / f"shard-{spec.shard}.log"
        first = not log.exists()
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if spec.shard == victim and first:
            class DyingWriter(shard_module.ShardWriter):
                def write(self, shard, *, ids, index, tasks, columns, tokens=None):
                    # a partial shard on disk (scalars only, no vectors, no .done marker), then the process dies
                    super().write(shard, ids=ids, index=index, tasks=tasks,
                                  columns={k: v for k, v in columns.items() if np.ndim(v) == 1}, tokens=tokens)
                    self._stem(shard).with_suffix(".done").unlink()
                    os._exit(1)

            shard_module.ShardWriter = DyingWriter
        shard_module.probe_shard(spec)

    return shard_fn


def test_killed_worker_costs_only_its_shard_and_results_match_local(ray_cluster, tiny_llava_pool, tmp_path,
                                                                    monkeypatch):
    from mmsift.data.io import read_pool
    from mmsift.probe import runner
    from mmsift.models.proxy import ProxySize, build_proxy

    pool, images = tiny_llava_pool
    texts = [t.text for r in read_pool(pool).records for t in r.turns]
    model = build_proxy(tmp_path / "proxy", texts=texts, size=ProxySize(hidden_size=32, num_layers=2, vocab_size=300))
    common = dict(images=images, model=model, signals=SIGNALS, batch_size=3, shard_size=3)
    clean = runner.run_probe(pool, ProbeConfig(out=tmp_path / "local", executor="local", **common))

    logs = tmp_path / "attempts"
    logs.mkdir()
    monkeypatch.setattr(runner, "probe_shard", make_dying_shard_fn(str(logs), victim=1))
    monkeypatch.setenv("MMSIFT_RAY_WORKERS", "2")  # one actor per shard; the 2 CPUs hold 4 half-CPU actors
    result = runner.run_probe(pool, ProbeConfig(out=tmp_path / "ray", executor="ray", **common))

    pids = {k: (logs / f"shard-{k}.log").read_text().split() for k in range(2)}
    assert len(pids[1]) == 2 and pids[1][0] != pids[1][1], "shard 1 ran twice, in two processes"
    assert len(pids[0]) == 1, "the other shard ran once"
    assert result.n_skipped == 0 and len(result.store) == 6

    a, b = clean.store.load(), result.store.load()
    assert a.ids.tolist() == b.ids.tolist()
    assert sorted(a.columns) == sorted(b.columns)
    for name in a.columns:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(y.astype(np.float64), x.astype(np.float64), rtol=1e-4, atol=1e-4,
                                       equal_nan=True, err_msg=name)
        else:
            assert x.tolist() == y.tolist(), name
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["n_shards"] == 2


def test_shard_errors_stop_the_run_and_deaths_are_retried_a_bounded_number_of_times(ray_cluster):
    from mmsift.exec.ray import run_ray

    def _raise(spec):  # nested, so Ray ships them by value
        raise ValueError(f"bad shard {spec['shard']}")

    def _die(spec):
        import os

        os._exit(3)

    with pytest.raises(ValueError, match="bad shard 7"):  # an exception in the shard is not retried
        run_ray([{"shard": 7}], _raise, workers=1, progress=False)
    with pytest.raises(RuntimeError, match="died 2 times"):  # 1 retry, then the run gives up
        run_ray([{"shard": 8}], _die, workers=1, max_retries=1, progress=False)


def test_gpu_run_places_one_actor_per_gpu_on_disjoint_shards(ray_cluster, tmp_path):
    from types import SimpleNamespace

    from mmsift.exec.ray import run_ray

    log_dir = str(tmp_path)

    def record(spec):  # nested, so Ray ships it by value
        import os
        import time

        with open(os.path.join(log_dir, f"{spec.shard}.txt"), "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
        time.sleep(0.2)

    config = SimpleNamespace(device="cuda")
    specs = [SimpleNamespace(shard=k, out=str(tmp_path / "run"), config=config) for k in range(6)]
    run_ray(specs, record, num_cpus=0.25, progress=False)  # 1 GPU per actor by default on a cuda run
    lines = [(tmp_path / f"{k}.txt").read_text().splitlines() for k in range(6)]
    assert all(len(x) == 1 for x in lines), "every shard ran exactly once"
    seen = [x[0].split() for x in lines]
    by_pid = {}
    for pid, gpu in seen:
        by_pid.setdefault(pid, set()).add(gpu)
    assert len(by_pid) == 2, "two GPUs: two actors"
    assert all(len(g) == 1 for g in by_pid.values()), "an actor keeps its GPU"
    assert sorted(g.pop() for g in by_pid.values()) == ["0", "1"], "each actor has its own GPU"
