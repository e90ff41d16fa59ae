"""The family registry: which ``config.model_type`` values mmsift feeds, and the adapter for a loaded model.

Every supported family is served by the one generic :class:`~mmsift.models.base.FamilyAdapter`; the families are
the rows of :data:`mmsift.models.quirks.QUIRKS` (adding one: a row there and a tiny checkpoint in the reference
test, see docs/families.md).
"""

from __future__ import annotations

from mmsift.models.base import FamilyAdapter, ImageLimits
from mmsift.models.quirks import QUIRKS, UnsupportedFamily, quirks_for

FAMILIES = tuple(sorted(QUIRKS))

__all__ = ["FAMILIES", "UnsupportedFamily", "adapter_for", "family_class"]


def family_class(model_type: str) -> type[FamilyAdapter]:
    """The adapter class for ``config.model_type``; :class:`UnsupportedFamily` (a ValueError) naming the family
    and what is missing otherwise."""
    quirks_for(model_type)
    return FamilyAdapter


def adapter_for(processor, config, *, limits: ImageLimits | None = None) -> FamilyAdapter:
    return FamilyAdapter(processor, config, quirks=quirks_for(config.model_type), limits=limits)
