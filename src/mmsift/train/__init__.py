"""Every training loop of mmsift: ``loop`` (the one answer-masked loop), ``perception`` (vision-tower stages),
``pretrain`` (the cached pretrained base), ``warmup`` (a proxy for a pool) and ``target`` (the benchmark's target).
Imports run one way, from the stages down to the loop; the probe never imports this package.
"""
