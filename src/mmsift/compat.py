"""The dependency window mmsift is tested with, read from its own package metadata (pyproject.toml is the one
place where the window is written; see docs/dependencies.md)."""

from __future__ import annotations

import functools
import logging
from importlib import metadata

log = logging.getLogger(__name__)

# The libraries whose releases change behaviour mmsift relies on; their bounds in pyproject.toml are tested ends.
WATCHED = ("transformers", "torch", "tokenizers", "numpy", "pyarrow", "faiss-cpu", "ray")
# Recorded with every result (reports, resolved recipes, error logs): the watched ones and the numeric stack.
RECORDED = WATCHED + ("scipy", "scikit-learn")


@functools.cache
def declared_specifier(package: str):
    """The version range mmsift declares for ``package`` (a packaging SpecifierSet), or None."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("mmsift") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if req.name.lower() == package.lower() and req.marker is None:
            return req.specifier
    return None


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def window_problem(package: str) -> str | None:
    """A sentence when the installed ``package`` is outside mmsift's tested window, else None."""
    spec = declared_specifier(package)
    version = installed_version(package)
    if spec is None or version is None or spec.contains(version, prereleases=True):
        return None
    return (f"{package} {version} is installed, outside the window mmsift is tested with ({package}{spec}); "
            f"install a tested version with: pip install '{package}{spec}'")


def installed_versions() -> dict[str, str]:
    """mmsift, Python and the recorded libraries, as installed (a library that is not installed is left out)."""
    import sys

    from mmsift.version import __version__

    out = {"mmsift": __version__, "python": sys.version.split()[0]}
    out.update({p: v for p in RECORDED if (v := installed_version(p))})
    return out


def version_report() -> str:
    return ", ".join(f"{name} {version}" for name, version in installed_versions().items())


@functools.cache
def warn_outside_window() -> None:
    """Log one warning per process when transformers or torch are outside the tested window."""
    for package in ("transformers", "torch", "tokenizers"):
        problem = window_problem(package)
        if problem:
            log.warning("%s. mmsift may still work; if the probe fails, this is the first thing to change.",
                        problem)
