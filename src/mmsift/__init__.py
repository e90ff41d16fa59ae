"""mmsift: select the training samples worth keeping from visual-instruction-tuning pools."""

from mmsift.version import __version__

__all__ = ["__version__", "load", "probe", "ProbeConfig", "select"]


def __getattr__(name):
    # Lazy, so that `import mmsift` stays cheap and never imports torch.
    if name == "load":
        from mmsift.data.io import read_pool as load
        return load
    if name == "probe":
        from mmsift.probe.runner import run_probe as probe
        return probe
    if name == "ProbeConfig":
        from mmsift.probe.config import ProbeConfig
        return ProbeConfig
    if name == "select":
        from mmsift.select import select_run as select
        return select
    raise AttributeError(f"module 'mmsift' has no attribute {name!r}")
