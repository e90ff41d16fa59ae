"""The local Hugging Face backend driven by the bundled tiny LLaVA (random weights, built in the test): its
answers are gibberish, so every rating must be counted unparseable, never guessed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmsift.failures import SystematicFailure
from mmsift.judge.backends import JudgeRequest
from mmsift.judge.runner import run_judge
from mmsift.models.proxy import build_proxy
from mmsift.store import SignalStore

CAPS = ["optical_character_recognition", "humanities"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_hf")
    texts = ["What colour is the square?", "Rating: 3", "Styles: yes/no", "a red square"] * 4
    return build_proxy(root / "model", texts=texts, seed=0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_hf_pool")
    (root / "images" / "sq").mkdir(parents=True)
    recs = []
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 100, 0)).save(root / "images" / "sq" / f"{i}.png")
        recs.append({"id": f"s{i}", "image": f"sq/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "Red."}]})
    recs.append({"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})
    (root / "pool.json").write_text(json.dumps(recs))
    return root / "pool.json", root / "images"


def test_batched_generation_left_padded(tiny_vlm, pool):
    from mmsift.judge.hf_backend import HFBackend

    _, img = pool
    reqs = [JudgeRequest("Rate it. Rating:", (img / "sq" / "0.png",)),
            JudgeRequest("A much longer prompt that pads the other one on the left. Rating:", (img / "sq" / "1.png",)),
            JudgeRequest("text only")]
    one = HFBackend(model_dir=tiny_vlm, batch_size=1, max_new_tokens=4).generate(reqs)
    many = HFBackend(model_dir=tiny_vlm, batch_size=4, max_new_tokens=4).generate(reqs)
    assert all(isinstance(a, str) for a in many)
    assert one == many  # left padding: a batched answer equals the same request answered alone


def test_run_judge_counts_gibberish(tiny_vlm, pool, tmp_path):
    from mmsift.judge.hf_backend import HFBackend

    data, img = pool
    backend = HFBackend(model_dir=tiny_vlm, batch_size=4, max_new_tokens=6)
    # A random-weight judge answers gibberish: by default that is a systematic failure, not bad data.
    with pytest.raises(SystematicFailure, match="judge stopped.*does not answer in the format"):
        run_judge(data, images=img, backend=backend, out=tmp_path / "strict", methods="mmssr", capabilities=CAPS)

    class HalfParseable(HFBackend):
        """Every other answer replaced by a well-formed rating, so the run has usable answers to keep."""

        def generate(self, requests):
            return ["Rating: 4" if i % 2 else a for i, a in enumerate(super().generate(requests))]
    half = HalfParseable(model_dir=tiny_vlm, batch_size=4, max_new_tokens=6)
    res = run_judge(data, images=img, backend=half, out=tmp_path / "run", methods="mmssr", capabilities=CAPS,
                    max_failure_rate=1.0)
    sig = SignalStore(tmp_path / "run").load()
    assert len(sig) == 5 and res.n_questions == 5 * 3
    # A random-weight model does not answer "Rating: <n>": each unparseable answer is NaN and counted.
    n_nan = sum(int(np.isnan(sig[f"cap_{c}"]).sum()) for c in CAPS) + int(np.isnan(sig["style_yes_no"]).sum())
    assert n_nan == res.n_unparseable == int(sig["judge_unparseable"].sum())
    assert n_nan >= 5  # the tiny model's own ratings are gibberish; the parser guesses none of them
    # Rerun: all from the cache.
    half = HalfParseable(model_dir=tiny_vlm, batch_size=4, max_new_tokens=6)
    res2 = run_judge(data, images=img, backend=half, out=tmp_path / "run", methods="mmssr", capabilities=CAPS,
                     max_failure_rate=1.0)
    assert res2.n_asked == 0 and res2.n_cached == 15


def test_two_image_and_text_only_records(tiny_vlm, tiny_llava_pool, tmp_path):
    from mmsift.judge.hf_backend import HFBackend

    data, img = tiny_llava_pool
    backend = HFBackend(model_dir=tiny_vlm, batch_size=4, max_new_tokens=3)
    # Every question got an answer (1, 2 and 0 images are batched separately), and with random weights none of
    # them parses: a run with no usable answer stops even when every failure is accepted.
    with pytest.raises(SystematicFailure, match="12 of the 12 questions") as info:
        run_judge(data, images=img, backend=backend, out=tmp_path / "run", methods="mmssr",
                  capabilities=["humanities"], max_failure_rate=1.0)
    assert "answer did not parse" in str(info.value) and "no answer" not in str(info.value)
