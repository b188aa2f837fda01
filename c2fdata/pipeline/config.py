"""One validated config for a loader of one split at one phase (both backends)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from c2fdata.compress import METHODS, check_phase, compressed_frames
from c2fdata.pipeline.splits import split_names

DEVICES = ("cpu", "gpu")
BACKENDS = ("dali", "torch", "auto")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
ON_CORRUPT = ("skip", "raise")
MASK_VALUES = ("ast", "zero")
MIXUP_DOMAINS = ("features", "power")


@dataclass(frozen=True)
class PipelineConfig:
    """Store split -> batches of `features (B, target_frames // factor, n_mels)` in output_dtype.

    Augmentation (random crop, random Frame-Shift offset, SpecAugment, mixup) is off by default,
    which is what evaluation wants; a training config turns it on. Every random choice is a
    function of (seed, epoch, position of the draw in the epoch), so it is the same on both
    backends and for any number of workers or shards.
    """

    store: str | Path  # path of a c2f feature store
    split: str | tuple[str, ...] = "train"  # several: their clips read as one split (splits.py)
    # phase
    method: str = "none"  # none | fshift | pool-avg | pool-max
    factor: int = 1  # compression factor C along time
    target_frames: int | None = None  # full-resolution length in 10 ms frames; None: the store's
    # batching and order
    batch_size: int = 64
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False  # False keeps the last partial batch (evaluation)
    balanced: bool = False  # AudioSet balanced sampling: draws with replacement, weighted
    num_samples: int | None = None  # draws per epoch when balanced; None: clips in the split
    # augmentation
    random_crop: bool = False  # clips longer than target_frames: random start (else start 0)
    random_offset: bool = False  # fshift: random first frame in [0, C) (else 0)
    freq_mask_bins: int = 0  # SpecAugment frequency mask, widest in mel bins; 0: off
    time_mask_frames: int = 0  # SpecAugment time mask, widest in 10 ms frames (scaled by 1/C)
    # what a masked cell holds: "ast", log-mel 0 normalised, (0 - mean) / (2 std) (AST masks the
    # fbank with 0, then normalises: +0.467 with AudioSet's constants; the value padding gets too);
    # "zero": 0 after normalisation, the mean
    mask_value: str = "ast"
    # mixup, AST's: each sample, with probability `mixup`, is mixed with a partner drawn uniformly
    # from the whole split, lambda ~ Beta(alpha, alpha), before anything else (mixup.py); labels
    # are then served as (K,) float32 targets, l * y_a + (1 - l) * y_b
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    mixup_domain: str = "features"  # features: l*a + (1-l)*b of log-mel values; power: log(l e^a + (1-l) e^b)
    # normalisation, AST's (x - mean) / (2 std)
    normalize: bool = True
    norm_mean: float | None = None  # None: the store's train-split statistics
    norm_std: float | None = None
    # distribution and execution
    rank: int = 0  # this shard
    world_size: int = 1  # number of shards (ranks)
    device: str = "cpu"  # where compression and augmentation run: cpu | gpu
    backend: str = "auto"  # dali | torch | auto (DALI on the GPU, torch on the CPU: resolve_backend)
    num_workers: int = 2  # reader processes (DALI parallel source / DataLoader workers)
    num_threads: int = 2  # DALI operator threads (torch backend: unused)
    # features as handed over: computed in float32, cast once at the end (a bf16 model then gets
    # bf16 and moves half the bytes); labels and index keep their own types
    output_dtype: str = "float32"  # float32 | float16 | bfloat16
    # a clip failing its crc32c: "skip" leaves it out of its batch, warns and counts it
    # (loader.skipped_clips); "raise" stops with CorruptClipError (docs/STORE.md)
    on_corrupt: str = "skip"  # skip | raise

    def __post_init__(self):
        names = split_names(self.split)
        object.__setattr__(self, "split", names[0] if len(names) == 1 else names)  # hashable, one form
        check_phase(self.method, self.factor)
        if self.target_frames is not None:
            compressed_frames(self.target_frames, self.method, self.factor)
        _positive("batch_size", self.batch_size)
        _positive("num_threads", self.num_threads)
        for name in ("seed", "freq_mask_bins", "time_mask_frames", "num_workers", "rank"):
            _non_negative(name, getattr(self, name))
        if self.num_samples is not None:
            _positive("num_samples", self.num_samples)
            if not self.balanced:
                raise ValueError("num_samples applies to balanced sampling only; set balanced=True")
        _positive("world_size", self.world_size)
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not below world_size {self.world_size}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output_dtype must be one of {OUTPUT_DTYPES}, got {self.output_dtype!r}")
        if self.on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {self.on_corrupt!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("give both norm_mean and norm_std, or neither (the store's stats)")
        if self.norm_std is not None and not self.norm_std > 0:
            raise ValueError(f"norm_std must be > 0, got {self.norm_std}")
        if self.mask_value not in MASK_VALUES:
            raise ValueError(f"mask_value must be one of {MASK_VALUES}, got {self.mask_value!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup and not self.mixup_alpha > 0:
            raise ValueError(f"mixup_alpha must be > 0 (Beta(alpha, alpha)), got {self.mixup_alpha}")
        if self.mixup_domain not in MIXUP_DOMAINS:
            raise ValueError(f"mixup_domain must be one of {MIXUP_DOMAINS}, got {self.mixup_domain!r}")

    @property
    def out_frames(self) -> int:
        """Frames per clip this config serves (needs target_frames set)."""
        if self.target_frames is None:
            raise ValueError("target_frames is not resolved yet (it comes from the store)")
        return compressed_frames(self.target_frames, self.method, self.factor)

    @property
    def augments(self) -> bool:
        return bool(self.random_crop or self.random_offset or self.freq_mask_bins or self.time_mask_frames
                    or self.mixup)

    def replace(self, **changes) -> "PipelineConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def with_phase(self, method: str, factor: int) -> "PipelineConfig":
        return self.replace(method=method, factor=factor)

    def for_evaluation(self) -> "PipelineConfig":
        """Same phase and store, fixed order, every clip once, no augmentation."""
        return self.replace(
            shuffle=False, drop_last=False, balanced=False, num_samples=None, random_crop=False,
            random_offset=False, freq_mask_bins=0, time_mask_frames=0, mixup=0.0,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["store"] = str(self.store)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown pipeline config keys: {sorted(unknown)}")
        return cls(**d)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


__all__ = ["PipelineConfig", "METHODS", "DEVICES", "BACKENDS", "OUTPUT_DTYPES", "ON_CORRUPT", "MASK_VALUES",
           "MIXUP_DOMAINS"]
