"""What a probe run is asked to do: :class:`ProbeConfig` (the options of ``mmsift probe``) and the per-shard
:class:`ShardConfig` derived from it, which travels to every executor."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mmsift.failures import DEFAULT_MAX_FAILURE_RATE


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of :func:`mmsift.probe.runner.run_probe`.

    ``model``: a local model directory; ``out``: the run directory. ``methods``: compute the signals these
    methods need (see :func:`mmsift.probe.signals.resolve_signals`), plus the extra ``signals`` and the
    bookkeeping ones. ``images`` defaults to the pool file's folder. ``layer``: the hidden-state index of
    ``last``/``mean``/spectrum; ``feature_layers``: COINCIDE's layers (default: its relative depths).
    ``vector_dim``: reduce stored vectors with a seeded random projection. ``limit`` probes only the first
    ``limit`` good records. ``num_workers``: DataLoader worker processes (None: 0 on CPU, up to 8 on GPU).
    ``max_length``: the longest input (default: the model's context). ``max_pixels`` / ``max_image_tokens``: per-image
    bounds; a larger image is scaled down (aspect kept) before the processor. ``max_batch_tokens``: fill each
    length-sorted batch up to this many (padded) tokens instead of ``batch_size`` records. When more than
    ``max_failure_rate`` of the records tried in a shard fail, the run stops with :class:`mmsift.failures.SystematicFailure`.
    ``overwrite`` discards a previous run with other settings in ``out``. ``executor``: ``local`` or ``ray``
    (with ``ray_address`` / ``ray_workers``).
    """

    model: str
    out: str
    images: str | None = None
    methods: tuple[str, ...] | None = None
    signals: tuple[str, ...] | None = None
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int = 8
    layer: int = -2
    feature_layers: tuple[int, ...] | None = None
    vector_dim: int | None = None
    seed: int = 0
    num_workers: int | None = None
    max_length: int | None = None
    max_pixels: int | None = None
    max_image_tokens: int | None = None
    max_batch_tokens: int | None = None
    task_field: str | None = None
    shard_size: int = 256
    limit: int | None = None
    check_images: bool = True
    overwrite: bool = False
    executor: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE

    def check(self) -> None:
        """Raise a ValueError naming the first setting out of range."""
        if self.executor != "ray" and (self.ray_address or self.ray_workers):
            raise ValueError("--ray-address and --ray-workers need --executor ray")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError(f"--batch-size and --shard-size must be >= 1, got {self.batch_size} and "
                             f"{self.shard_size}")
        if self.vector_dim is not None and self.vector_dim < 1:
            raise ValueError(f"--vector-dim must be >= 1, got {self.vector_dim}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        for name in ("max_pixels", "max_image_tokens", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def for_shards(self, signals: tuple[str, ...], images_dir: str) -> "ShardConfig":
        """What every shard needs besides its records, with the resolved signal names and images folder."""
        from mmsift.failures import check_max_failure_rate

        return ShardConfig(model=str(self.model), signals=signals, images=images_dir, device=self.device,
                           dtype=self.dtype, layer=self.layer,
                           feature_layers=tuple(self.feature_layers) if self.feature_layers else None,
                           vector_dim=self.vector_dim, seed=self.seed, batch_size=self.batch_size,
                           num_workers=self.num_workers, max_length=self.max_length, max_pixels=self.max_pixels,
                           max_image_tokens=self.max_image_tokens, max_batch_tokens=self.max_batch_tokens,
                           max_failure_rate=check_max_failure_rate(self.max_failure_rate))


@dataclass(frozen=True)
class ShardConfig:
    """Everything a shard needs besides its records (picklable, shared by all shards of a run)."""

    model: str
    signals: tuple[str, ...]
    images: str | None
    device: str = "cpu"
    dtype: str | None = None
    layer: int = -2
    feature_layers: tuple[int, ...] | None = None
    vector_dim: int | None = None
    seed: int = 0
    batch_size: int = 8
    num_workers: int | None = None  # None: see mmsift.probe.shard.default_workers
    max_length: int | None = None
    max_pixels: int | None = None
    max_image_tokens: int | None = None
    max_batch_tokens: int | None = None
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE

    @property
    def image_limits(self):
        from mmsift.models.base import ImageLimits

        return ImageLimits(max_pixels=self.max_pixels, max_image_tokens=self.max_image_tokens)

    def fingerprint(self) -> dict:
        """What decides the values in the store (batch size, workers and device only change rounding)."""
        d = asdict(self)
        for k in ("batch_size", "num_workers", "device", "images", "max_failure_rate", "max_batch_tokens"):
            d.pop(k)
        for k in ("max_pixels", "max_image_tokens"):  # image bounds change values; unset ones keep old fingerprints
            if d[k] is None:
                d.pop(k)
        d["model"] = str(Path(self.model).resolve())
        d["signals"] = list(self.signals)
        return d
