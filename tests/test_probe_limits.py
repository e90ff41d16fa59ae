"""Real resolutions with bounded memory: --max-pixels, --max-image-tokens, --max-batch-tokens.

Checked: images over a bound are scaled down (aspect kept) before the processor and their token count obeys the
bound; batches filled to a token budget never exceed it (a record over it alone makes a batch of one); a run
batched by tokens gives the same signals as one batched by records, resumes a run made with another budget, and
the fingerprint of a run without bounds is what it was before the options existed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_families import build_tiny  # noqa: E402

from mmsift.data.records import Turn  # noqa: E402

TURNS = [Turn("user", "<image>\nWhat colour is it?"), Turn("assistant", "Red.")]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))


def big_image():
    from PIL import Image

    return Image.new("RGB", (2048, 1536), "red")


def test_max_image_tokens_and_max_pixels_bound_each_image(qwen):
    from mmsift.models.base import ImageLimits
    from mmsift.models.loading import load_model

    free = load_model(qwen).adapter
    n_free = int(free.encode(TURNS, [big_image()]).image_mask.sum())
    tokens = load_model(qwen, limits=ImageLimits(max_image_tokens=4)).adapter
    n_tok = int(tokens.encode(TURNS, [big_image()]).image_mask.sum())
    assert n_free > 4 and 0 < n_tok <= 4
    pixels = load_model(qwen, limits=ImageLimits(max_pixels=32 * 24)).adapter
    small = pixels.limit_image(big_image())
    assert small.size[0] * small.size[1] <= 32 * 24 and small.size == (32, 24)  # aspect kept
    assert pixels.limit_image(small) is small  # within bounds: untouched
    assert 0 < int(pixels.encode(TURNS, [big_image()]).image_mask.sum()) < n_free


def test_fixed_size_family_refuses_a_token_bound_it_cannot_meet(tmp_path):
    from mmsift.models.base import EncodeError, ImageLimits
    from mmsift.models.loading import load_model

    path = build_tiny("llava", tmp_path / "llava")  # 16 tokens per image whatever its size
    ad = load_model(path, limits=ImageLimits(max_image_tokens=8)).adapter
    with pytest.raises(EncodeError, match="max-image-tokens 8"):
        ad.encode(TURNS, [big_image()])


def test_token_budget_batches_respect_the_budget():
    from types import SimpleNamespace

    from mmsift.probe.config import ShardConfig
    from mmsift.probe.shard import _length_sorted_batches

    lengths = {f"r{i}": n for i, n in enumerate([900, 10, 300, 300, 50, 5000, 20, 120])}

    class Adapter:
        def sort_length(self, turns, n_images, sizes=None):
            return lengths[turns]

    records = [SimpleNamespace(id=k, turns=k, images=[]) for k in lengths]
    fail = SimpleNamespace(by_pos={})
    cfg = ShardConfig(model="m", signals=("loss",), images=None, max_batch_tokens=1000)
    batches = _length_sorted_batches(Adapter(), records, cfg, fail)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert batches[0] == [5]  # over the budget alone
    for b in batches:
        longest = max(lengths[f"r{i}"] for i in b)
        assert len(b) == 1 or longest * len(b) <= 1000
    assert [len(b) for b in _length_sorted_batches(Adapter(), records, ShardConfig(
        model="m", signals=("loss",), images=None, batch_size=3), fail)] == [3, 3, 2]


def test_token_batches_same_signals_and_resume_across_budgets(qwen, tiny_llava_pool, tmp_path):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe

    pool, images = tiny_llava_pool
    signals = ("loss", "el2n", "last", "attn_pool")
    by_records = run_probe(pool, ProbeConfig(images=images, model=qwen, out=tmp_path / "a", signals=signals,
                                             batch_size=4, shard_size=3)).store.load()
    out = tmp_path / "b"
    by_tokens = run_probe(pool, ProbeConfig(images=images, model=qwen, out=out, signals=signals,
                                            max_batch_tokens=120, shard_size=3)).store.load()
    assert by_tokens.ids.tolist() == by_records.ids.tolist()
    for col in signals:
        np.testing.assert_allclose(np.asarray(by_tokens[col], dtype=np.float64),
                                   np.asarray(by_records[col], dtype=np.float64), rtol=1e-5, atol=1e-6)
    # another budget (or none) only changes rounding: the finished run is found, not refused
    again = run_probe(pool, ProbeConfig(images=images, model=qwen, out=out, signals=signals, batch_size=2,
                                        shard_size=3))
    assert again.store.root == out.resolve() or str(again.store.root) == str(out)


def test_fingerprint_without_bounds_is_unchanged_and_bounds_change_it():
    from mmsift.probe.config import ShardConfig

    plain = ShardConfig(model="m", signals=("loss",), images=None).fingerprint()
    assert "max_pixels" not in plain and "max_image_tokens" not in plain and "max_batch_tokens" not in plain
    assert ShardConfig(model="m", signals=("loss",), images=None, max_batch_tokens=64).fingerprint() == plain
    bounded = ShardConfig(model="m", signals=("loss",), images=None, max_pixels=10_000).fingerprint()
    assert bounded != plain and bounded["max_pixels"] == 10_000
    assert json.dumps(plain, sort_keys=True)  # still serialisable as before
