"""The mmsift version, in a module of its own so that any layer can read it without importing the package root
(whose lazy entry points reach the probe)."""

__version__ = "0.2.0"
