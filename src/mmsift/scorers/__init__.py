"""The explicit registry of selection methods: adding a method is one file and one line here."""

from __future__ import annotations

import inspect

from mmsift.scorers.ards import ARDS
from mmsift.scorers.base import Scorer
from mmsift.scorers.coincide import Coincide
from mmsift.scorers.datatailor import DataTailor
from mmsift.scorers.ds2 import DS2
from mmsift.scorers.el2n import EL2N
from mmsift.scorers.ifd import IFD
from mmsift.scorers.length import Length
from mmsift.scorers.loss import Loss
from mmsift.scorers.mmssr import MmSSR
from mmsift.scorers.perplexity import Perplexity
from mmsift.scorers.random import Random
from mmsift.scorers.scale import Scale
from mmsift.scorers.selfcheck import SelfCheck
from mmsift.scorers.semdedup import SemDeDup

SCORERS: dict[str, type[Scorer]] = {
    # Methods of the papers, reading the probe's signals.
    DataTailor.name: DataTailor,
    ARDS.name: ARDS,
    SelfCheck.name: SelfCheck,
    Coincide.name: Coincide,
    SemDeDup.name: SemDeDup,
    # Methods reading a judge model's ratings (mmsift judge).
    MmSSR.name: MmSSR,
    Scale.name: Scale,
    DS2.name: DS2,
    # Score-only baselines.
    EL2N.name: EL2N,
    Perplexity.name: Perplexity,
    IFD.name: IFD,
    Loss.name: Loss,
    Length.name: Length,
    Random.name: Random,
}


def get_scorer_class(name: str) -> type[Scorer]:
    try:
        return SCORERS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(SCORERS))}") from None


def make_scorer(name: str, params: dict | None = None, *, random_state: int = 0) -> Scorer:
    """Build a registered scorer with its documented keyword parameters."""
    cls = get_scorer_class(name)
    try:
        return cls(**(params or {}), random_state=random_state)
    except TypeError as e:
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "random_state")]
        raise ValueError(f"bad parameters for method {name!r} ({e}); its parameters: "
                         f"{', '.join(accepted) or 'none'} (see its docstring)") from None


def required_signals(names) -> set[str]:
    """Union of the signals the named methods read (what the probe must compute)."""
    out: set[str] = set()
    for n in names:
        out.update(get_scorer_class(n).requires)
    return out
