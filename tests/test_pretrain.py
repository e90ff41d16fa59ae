"""The pretrained base: built once per recipe and cached, perception heads learn, the tower is frozen afterwards."""

from __future__ import annotations

import json

import pytest
import torch


def test_base_is_cached_by_recipe(monkeypatch, tiny_pretrained_base):
    from mmsift.train import pretrain

    first = pretrain.ensure_base()
    info = pretrain.read_base_info(first)
    assert first.parent.parent == pretrain.cache_root() and first.name == tiny_pretrained_base.key()
    assert set(info["perception_heldout_accuracy"]) == {"shape", "color", "word"}
    assert (first / "config.json").is_file() and info["key"] == first.name

    calls = []
    monkeypatch.setattr(pretrain, "build_base", lambda *a, **k: calls.append(a))
    assert pretrain.ensure_base() == first and not calls  # the cache answers; nothing is rebuilt
    other = pretrain.BaseRecipe(**{**json.loads(json.dumps(info["recipe"])), "align_steps": 9})
    assert other.key() != tiny_pretrained_base.key()
    assert pretrain.base_path(other) != first


def test_base_config_reads_the_trained_layer(tiny_pretrained_base):
    from mmsift.models.loading import load_model
    from mmsift.train.pretrain import ensure_base

    lm = load_model(ensure_base())
    # The perception heads train the tower's last layer; the projector must read that same layer.
    assert lm.model.config.vision_feature_layer == -1
    assert lm.model.config.vision_config.image_size == tiny_pretrained_base.image_size


def _two_colour_images():
    """A tiny random CLIP tower and 64 images whose label (0 or 1) is their red channel's sign."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=8))
    y = torch.arange(64) % 2
    pixels = torch.randn(64, 3, 16, 16) * 0.1
    pixels[:, 0] += torch.where(y == 0, 1.0, -1.0)[:, None, None]
    return tower, pixels, y


def test_perception_heads_learn_a_separable_label():
    """Stage 0 on images whose label is their colour (red vs blue): held-out accuracy reaches 1."""
    from mmsift.train.perception import evaluate_perception, train_perception

    tower, pixels, y = _two_colour_images()
    unknown = torch.full((64,), -1)  # a head with no known label is skipped, not an error
    heads, loss = train_perception(tower, pixels[:48], {"c": y[:48], "u": unknown[:48]}, steps=40, batch=16,
                                   lr=5e-3, seed=0, n_classes={"c": 2, "u": 3}, progress=None)
    acc = evaluate_perception(tower, heads, pixels[48:], {"c": y[48:], "u": unknown[48:]})
    assert acc["c"] == 1.0 and acc["u"] != acc["u"]  # nan: no known label
    assert loss < 0.5


@pytest.mark.parametrize("name", ["MMSIFT_CACHE"])
def test_cache_root_follows_env(monkeypatch, tmp_path, name):
    from mmsift.train.pretrain import cache_root

    monkeypatch.setenv(name, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv(name)
    assert cache_root().name == "mmsift"


def test_perception_learns_from_label_sets():
    """Label sets (the pool perception stage's soft targets): red images carry {red}, blue ones {blue, sky}."""
    from mmsift.train.perception import train_perception

    tower, pixels, y = _two_colour_images()
    sets = torch.zeros(64, 3)
    sets[y == 0, 0] = 1
    sets[y == 1, 1:] = 1
    heads, _ = train_perception(tower, pixels[:48], {"w": sets[:48]}, steps=40, batch=16, lr=5e-3, seed=0,
                                n_classes={"w": 3}, progress=None)
    with torch.no_grad():
        top = heads["w"](tower(pixel_values=pixels[48:]).last_hidden_state[:, 1:].mean(1)).argmax(1)
    assert bool((sets[48:][torch.arange(16), top] == 1).all())


def test_answer_format_records_hold_the_images_true_answers(tmp_path):
    """Stage 2's records: a yes/no question and a multiple-choice question per base image, whose letter points at
    the image's own shape or colour; every image is a base image, never a pool image."""
    from mmsift.data.easyvqa import BASE_IMAGE_IDS, COLORS, LETTERS, MC_INSTRUCTION, SHAPES, question_type
    from mmsift.train.pretrain import BaseRecipe, _base_data

    items, captions, formats = _base_data(tmp_path / "on", BaseRecipe(n_shape_images=40, n_text_images=20,
                                                                       format_steps=8))
    assert len(items) == 60 and captions
    # Off by default; stage 2 draws from its own generator, so stages 0 and 1 get the same data either way.
    items_off, captions_off, formats_off = _base_data(tmp_path / "off", BaseRecipe(n_shape_images=40,
                                                                                   n_text_images=20))
    assert formats_off == [] and items_off == items and captions_off == captions
    kinds = {r["id"].split("-")[0] for r in formats}
    assert kinds == {"yesno", "mc", "base", "text"}  # captions of both kinds mixed in
    truth = {it["image"]: it for it in items}
    n_mc = 0
    for r in formats:
        folder, name = r["image"].split("/")
        assert folder == "text" or int(name.split(".")[0]) in BASE_IMAGE_IDS  # text: rendered words
        question, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        if r["id"].startswith("yesno"):
            assert question_type(answer) == "yesno"
        elif r["id"].startswith("mc"):
            n_mc += 1
            lines = question.split("\n")
            assert lines[-1] == MC_INSTRUCTION and answer in LETTERS
            chosen = next(ln for ln in lines if ln.startswith(answer + ". "))[3:]
            label = truth[r["image"]]
            assert chosen in (SHAPES[label["shape"]] if label["shape"] >= 0 else None,
                              COLORS[label["color"]] if label["color"] >= 0 else None)
    assert n_mc >= 30


def test_a_base_with_the_answer_format_stage_builds(tmp_path, tiny_pretrained_base):
    from dataclasses import asdict

    from mmsift.train.pretrain import BaseRecipe, build_base, read_base_info

    recipe = BaseRecipe(**{**asdict(tiny_pretrained_base), "format_steps": 4, "format_batch": 4})
    info = read_base_info(build_base(tmp_path / "base", recipe))
    assert info["n_format_records"] > 0 and len(info["format_loss"]) == 2 and info["seconds"]["formats"] > 0
    assert recipe.key() != tiny_pretrained_base.key()
