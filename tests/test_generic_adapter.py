"""The reference test of the generic adapter, on a tiny random checkpoint of each of ten families.

Each checkpoint is written by ``tests/tiny_families.py`` with ``save_pretrained`` (nothing mmsift-specific in it) and
loaded through ``mmsift.models.loading.load_model``, as a user's checkpoint would be. Per family:

- the answer mask: the answer tokens, decoded run by run, are exactly each answer followed by the end-of-turn
  token the family's template writes (a table written here, not derived by the code under test), in a
  conversation whose second user turn holds an image too;
- a mixed batch (one image; text only; two images of other sizes) through the adapter's hooks against batch-1
  runs of the model's own forward with ``output_hidden_states=True`` on the processor's own inputs: every hidden
  state, and the answer loss from the model's own logits;
- the final-token attention against the model's eager attention weights;
- every signal on a small pool through ``run_probe``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_families import FAMILIES, build_tiny  # noqa: E402

from mmsift.data.records import Turn  # noqa: E402

pytestmark = pytest.mark.slow

# What each tiny template writes after an answer (tests/tiny_families.py TEMPLATES), and whether a space precedes it.
END_OF_TURN = {"llava": "</s>", "llava_next": "</s>", "llava_onevision": "<|im_end|>", "qwen2_vl": "<|im_end|>",
               "qwen2_5_vl": "<|im_end|>", "qwen3_vl": "<|im_end|>", "idefics3": "<end_of_utterance>",
               "gemma3": "<end_of_turn>", "internvl": "<|im_end|>", "mistral3": "</s>"}

CONV = [Turn("user", "<image>\nWhat colour is it?"), Turn("assistant", "Red."),
        Turn("user", "<image>\nAnd the shape?"), Turn("assistant", "A circle.")]
ONE = [Turn("user", "<image>\nWhat colour is it?"), Turn("assistant", "Red.")]
TEXT = [Turn("user", "Say hi."), Turn("assistant", "Hi!")]
TWO = [Turn("user", "Compare the two images. <image> <image>"), Turn("assistant", "Same.")]


def pil(w, h, color):
    from PIL import Image

    return Image.new("RGB", (w, h), color)


CASES = [(ONE, [pil(64, 48, "red")]), (TEXT, []), (TWO, [pil(32, 64, "blue"), pil(48, 48, "green")])]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    torch.set_num_threads(1)
    return request.param, build_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def loaded(tiny):
    from mmsift.models.loading import load_model

    return load_model(tiny[1], device="cpu", dtype="float32")


def answer_runs(enc, tokenizer) -> list[str]:
    ids, mask = enc.input_ids.tolist(), enc.answer_mask.tolist()
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


def test_answer_mask_is_each_answer_and_its_end_of_turn(tiny, loaded):
    family, _ = tiny
    enc = loaded.adapter.encode(CONV, [pil(64, 48, "red"), pil(48, 64, "blue")])
    eot = END_OF_TURN[family]
    assert [r.strip() for r in answer_runs(enc, loaded.processor.tokenizer)] == ["Red." + eot, "A circle." + eot]
    assert not bool((enc.answer_mask & enc.image_mask).any())
    assert int(enc.image_mask.sum()) > 0
    # exactly one BOS at most: the template's or the tokenizer's, never both
    bos = loaded.processor.tokenizer.bos_token_id
    if bos is not None:
        assert enc.input_ids.tolist().count(bos) <= 1


def reference_single(lm, turns, images):
    """The processor's own inputs for one sample and the model's own forward with every hidden state."""
    ad = lm.adapter
    text = ad.render(ad.messages(turns, len(images)))
    kwargs = {"text": [text], "return_tensors": "pt", "add_special_tokens": ad.add_special_tokens}
    if images:
        kwargs["images"] = [images]
    inputs = {k: v for k, v in lm.processor(**kwargs).items() if torch.is_tensor(v)}
    with torch.no_grad():
        out = lm.model(**inputs, output_hidden_states=True, use_cache=False)
    return inputs, out


def deepstack_states(model) -> set[int]:
    """Hidden-state indices where Qwen3-VL's deepstack adds vision features between layers: the adapter reads
    the input of layer i (features included), ``output_hidden_states`` the output of layer i-1 (before them)."""
    indexes = getattr(getattr(model.config, "vision_config", None), "deepstack_visual_indexes", None) or []
    return set(range(1, len(indexes) + 1))


def test_batched_probe_matches_batch_one_model_forward(loaded):
    from mmsift.models.losses import segment_mean, token_losses

    lm = loaded
    encs = [lm.adapter.encode(t, im) for t, im in CASES]
    batch = lm.adapter.collate(encs)
    n_layers = lm.adapter.num_layers(lm.model)
    with torch.no_grad():
        last, hidden = lm.adapter.forward(lm.model, batch, hidden_layers=list(range(n_layers + 1)))
        rows, ce, _ = token_losses(lm.adapter, lm.model, last, batch, want_el2n=False)
        loss, _ = segment_mean(rows, ce, len(encs))
    for r, ((turns, images), enc) in enumerate(zip(CASES, encs)):
        inputs, out = reference_single(lm, turns, images)
        n = len(enc)
        assert inputs["input_ids"][0].tolist() == enc.input_ids.tolist()
        assert len(out.hidden_states) == n_layers + 1
        deepstack = deepstack_states(lm.model)
        with torch.no_grad():
            _, alone = lm.adapter.forward(lm.model, lm.adapter.collate([enc]), hidden_layers=list(deepstack))
        for i in range(n_layers + 1):
            want = alone[i][0] if i in deepstack else out.hidden_states[i][0]
            torch.testing.assert_close(hidden[i][r, :n], want, rtol=1e-4, atol=1e-5)
        logp = torch.log_softmax(out.logits[0].float(), -1)
        ids = enc.input_ids
        want = [-float(logp[t - 1, ids[t]]) for t in range(1, n) if enc.answer_mask[t]]
        assert float(loss[r]) == pytest.approx(sum(want) / len(want), rel=1e-4, abs=1e-5)


def test_final_token_attention_matches_eager_weights(tiny):
    from mmsift.models.loading import load_model

    lm = load_model(tiny[1], device="cpu", dtype="float32", attn_implementation="eager")
    encs = [lm.adapter.encode(t, im) for t, im in CASES]
    batch = lm.adapter.collate(encs)
    n_layers = lm.adapter.num_layers(lm.model)
    with torch.no_grad():
        _, hs = lm.adapter.forward(lm.model, batch, hidden_layers=[n_layers - 1])
        last_pos = batch.attention_mask.sum(1) - 1
        got = lm.adapter.final_token_attention(lm.model, hs[n_layers - 1], batch.attention_mask, last_pos)
        for r, (turns, images) in enumerate(CASES):
            inputs, _ = reference_single(lm, turns, images)
            want = lm.model(**inputs, output_attentions=True, use_cache=False).attentions[-1][0, :, -1, :]
            n = len(encs[r])
            torch.testing.assert_close(got[r, :, :n], want.float(), rtol=1e-4, atol=1e-5)
            assert float(got[r, :, n:].abs().sum()) == 0.0


def test_every_signal_on_a_small_pool(tiny, tiny_llava_pool, tmp_path):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.probe.signals import KNOWN

    pool, images = tiny_llava_pool
    result = run_probe(pool, ProbeConfig(images=images, model=tiny[1], out=tmp_path / "run", signals=sorted(KNOWN),
                                         batch_size=4, shard_size=4))
    assert result.n_skipped == 0, result.skipped
    sig = result.store.load()
    assert len(sig) == 6
    assert np.diff(result.store.load_tokens().offsets(6)).tolist() == sig["n_answer_tokens"].tolist()
    for col in ("loss", "el2n", "tok_loss_max", "loss_noq", "sv_entropy"):
        assert np.isfinite(sig[col]).all(), col
    for vec in ("last", "attn_pool", "img_mean"):
        assert np.isfinite(np.asarray(sig[vec], dtype=np.float32)).all(), vec


def test_unsupported_family_is_refused_up_front_naming_it(tmp_path):
    import json

    from mmsift.models.loading import load_model
    from mmsift.models.quirks import UnsupportedFamily

    path = tmp_path / "m"  # refused from config.json alone, before anything else is read
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "paligemma",
                                                  "architectures": ["PaliGemmaForConditionalGeneration"]}))
    with pytest.raises(UnsupportedFamily, match=r"'paligemma' \(PaliGemmaForConditionalGeneration\).*no quirk entry"):
        load_model(path)


def test_a_model_without_the_declared_structure_is_refused(loaded):
    from mmsift.models.loading import check_structure
    from mmsift.models.quirks import Quirks, UnsupportedFamily

    with pytest.raises(UnsupportedFamily, match="decoder layers at model.model.nowhere.layers"):
        check_structure(loaded.model, Quirks(decoder="nowhere"))


def test_the_judge_loads_every_family_and_answers(tiny, tmp_path):
    """The judge takes the same processors (video families and Mistral 3 without torchvision); batched answers of
    requests with two, one and no images are strings."""
    from mmsift.judge.backends import JudgeRequest
    from mmsift.judge.hf_backend import HFBackend

    for i, (w, h) in enumerate([(64, 48), (48, 64)]):
        pil(w, h, "red").save(tmp_path / f"{i}.png")
    reqs = [JudgeRequest("Rate it.", (tmp_path / "0.png", tmp_path / "1.png")),
            JudgeRequest("Rate it.", (tmp_path / "0.png",)),
            JudgeRequest("Rate it, a longer one.", (tmp_path / "1.png",)),
            JudgeRequest("Say hi.")]
    answers = HFBackend(model_dir=tiny[1], batch_size=4, max_new_tokens=3).generate(reqs)
    assert all(isinstance(a, str) for a in answers), answers


def test_training_steps_every_family_with_its_vision_tower_frozen(tiny, tiny_llava_pool):
    """Warm-up and training load through the same adapter: two steps lower nothing in the frozen vision tower
    (found by the family's declared name) and change the decoder."""
    from mmsift.data.io import read_pool
    from mmsift.models.loading import load_model
    from mmsift.train.loop import TrainConfig, train_model

    pool, images = tiny_llava_pool
    lm = load_model(tiny[1], device="cpu", dtype="float32")
    tower = lm.adapter.vision_tower(lm.model)
    assert tower is not None
    before_tower = [p.detach().clone() for p in tower.parameters()]
    _, layers = lm.adapter.decoder_layers(lm.model)
    before_dec = layers[0].self_attn.q_proj.weight.detach().clone()
    result = train_model(lm, read_pool(pool).records, images, TrainConfig(steps=2, batch_size=3, freeze_vision=True))
    assert result.n_failed == 0
    assert all(torch.equal(a, b) for a, b in zip(before_tower, tower.parameters()))
    assert not torch.equal(before_dec, layers[0].self_attn.q_proj.weight)


def fifty_record_pool(root):
    """50 LLaVA records: one, two or no images of varied sizes, one to three rounds, a multiple-choice round."""
    import json
    import random

    rng = random.Random(0)
    (root / "img").mkdir(parents=True)
    sizes = [(64, 48), (48, 64), (32, 32), (96, 40), (40, 96)]
    for i, (w, h) in enumerate(sizes):
        pil(w, h, ["red", "blue", "green", "white", "black"][i]).save(root / "img" / f"{i}.png")
    words = "what colour shape is it the red blue circle square same compare".split()
    records = []
    for i in range(50):
        n_img = [1, 1, 2, 0][i % 4]
        conv = []
        for r in range(1 + i % 3):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + "?"
            if r == 0 and i % 7 == 3:
                q += "\nA. red\nB. blue\nAnswer with the option's letter."
            conv += [{"from": "human", "value": ("<image>\n" * n_img if r == 0 else "") + q},
                     {"from": "gpt", "value": "A" if r == 0 and i % 7 == 3 else
                      " ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "."}]
        rec = {"id": f"p{i}", "conversations": conv}
        if n_img:
            rec["image"] = [f"img/{rng.randrange(len(sizes))}.png" for _ in range(n_img)]
        records.append(rec)
    (root / "pool.json").write_text(json.dumps(records), encoding="utf-8")
    return root / "pool.json", root


def test_fifty_record_pool_every_signal(tiny, tmp_path):
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.probe.signals import KNOWN

    pool, root = fifty_record_pool(tmp_path / "pool")
    result = run_probe(pool, ProbeConfig(images=root, model=tiny[1], out=tmp_path / "run", signals=sorted(KNOWN),
                                         batch_size=8, shard_size=25))
    assert result.n_skipped == 0, result.skipped
    sig = result.store.load()
    assert len(sig) == 50
    for col in ("loss", "el2n", "tok_loss_max", "tok_loss_std", "sv_entropy", "sv_tau", "loss_noq"):
        assert np.isfinite(sig[col]).all(), col
    for vec in ("last", "mean", "attn_pool", "img_mean", "txt_mean"):
        assert np.isfinite(np.asarray(sig[vec], dtype=np.float32)).all(), vec
