"""benchmarks/gpu_check.sh can only be run on a GPU machine; here its dry run checks every step's entry point and
the Qwen2.5-VL-7B-shaped model it builds (on the meta device: shapes only, no memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_lists_the_steps_and_their_entry_points_parse(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
                          str(tmp_path / "figures.txt")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for step in ("pytest-gpu", "llava-7b-shape", "qwen2.5-vl-7b-shape", "bench-quick"):
        assert f"step {step}" in res.stdout
    assert "FAILED" not in res.stdout
    assert not (tmp_path / "figures.txt").exists()  # a dry run writes no figures


def test_qwen25_vl_7b_shape_builds_at_its_real_size(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from probe_throughput import build_qwen25_vl_7b_shape

    model, processor = build_qwen25_vl_7b_shape(tmp_path / "q", device="meta", dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert 8.0e9 < n < 8.6e9  # Qwen2.5-VL-7B: ~8.3B parameters with its vision tower
    assert model.config.get_text_config().num_hidden_layers == 28
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
