"""Shared pytest fixtures."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def tiny_llava_pool(tmp_path):
    """A clean 6-record LLaVA JSON pool with PIL-made images: ``(pool_json_path, images_dir)``.

    Two tasks by top folder (``shapes``, ``colors``), one two-image record, one text-only record.
    """
    from PIL import Image

    images = tmp_path / "images"
    for folder, name, color in [("shapes", "a.png", "red"), ("shapes", "b.jpg", "blue"),
                                ("colors", "c.png", "green"), ("colors", "d.jpg", "white")]:
        (images / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), color).save(images / folder / name)

    def conv(*texts):
        return [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(texts)]

    records = [
        {"id": "s1", "image": "shapes/a.png", "conversations": conv("<image>\nWhat shape?", "A square.")},
        {"id": "s2", "image": "shapes/b.jpg",
         "conversations": conv("<image>\nColour?", "Blue.", "Is it dark?", "Somewhat.")},
        {"id": "c1", "image": "colors/c.png", "conversations": conv("<image>\nColour?", "Green.")},
        {"id": "c2", "image": "colors/d.jpg", "conversations": conv("<image>\nIs it white?", "Yes.")},
        {"id": "m1", "image": ["shapes/a.png", "colors/c.png"],
         "conversations": conv("<image>\n<image>\nSame colour?", "No.")},
        {"id": "t1", "conversations": conv("Say hi.", "Hi!")},
    ]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path, images


# A base small enough to build in seconds (32 px, patch 8: 16 image tokens).
TINY_BASE = dict(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=2, vision_heads=2,
                 hidden_size=32, num_layers=2, intermediate_size=64, vocab_size=600, n_shape_images=120,
                 n_text_images=60, perception_steps=20, perception_batch=16, align_steps=8, align_batch=8)


@pytest.fixture(scope="session", autouse=True)
def tiny_pretrained_base(tmp_path_factory):
    """Every test that needs the pretrained base gets a tiny one, cached in a session folder: the default recipe
    takes minutes, and tests must never write to the user's own cache."""
    from mmsift.train import pretrain

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMSIFT_CACHE", str(tmp_path_factory.mktemp("mmsift-cache")))
        mp.setattr(pretrain, "DEFAULT_RECIPE", pretrain.BaseRecipe(**TINY_BASE))
        yield pretrain.DEFAULT_RECIPE
