"""Bench evaluation: MC attacks by hand, accuracy/chance tables, defect metrics, cached option scoring vs full
sequences, deterministic training of the target for a few steps."""

import numpy as np
import pytest
import torch

from mmsift.bench.evaluate import EvalItem, accuracy_table, chance_table, mc_versions
from mmsift.bench.runner import choose_methods, defect_metrics


def test_mc_versions_by_hand():
    v = mc_versions("what color is the shape?", ["red", "blue", "green", "teal"], "green", seed=0, key="k")
    prompt, labels, answer = v["clean"]
    assert prompt.split("\n")[1:5] == ["A. red", "B. blue", "C. green", "D. teal"]
    assert labels == ["A", "B", "C", "D"] and answer == "C"
    prompt, labels, answer = v["sym"]
    assert prompt.split("\n")[1:5] == ["Q. red", "W. blue", "E. green", "R. teal"]
    assert labels == ["Q", "W", "E", "R"] and answer == "E"
    for name, letters in (("perm", "ABCD"), ("both", "QWER")):
        prompt, labels, answer = v[name]
        lines = prompt.split("\n")[1:5]
        assert [line[0] for line in lines] == list(letters) and labels == list(letters)
        texts = [line[3:] for line in lines]
        assert sorted(texts) == sorted(["red", "blue", "green", "teal"]) and texts != ["red", "blue", "green", "teal"]
        # The answer label follows its option.
        assert texts[letters.index(answer)] == "green"
    # "both" is the symbol attack of the permuted item: same order as "perm".
    assert [x[3:] for x in v["both"][0].split("\n")[1:5]] == [x[3:] for x in v["perm"][0].split("\n")[1:5]]


def test_accuracy_and_chance_tables():
    answers = ["circle", "red", "yes"]
    items = [
        EvalItem("a.png", "q", "circle", answers, "shape"),
        EvalItem("a.png", "q", "red", answers, "color"),
        EvalItem("a.png", "q", "yes", answers, "yesno"),
        EvalItem("a.png", "q", "no", answers + ["no"], "yesno"),
        EvalItem("o.png", "q", "cat", ["cat", "dog"], "ocr"),
        EvalItem("a.png", "q", "B", ["A", "B", "C"], "mc_clean"),
    ]
    losses = [np.array([0.1, 1, 1]), np.array([0.5, 0.2, 1]), np.array([1, 1, 1.0]), np.array([1, 1, 1, 0.0]),
              np.array([2.0, 1.0]), np.array([1.0, 0.5, 0.7])]
    acc = accuracy_table(items, losses)
    # Third item: a tie goes to the first option (circle), so it is wrong.
    assert acc == {"shape": 1.0, "color": 1.0, "yesno": 0.5, "ocr": 0.0, "mc_clean": 1.0, "vqa": 0.75,
                   "all_open": 0.6}
    ch = chance_table(items)
    assert ch["shape"] == pytest.approx(1 / 3) and ch["color"] == pytest.approx(1 / 8)
    assert ch["yesno"] == pytest.approx(0.5) and ch["ocr"] == pytest.approx(0.5)
    assert ch["mc_clean"] == pytest.approx(1 / 3)
    assert ch["vqa"] == pytest.approx((1 / 3 + 1 / 8 + 0.5 + 0.5) / 4)


def test_defect_metrics_by_hand():
    truth = [
        {"id": "a", "defect": "none"}, {"id": "b", "defect": "wrong_answer"}, {"id": "c", "defect": "none"},
        {"id": "d", "defect": "noise"}, {"id": "a-dup0", "defect": "duplicate", "dup_of": "a"},
        {"id": "c-near0", "defect": "near_duplicate", "dup_of": "c"},
    ]
    kept = np.array([0, 1, 4, 5])
    scores = np.array([0.9, 0.1, 0.8, 0.5, 0.95, 0.3])
    m = defect_metrics(truth, kept, scores)
    assert m["kept_wrong_answer"] == 1.0 and m["kept_noise"] == 0.0 and m["corrupt_kept"] == 0.5
    assert m["kept_duplicate"] == 1.0 and m["kept_near_duplicate"] == 1.0
    assert m["dup_pairs_kept"] == 1  # a-dup0 with a; c-near0's original c was not kept
    assert m["auroc"] == 1.0  # both clean rows (0.9, 0.8) above both corrupt rows (0.1, 0.5)
    m = defect_metrics(truth, kept, -scores)
    assert m["auroc"] == 0.0
    assert np.isnan(defect_metrics(truth, kept, None)["auroc"])


