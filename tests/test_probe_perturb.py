"""ARDS attacks, multiple-choice detection and the format label, checked by hand on small texts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmsift.data.records import Turn
from test_probe_helpers import loaded, probe_setup  # noqa: F401  (fixtures)
from mmsift.probe.perturb import (
    alpha_bar, find_mc_rounds, is_multiple_choice, permutation_attack, sigmoid_betas,
    symbol_attack,
)

Q = "What is shown?\nA. a cat\nB. a dog\nC. a bird\nAnswer with the option's letter."


def turns(q, a):
    return [Turn("user", q), Turn("assistant", a)]


@pytest.mark.parametrize("answer", ["B", "B.", "(B)", "B. a dog", "The answer is B.", "Answer: B"])
def test_mc_detected_with_answer_forms(answer):
    rounds = find_mc_rounds(turns(Q, answer))
    assert len(rounds) == 1
    assert rounds[0].answer == "B"
    assert [o.label for o in rounds[0].options] == ["A", "B", "C"]
    assert [o.text for o in rounds[0].options] == ["a cat", "a dog", "a bird"]


@pytest.mark.parametrize("q", ["Pick:\n(A) red\n(B) blue", "Pick:\nA) red\nB) blue", "Pick:\n  A. red\n  B. blue"])
def test_mc_label_styles(q):
    assert is_multiple_choice(turns(q, "A"))


@pytest.mark.parametrize("q,a", [
    ("What is it?", "A cat."),                       # no options
    ("Pick:\nA. red", "A"),                          # one option only
    (Q, "D"),                                        # answer not an option
    (Q, "A dog sitting on a mat."),                  # free text starting with a capital A
    ("Pick:\nA. red\nC. blue", "A"),                 # letters not consecutive from A
])
def test_not_mc(q, a):
    assert not is_multiple_choice(turns(q, a))


def test_symbol_attack_by_hand():
    out = symbol_attack(turns(Q, "B. a dog"))
    assert out[0].text == "What is shown?\nQ. a cat\nW. a dog\nE. a bird\nAnswer with the option's letter."
    assert out[1].text == "W. a dog"
    paren = symbol_attack(turns("Pick:\n(A) red\n(B) blue", "(A)"))
    assert paren[0].text == "Pick:\n(Q) red\n(W) blue" and paren[1].text == "(Q)"
    assert symbol_attack(turns("What is it?", "A cat.")) is None


def test_permutation_attack_answer_follows_option():
    for seed in range(20):
        out = permutation_attack(turns(Q, "B"), seed=seed, key="rec1")
        lines = out[0].text.split("\n")
        options = {ln[0]: ln[3:] for ln in lines[1:4]}
        assert sorted(options.values()) == ["a bird", "a cat", "a dog"]
        assert list(options) == ["A", "B", "C"]
        assert options[out[1].text] == "a dog"  # the answer letter still names the correct option
        assert [options[k] for k in "ABC"] != ["a cat", "a dog", "a bird"]  # always reordered
        assert lines[0] == "What is shown?" and lines[4] == "Answer with the option's letter."
    # Seeded: same (seed, key) -> same order; the permutation depends on the key.
    a = permutation_attack(turns(Q, "B"), seed=3, key="x")
    assert a == permutation_attack(turns(Q, "B"), seed=3, key="x")
    orders = {permutation_attack(turns(Q, "B"), seed=3, key=f"k{i}")[0].text for i in range(12)}
    assert len(orders) > 1


def test_multi_turn_only_mc_round_changes():
    t = [Turn("user", "Hello?"), Turn("assistant", "Hi."), Turn("user", Q), Turn("assistant", "C")]
    out = symbol_attack(t)
    assert out[:2] == t[:2] and out[3].text == "E"


def test_sigmoid_schedule_and_alpha_bar_by_hand():
    betas = sigmoid_betas()
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-5 + (5e-3 - 1e-5) / (1 + math.exp(6)))
    assert betas[-1] == pytest.approx(1e-5 + (5e-3 - 1e-5) / (1 + math.exp(-6)))
    prod = 1.0
    for t in range(301):
        x = -6 + 12 * t / 999
        prod *= 1 - (1 / (1 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5)
    assert alpha_bar(300) == pytest.approx(prod, rel=1e-12)
    assert 0.5 < alpha_bar(300) < 1.0  # mild noise at step 300 (the schedule's small betas come first)


def test_diffusion_noise_statistics():
    torch = pytest.importorskip("torch")
    from mmsift.probe.perturb import diffusion_noise

    x = torch.zeros(200_000)
    g = torch.Generator().manual_seed(0)
    y = diffusion_noise(x, generator=g)
    assert float(y.std()) == pytest.approx(math.sqrt(1 - alpha_bar(300)), rel=0.01)
    x1 = torch.ones(10)
    y1 = diffusion_noise(x1, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(10, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(y1.numpy(), (math.sqrt(alpha_bar(300)) + math.sqrt(1 - alpha_bar(300)) * eps).numpy(),
                               rtol=1e-6)


def test_noise_image_by_hand():
    torch = pytest.importorskip("torch")
    from PIL import Image

    from mmsift.probe.perturb import noise_image

    px = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)  # 1 x 2 RGB
    out = np.asarray(noise_image(Image.fromarray(px, "RGB"), generator=torch.Generator().manual_seed(3)))
    eps = torch.randn((1, 2, 3), generator=torch.Generator().manual_seed(3)).numpy()
    ab = alpha_bar(300)
    # in [0, 1] (not [-1, 1]), clipped to [0, 1], truncated to 8 bits
    want = np.clip(math.sqrt(ab) * px.astype(np.float32) / 255 + math.sqrt(1 - ab) * eps, 0, 1)
    np.testing.assert_array_equal(out, (want * 255).astype(np.uint8))


def test_imgnoise_variant_noises_the_image_before_the_processor(probe_setup, loaded):  # noqa: F811
    """ARDS's order: noise on the decoded image in [0, 1], then resize; the old variant noised the processed
    pixels in [-1, 1] after resizing, which this equality fails."""
    torch = pytest.importorskip("torch")
    from mmsift.data.io import read_pool
    from mmsift.data.images import load_images
    from mmsift.probe.dataset import ProbeDataset
    from mmsift.probe.perturb import noise_image, stable_seed

    pool_path, images, _ = probe_setup
    rec = next(r for r in read_pool(pool_path).records if r.images)
    item = ProbeDataset([rec], loaded.adapter, images, variants=("loss_imgnoise",), seed=5)[0]
    gen = torch.Generator().manual_seed(stable_seed(5, rec.id, "imgnoise") % (2**63))
    noisy = [noise_image(im, generator=gen) for im in load_images(rec, images)]
    want = loaded.adapter.encode(rec.turns, noisy)
    got = item["variants"]["loss_imgnoise"]
    torch.testing.assert_close(got.extra["pixel_values"], want.extra["pixel_values"])
    assert not torch.equal(got.extra["pixel_values"], item["enc"].extra["pixel_values"])


def test_mc_variants_score_only_the_multiple_choice_round(probe_setup, loaded):  # noqa: F811
    """A record with one multiple-choice round between two plain rounds: loss_mc, loss_sym and loss_perm are
    averaged over that round's answer tokens only (the whole-conversation loss diluted the attack's effect)."""
    from mmsift.data.io import read_pool
    from mmsift.data.records import Record
    from mmsift.data.images import load_images
    from mmsift.probe.dataset import ProbeDataset, answer_runs

    torch = pytest.importorskip("torch")
    pool_path, images, _ = probe_setup
    base = next(r for r in read_pool(pool_path).records if r.images and len(r.images) == 1)
    turns = [Turn("user", "<image>\nIs there a circle?"), Turn("assistant", "Yes, a big one in the middle."),
             Turn("user", "What colour is it?\nA. red\nB. green\nC. blue"), Turn("assistant", "B"),
             Turn("user", "Describe the picture."), Turn("assistant", "A plain background with one shape.")]
    rec = Record(id="m0", index=0, images=base.images, turns=turns, raw={})
    item = ProbeDataset([rec], loaded.adapter, images, variants=("loss_mc", "loss_sym", "loss_perm"))[0]
    runs = answer_runs(item["enc"].answer_mask)
    assert int(runs.max()) == 2  # three assistant turns, three runs
    full = {"loss_mc": item["enc"],
            "loss_sym": loaded.adapter.encode(symbol_attack(turns), load_images(rec, images)),
            "loss_perm": loaded.adapter.encode(permutation_attack(turns, seed=0, key="m0"), load_images(rec, images))}
    for name, enc in full.items():
        second = enc.answer_mask & (answer_runs(enc.answer_mask) == 1)  # the second assistant turn's tokens
        got = item["variants"][name].answer_mask
        assert bool(second.any()) and torch.equal(got, second), name
    plain = Record(id="p0", index=1, images=base.images, turns=turns[:2], raw={})
    assert ProbeDataset([plain], loaded.adapter, images, variants=("loss_mc", "loss_sym"))[0]["variants"] == {}
