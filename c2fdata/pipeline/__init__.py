"""Store -> batches, compressed in time at load time; one entry point, two backends.

    loader = make_loader(PipelineConfig(store, "train", method="pool-avg", factor=4, shuffle=True))
    for epoch in range(epochs):
        loader.set_epoch(epoch)          # optional: epochs advance by themselves after a full pass
        for batch in loader:             # dict(features (B, T/C, F) float32, labels, index)
            ...
    loader.set_phase("none", 1)          # next phase: no store re-open, no re-scan

Both backends serve the same batches (same clips, order, crops, offsets and masks) for the same
config and seed: `BatchSource` (sampling.py) decides every choice; the backends only compute.
"""

from __future__ import annotations

from collections.abc import Iterator

from c2fdata.pipeline.config import PipelineConfig
from c2fdata.pipeline.sampling import BatchSource, EpochPlan, balanced_weights

__all__ = ["PipelineConfig", "Loader", "make_loader", "dali_available", "balanced_weights", "EpochPlan"]

OUTPUTS = ("features", "labels", "index")  # the keys of every batch, in the backends' order


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
            from c2fdata.reader import StoreReader

            reader = StoreReader(cfg.store, cfg.split)
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
        epoch = self.epoch
        yield from self._epoch_batches(epoch)
        self.epoch = epoch + 1  # reached only after a complete pass

    def _epoch_batches(self, epoch: int) -> Iterator[dict]:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes (if any)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_loader(cfg: PipelineConfig, reader=None) -> Loader:
    """The loader for cfg on the backend it asks for ("auto": DALI where it imports, else torch).

    reader: an open `StoreReader` of cfg's store and split, to share one scan between loaders.
    """
    backend = cfg.backend
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    if backend == "dali":
        if not dali_available():
            raise ImportError(
                "backend='dali' but nvidia.dali does not import; install nvidia-dali-cuda130 "
                "(Linux only) or use backend='torch'"
            )
        from c2fdata.pipeline.dali import DaliLoader

        return DaliLoader(cfg, reader)
    from c2fdata.pipeline.torch_loader import TorchLoader

    return TorchLoader(cfg, reader)