def test_choose_methods_skips_judge_methods():
    from mmsift.scorers import SCORERS

    chosen, skipped = choose_methods(None)
    assert "random" in chosen
    for m in chosen:
        assert not any(s.startswith(("cap_", "style_", "scale_")) for s in SCORERS[m].requires)
    for m, why in skipped.items():
        assert "judge" in why
    assert set(chosen) | set(skipped) == set(SCORERS)
    chosen, _ = choose_methods(["length"])
    assert chosen == ["random", "length"]
    with pytest.raises(ValueError, match="unknown"):
        choose_methods(["nope"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mmsift.bench.evaluate import build_eval_set, load_eval_set
    from mmsift.bench.pool import build_bench_pool
    from mmsift.data.io import read_pool
    from mmsift.train.pretrain import ensure_base

    root = tmp_path_factory.mktemp("tiny")
    pool = read_pool(build_bench_pool(root / "pool", n_images=24, n_ocr=8, seed=0))
    items = load_eval_set(build_eval_set(root / "eval", n_per_type=4, n_mc=4, n_ocr=4, seed=0))
    return root, pool, items, ensure_base()  # the tests' tiny base (conftest.py)


def test_cached_option_losses_match_full_sequences(tiny):
    from PIL import Image

    from mmsift.bench.evaluate import encode_items, option_losses
    from mmsift.data.records import Turn
    from mmsift.models.loading import load_model

    root, _, items, init = tiny
    lm = load_model(init, dtype="float32")
    # Perturb the random init so losses differ between options.
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    # Every kind of item (open, OCR, the four MC versions), fewer of each to stay fast.
    items = [x for k, x in enumerate(items) if k % 3 == 0 or x.kind.startswith("mc_")][:24]
    enc = encode_items(lm, items, root / "eval" / "images")
    fast = option_losses(lm, enc, batch_size=5)
    for item, got in zip(items, fast):
        img = Image.open(root / "eval" / "images" / item.image).convert("RGB")
        encs = [lm.adapter.encode([Turn("user", "<image>\n" + item.question), Turn("assistant", o)], [img])
                for o in item.options]
        # Reference: full sequences, NLL summed over every token after the shared prompt.
        plen = len(enc[items.index(item)].prompt)
        ref = []
        with torch.no_grad():
            for e in encs:
                logits = lm.model(input_ids=e.input_ids[None], **e.extra).logits[0].float()
                logp = torch.log_softmax(logits[:-1], -1).gather(-1, e.input_ids[1:, None])[:, 0]
                ref.append(float(-logp[plen - 1:].sum()))
        assert got.shape == (len(item.options),)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert len({round(float(x.std()), 6) for x in fast}) > 1


def test_train_a_few_steps_is_deterministic_and_evaluates(tiny):
    from mmsift.bench.evaluate import encode_items, evaluate
    from mmsift.train.target import TargetRecipe, train_target

    root, pool, items, init = tiny
    recipe = TargetRecipe(epochs=1, min_steps=6, batch_size=8)
    a = train_target(init, pool.records[:40], root / "pool" / "images", recipe=recipe, seed=1)
    b = train_target(init, pool.records[:40], root / "pool" / "images", recipe=recipe, seed=1)
    assert len(a.losses) == 6 and a.losses == b.losses
    for (n, p), (_, q) in zip(a.model.model.named_parameters(), b.model.model.named_parameters()):
        assert torch.equal(p, q), n
    assert a.losses[-1] < a.losses[0]
    # Vision tower frozen (LLaVA-1.5 instruction tuning): its weights are the base's.
    from mmsift.models.loading import load_model

    base = load_model(init)
    for (n, p), q in zip(a.model.model.named_parameters(), base.model.parameters()):
        if "vision_tower" in n:
            assert torch.equal(p, q), n
    acc = evaluate(a.model, items, encode_items(a.model, items, root / "eval" / "images"))
    for k in ("shape", "color", "yesno", "ocr", "mc_clean", "mc_perm", "mc_sym", "mc_both", "vqa", "all_open"):
        assert 0.0 <= acc[k] <= 1.0


def test_recipe_steps():
    from mmsift.train.target import TargetRecipe

    r = TargetRecipe(epochs=4, min_steps=100, max_steps=500, batch_size=16)
    assert r.steps_for(75) == 100 and r.steps_for(1000) == 250 and r.steps_for(10_000) == 500


def test_validation_eval_set_and_no_attacks(tmp_path):
    """A validation set draws from the given train image ids only; without attacks only mc_clean is built."""
    from mmsift.bench.evaluate import build_eval_set, load_eval_set

    ids = list(range(900, 1000))
    items = load_eval_set(build_eval_set(tmp_path, n_per_type=5, n_mc=5, n_ocr=3, seed=0, mc_attacks=False,
                                         validation_ids=ids))
    kinds = {x.kind for x in items}
    assert kinds == {"shape", "color", "yesno", "ocr", "mc_clean"}
    assert all(int(x.image.split("/")[1].split(".")[0]) in ids for x in items if not x.kind == "ocr")
    assert sum(x.kind == "mc_clean" for x in items) == 5


def test_full_sequence_option_losses_match_the_cached_path(tiny):
    """Families without the shared-cache path (e.g. Qwen2-VL's 3-D positions) are scored on full sequences."""
    from mmsift.bench.evaluate import _option_losses_full, encode_items, option_losses
    from mmsift.models.loading import load_model

    root, _, items, init = tiny
    lm = load_model(init, dtype="float32")
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    items = items[::4][:10]
    enc = encode_items(lm, items, root / "eval" / "images")
    for a, b in zip(option_losses(lm, enc), _option_losses_full(lm, enc)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
