"""The explicit registry of selection methods: adding a method is one file and one line here."""

from __future__ import annotations

from mmsift.scorers.base import Scorer
from mmsift.scorers.ards import ARDS
from mmsift.scorers.coincide import Coincide
from mmsift.scorers.semdedup import SemDeDup
from mmsift.scorers.datatailor import DataTailor
from mmsift.scorers.selfcheck import SelfCheck
from mmsift.scorers.loss import Loss
from mmsift.scorers.ifd import IFD
from mmsift.scorers.perplexity import Perplexity
from mmsift.scorers.el2n import EL2N
from mmsift.scorers.ds2 import DS2
from mmsift.scorers.length import Length
from mmsift.scorers.mmssr import MmSSR
from mmsift.scorers.random import Random
from mmsift.scorers.scale import Scale

SCORERS: dict[str, type[Scorer]] = {
    Random.name: Random,
    Length.name: Length,
    MmSSR.name: MmSSR,
    DS2.name: DS2,
    Scale.name: Scale,
    EL2N.name: EL2N,
    Perplexity.name: Perplexity,
    IFD.name: IFD,
    Loss.name: Loss,
    SelfCheck.name: SelfCheck,
    DataTailor.name: DataTailor,
    SemDeDup.name: SemDeDup,
    Coincide.name: Coincide,
    ARDS.name: ARDS,
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
        raise ValueError(f"bad parameters for method {name!r}: {e}") from None


def required_signals(names) -> set[str]:
    """Union of the signals the named methods read (what the probe must compute)."""
    out: set[str] = set()
    for n in names:
        out.update(get_scorer_class(n).requires)
    return out
