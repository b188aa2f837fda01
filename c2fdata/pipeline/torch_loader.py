"""The torch backend: a DataLoader whose workers each build whole batches with the reference ops.

It is the reference the DALI graph is tested against and the loader on machines without DALI
(macOS, Windows). Per sample: crop/pad to the target length -> compress by C -> normalise ->
SpecAugment (zeros after normalisation, i.e. the dataset mean).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from c2fdata.compress import compress
from c2fdata.pipeline import Loader
from c2fdata.pipeline.sampling import Batch, BatchSource

__all__ = ["TorchLoader", "crop_or_pad", "normalize", "mask", "transform"]


def crop_or_pad(x: torch.Tensor, start: int, frames: int) -> torch.Tensor:
    """(T, F) -> (frames, F): frames [start, start + frames), zeros past the end of x."""
    window = x[start : start + frames]
    if window.shape[0] == frames:
        return window
    out = x.new_zeros((frames,) + tuple(x.shape[1:]))
    out[: window.shape[0]] = window
    return out


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST's normalisation, (x - mean) / (2 std), in x's dtype."""
    return (x - mean) / (2.0 * std)


def mask(x: torch.Tensor, time_start: int, time_width: int, freq_start: int, freq_width: int) -> torch.Tensor:
    """SpecAugment on (T, F): zero frames [time_start, +time_width) and bins [freq_start, +freq_width)."""
    x = x.clone()
    x[time_start : time_start + time_width, :] = 0
    x[:, freq_start : freq_start + freq_width] = 0
    return x


def transform(batch: Batch, cfg, mean: float | None, std: float | None) -> dict[str, torch.Tensor]:
    """A read batch -> dict(features (B, T/C, F) float32, labels, index), the reference semantics."""
    p = batch.params
    masks = cfg.time_mask_frames > 0 or cfg.freq_mask_bins > 0
    out = []
    for b, stored in enumerate(batch.features):
        x = crop_or_pad(torch.from_numpy(stored), int(p.crop_start[b]), cfg.target_frames)  # (T, F) f16
        x = compress(x.float(), cfg.method, cfg.factor, int(p.offset[b]))  # (T/C, F)
        if mean is not None:
            x = normalize(x, mean, std)
        if masks:
            x = mask(x, int(p.time_start[b]), int(p.time_width[b]), int(p.freq_start[b]), int(p.freq_width[b]))
        out.append(x)
    return {
        "features": torch.stack(out).contiguous(),  # (B, T/C, F)
        "labels": torch.from_numpy(np.stack(batch.labels)),  # (B, K) float32 or (B,) int64
        "index": torch.from_numpy(batch.index),  # (B,)
    }


class _EpochBatches(Dataset):
    """Item k = batch k of one epoch, built entirely inside a DataLoader worker."""

    def __init__(self, source: BatchSource, epoch: int, mean: float | None, std: float | None):
        self.source, self.epoch, self.mean, self.std = source, epoch, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return transform(self.source.read(self.epoch, k), self.source.cfg, self.mean, self.std)


class TorchLoader(Loader):
    backend = "torch"

    def _epoch_batches(self, epoch: int) -> Iterator[dict]:
        if len(self.plan) == 0:
            return
        workers = self.cfg.num_workers
        gpu = self.cfg.device == "gpu"
        loader = DataLoader(
            _EpochBatches(self.source(), epoch, self.mean, self.std),
            batch_size=None,  # items are whole batches already
            num_workers=workers,
            pin_memory=gpu,
            prefetch_factor=2 if workers else None,
        )
        for batch in loader:
            if gpu:
                batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
            yield batch
