"""Model adapters: how each vision-language family is fed, loaded from local disk, and the bundled proxy.

``base`` (the family adapter: chat template, answer masks, batching), one module per family with its quirks,
``registry`` (one line per family), ``loading`` (``load_model``), ``encode`` (a record into inputs), ``losses``
(answer-token losses), ``capture`` (forward pre-hooks), ``proxy`` (the bundled small LLaVA).
Nothing here is imported by ``import mmsift``; torch is imported on use.
"""
