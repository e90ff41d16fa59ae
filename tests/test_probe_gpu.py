"""The probe's GPU path (CUDA, bf16 by default): run with `pytest -m gpu` on a machine with a CUDA device.

Deselected by default (pyproject's addopts) and skipped without CUDA, so CI on CPU never runs it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_probe_helpers import make_images, pool_records, pool_texts, write_pool

from mmsift.probe.config import ProbeConfig
from mmsift.probe.runner import run_probe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_bf16_probe_matches_cpu_fp32(tmp_path):
    from mmsift.models.proxy import build_proxy

    make_images(tmp_path / "images")
    records = pool_records(18)
    pool = write_pool(tmp_path / "pool.json", records)
    model = build_proxy(tmp_path / "model", texts=pool_texts(records), seed=0)
    names = ["loss", "el2n", "sv_entropy", "sv_tau", "last", "last_final", "attn_pool", "img_mean", "attn_img",
             "attn_txt"]
    cpu = run_probe(pool, ProbeConfig(images=tmp_path / "images", model=model, out=tmp_path / "cpu", signals=names,
                                      dtype="float32", batch_size=1))
    gpu = run_probe(pool, ProbeConfig(images=tmp_path / "images", model=model, out=tmp_path / "gpu", signals=names,
                                      device="cuda", batch_size=8))
    assert gpu.store.manifest["device"] == "cuda" and gpu.store.manifest["dtype"] in ("auto", "bfloat16")
    a, b = cpu.store.load(mmap=False), gpu.store.load(mmap=False)
    assert list(a.ids) == list(b.ids)
    for k in ("loss", "el2n", "sv_entropy", "sv_tau"):
        np.testing.assert_allclose(b[k], a[k], rtol=0.05, atol=0.02, err_msg=k)
    for k in ("last", "last_final", "attn_pool", "img_mean", "attn_img", "attn_txt"):
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        ok = (nx > 0) & (ny > 0)
        cos = (x[ok] * y[ok]).sum(1) / (nx[ok] * ny[ok])
        assert cos.min() > 0.99, (k, cos.min())
