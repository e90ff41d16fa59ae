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
