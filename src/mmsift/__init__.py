"""mmsift: select the training samples worth keeping from visual-instruction-tuning pools."""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "probe", "select"]


def __getattr__(name):
    # Lazy, so that `import mmsift` stays cheap and never imports torch.
    if name == "load":
        from mmsift.data.io import read_pool as load
        return load
    if name == "probe":
        from mmsift.probe.runner import run_probe as probe
        return probe
    if name == "select":
        from mmsift.select import select_run as select
        return select
    raise AttributeError(f"module 'mmsift' has no attribute {name!r}")
