"""The probe: the only part of mmsift that touches a model (torch, transformers).

``proxy`` builds the bundled small LLaVA, ``warmup`` trains it, ``models`` loads any supported vision-language
model with a family adapter (inputs, answer masks), ``signals`` turns one forward pass into per-sample signals,
``perturb`` makes the ARDS attacks, ``runner`` runs a pool shard by shard into a signal store.
Nothing here is imported by ``import mmsift``; the submodules import torch lazily on use.
"""
