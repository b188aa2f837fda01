"""The base `Loader` both backends extend, and which backend serves a config.

Backends (torch_loader.py, dali.py) import from here, never from the package face, which
imports them (lazily, in `make_loader`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from c2fdata.pipeline.config import PipelineConfig
from c2fdata.pipeline.sampling import BatchSource, EpochPlan, balanced_weights
from c2fdata.pipeline.splits import open_reader

__all__ = ["OUTPUTS", "Loader", "dali_available", "resolve_backend", "reciprocal", "mask_fill"]

OUTPUTS = ("features", "labels", "index")  # the keys of every batch, in the backends' order


def reciprocal(value: float) -> float:
    """1 / value rounded to float32 (as DALI takes it): normalising multiplies by the float32
    reciprocal of 2 std on both backends, so that they agree bit for bit."""
    return float(np.float32(1.0) / np.float32(value))


def mask_fill(mask_value: str, mean: float | None, std: float | None) -> float:
    """What SpecAugment writes into a masked cell of a served batch (cfg.mask_value).

    "ast": log-mel 0 normalised, (0 - mean) * (1 / (2 std)) in float32, exactly what masking the
    un-normalised fbank with 0 and then normalising (AST's order) leaves in the cell, for any
    constants or store statistics (+0.467 with AudioSet's); padding past a clip's end gets the
    same value. Without normalisation, 0: log-mel 0 itself. "zero": 0 after normalisation.
    """
    if mask_value == "zero" or mean is None:
        return 0.0
    return float(np.float32(-np.float32(mean)) * np.float32(reciprocal(2.0 * std)))


def dali_available() -> bool:
    """Whether NVIDIA DALI imports here (Linux wheels only)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class Loader:
    """Batches of one split for the current phase and epoch. Backends override `_epoch_batches`.

    The store is opened and scanned (ids, labels, frame counts, stats) once, here; `set_phase`
    and `set_epoch` only change numbers. Iterating serves the current epoch, and after a complete
    pass moves on to the next one (an interrupted pass does not advance it).
    """

    backend = "?"

    def __init__(self, cfg: PipelineConfig, reader=None):
        if reader is None:
            reader = open_reader(cfg.store, cfg.split)  # several splits: read as one (splits.py)
        self.reader = reader
        self.cfg = cfg.replace(target_frames=cfg.target_frames or reader.target_frames)
        if cfg.device == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device='gpu' but CUDA is not available here; use device='cpu'")
        weights = balanced_weights(reader.labels(), reader.n_classes) if cfg.balanced else None
        self.plan = EpochPlan(
            len(reader), cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed, drop_last=cfg.drop_last,
            rank=cfg.rank, world_size=cfg.world_size, weights=weights, num_samples=cfg.num_samples,
        )
        if cfg.normalize:
            self.mean = float(cfg.norm_mean if cfg.norm_mean is not None else reader.mean)
            self.std = float(cfg.norm_std if cfg.norm_std is not None else reader.std)
        else:
            self.mean = self.std = None
        self.epoch = 0

    def set_phase(self, method: str, factor: int) -> None:
        """Switch the compression for the next pass (validated against the target length)."""
        self.cfg = self.cfg.with_phase(method, factor)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this shard."""
        return len(self.plan)

    @property
    def samples_per_epoch(self) -> int:
        """Samples per epoch on this shard."""
        return len(self.plan) * self.cfg.batch_size if self.cfg.drop_last else self.plan.shard_size

    def source(self) -> BatchSource:
        return BatchSource(self.reader, self.plan, self.cfg)

    def __iter__(self) -> Iterator[dict]:
        return self.epoch_batches(self.epoch)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """Batches `start`, `start + 1`, ... of `epoch`: a resumed run continues mid-epoch
        without reading the batches it already trained on (every batch is a pure function of
        the config, the epoch and its position, so batch k is the same either way)."""
        if not 0 <= start <= len(self.plan):
            raise ValueError(f"start batch {start} outside 0..{len(self.plan)}")
        self.set_epoch(epoch)
        yield from self._epoch_batches(epoch, start)
        self.epoch = epoch + 1  # reached only after a complete pass

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes (if any)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resolve_backend(cfg: PipelineConfig) -> str:
    """The backend that serves cfg, "dali" or "torch". "auto" takes DALI for device="gpu" where it imports, and the
    torch backend on the CPU: measured on 2 CPU cores, DALI's CPU operators serve Frame-Shift and
    full resolution about as fast as torch but pool 2-4x slower (its reductions and casts are not
    vectorised like torch's kernels), which would make coarse pooled phases load slower than C=1.
    Ask for backend="dali" to run the DALI graph on the CPU anyway."""
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if cfg.device == "gpu" and dali_available() else "torch"
