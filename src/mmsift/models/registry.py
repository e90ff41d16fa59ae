"""The family registry: one line per supported ``config.model_type``.

Members are imported here and nowhere else registers anything, so the registry depends on its members and never
the other way round. Adding a family: its adapter module (importing only :mod:`mmsift.models.base`) and one line
in :data:`FAMILIES`.
"""

from __future__ import annotations

from mmsift.models.base import FamilyAdapter, LlavaAdapter
from mmsift.models.idefics3 import Idefics3Adapter
from mmsift.models.llava_next import LlavaNextAdapter
from mmsift.models.qwen2vl import Qwen2VLAdapter

FAMILIES: dict[str, type[FamilyAdapter]] = {
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
    "qwen2_vl": Qwen2VLAdapter,
    "qwen2_5_vl": Qwen2VLAdapter,
    "idefics3": Idefics3Adapter,
}


def family_class(model_type: str) -> type[FamilyAdapter]:
    """The adapter class registered for ``config.model_type``; a ValueError naming the supported ones otherwise."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"model type {model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}") \
            from None


def adapter_for(processor, config) -> FamilyAdapter:
    return family_class(config.model_type)(processor, config)
