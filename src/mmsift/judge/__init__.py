"""The judge: asks a vision-language model (local Hugging Face weights or an OpenAI-compatible endpoint) to rate
pool samples, and writes the answers as signal columns (``cap_*``, ``style_*``, SCALE's captions and sub-scores).

Nothing here is imported by the scorers; only :mod:`mmsift.judge.hf_backend` imports torch/transformers, lazily.
"""
