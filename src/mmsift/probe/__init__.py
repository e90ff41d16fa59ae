"""The probe: one pass of a model over a pool, into a signal store.

``config`` (what a run is asked to do), ``runner`` (``run_probe``: validation, shards, resume, merge), ``shard``
(one shard: batching, failures, writing), ``dataset`` (per-record input work, DataLoader-ready), ``signals``
(what is computed from a forward pass), ``perturb`` (the ARDS attacks). Models come from :mod:`mmsift.models`;
nothing here trains. Nothing here is imported by ``import mmsift``; torch is imported on use.
"""
