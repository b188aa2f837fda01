"""The torch backend: a DataLoader whose workers each build whole batches with the reference ops.

It is the reference the DALI graph is tested against and the loader on machines without DALI
(macOS, Windows). Per sample (mixed with its partner already, if mixup is on: sampling.py): crop/pad
to the target length -> compress by C -> normalise -> SpecAugment. Masks are applied after
normalisation with the value AST's order (mask the fbank with 0, then normalise) leaves there,
`mask_fill` (loader.py): one pass over the normalised batch instead of two, the same numbers.
With device="gpu" this backend computes on the CPU and hands over CUDA tensors, copied from
pinned memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from c2fdata.compress import compress
from c2fdata.pipeline.loader import Loader, mask_fill, reciprocal
from c2fdata.pipeline.sampling import Batch, BatchSource, record_skipped
from c2fdata.shard_io import CorruptClipError

__all__ = ["TorchLoader", "crop_or_pad", "normalize", "reciprocal", "mask", "transform"]

PREFETCH_BATCHES = 2  # per worker: one being built while one waits keeps the consumer fed
CORRUPT = "corrupt_clip_error"  # the key under which a worker hands over a CorruptClipError


def crop_or_pad(x: torch.Tensor, start: int, frames: int) -> torch.Tensor:
    """(T, F) -> (frames, F): frames [start, start + frames), zeros past the end of x."""
    window = x[start : start + frames]
    if window.shape[0] == frames:
        return window
    out = x.new_zeros((frames,) + tuple(x.shape[1:]))
    out[: window.shape[0]] = window
    return out


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST's normalisation (x - mean) / (2 std), computed as (x - mean) * r with r the float32
    reciprocal of 2 std: what DALI's normalising ops compute, so that both paths agree bit for
    bit (dividing instead differs by at most one ulp)."""
    return (x - mean) * reciprocal(2.0 * std)


def mask(x: torch.Tensor, time_start: int, time_width: int, freq_start: int, freq_width: int,
         value: float = 0.0) -> torch.Tensor:
    """SpecAugment on (T, F): a copy with frames [time_start, +time_width) and bins
    [freq_start, +freq_width) set to `value`."""
    return mask_(x.clone(), time_start, time_width, freq_start, freq_width, value)


def mask_(x: torch.Tensor, time_start: int, time_width: int, freq_start: int, freq_width: int,
          value: float = 0.0) -> torch.Tensor:
    """`mask`, in place."""
    x[time_start : time_start + time_width, :] = value
    x[:, freq_start : freq_start + freq_width] = value
    return x


OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch, in shared memory inside a DataLoader worker (handing it over copies nothing)."""
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if get_worker_info() is not None else out


def transform(batch: Batch, cfg, mean: float | None, std: float | None) -> dict[str, torch.Tensor]:
    """A read batch -> dict(features (B, T/C, F) cfg.output_dtype, labels, index): the reference
    semantics, crop/pad -> compress -> normalise -> mask (with `mask_fill`), per sample, in
    float32, written into one preallocated batch; then one cast to the output dtype (as the DALI
    graph ends)."""
    p = batch.params
    n_mels = batch.features[0].shape[1] if batch.features else 0
    shape = (len(batch.features), cfg.out_frames, n_mels)  # (B, T/C, F)
    dtype = OUTPUT_DTYPES[cfg.output_dtype]
    out = _batch_buffer(shape, torch.float32) if dtype == torch.float32 else torch.empty(shape)
    for b, stored in enumerate(batch.features):
        x = crop_or_pad(torch.from_numpy(stored), int(p.crop_start[b]), cfg.target_frames)  # (T, F) f16
        if cfg.method == "pool-avg":
            x = x.float()  # sums need float32; selection and max are exact in float16
        out[b] = compress(x, cfg.method, cfg.factor, int(p.offset[b]))  # (T/C, F)
    if mean is not None:
        out.sub_(mean).mul_(reciprocal(2.0 * std))  # == normalize(out, mean, std), in place
    if cfg.time_mask_frames or cfg.freq_mask_bins:
        fill = mask_fill(cfg.mask_value, mean, std)
        for b in range(len(out)):
            mask_(out[b], int(p.time_start[b]), int(p.time_width[b]), int(p.freq_start[b]), int(p.freq_width[b]),
                  fill)
    if dtype != torch.float32:
        out = _batch_buffer(shape, dtype).copy_(out)  # round to nearest even, as DALI's cast
    return {
        "features": out,
        "labels": torch.from_numpy(np.stack(batch.labels)),  # (B, K) float32 or (B,) int64
        "index": torch.from_numpy(batch.index),  # (B,)
    }


class _Batches(Dataset):
    """Item (cfg, epoch, k) = batch k of that epoch at cfg's phase, built inside a worker.

    The phase and epoch travel with each request, so one set of persistent workers serves every
    epoch and phase: no re-fork, no re-open of the store between them. The request's cfg is
    handed to the read, never stored: prefetched requests of two phases may interleave.
    """

    def __init__(self, source: BatchSource, mean: float | None, std: float | None):
        self.source, self.mean, self.std = source, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, request) -> dict[str, torch.Tensor]:
        cfg, epoch, k = request
        try:
            return transform(self.source.read(epoch, k, cfg), cfg, self.mean, self.std)
        except CorruptClipError as err:
            if get_worker_info() is None:
                raise
            # handed over whole: a worker's exception reaches the main process rebuilt from its
            # message alone, without the store, split, row and clip id it names
            return {CORRUPT: err}


class _Requests(Sampler):
    """The batch requests of the loader's current pass, decided when the pass starts."""

    def __init__(self):
        self.cfg, self.epoch, self.start, self.batches = None, 0, 0, 0

    def start_pass(self, cfg, epoch: int, start: int, batches: int) -> None:
        """Requests for batches start..batches-1 of `epoch` at cfg's phase (main process only)."""
        self.cfg, self.epoch, self.start, self.batches = cfg, epoch, start, batches

    def __iter__(self):
        return iter([(self.cfg, self.epoch, k) for k in range(self.start, self.batches)])

    def __len__(self) -> int:
        return self.batches - self.start


class TorchLoader(Loader):
    backend = "torch"

    def __init__(self, cfg, reader=None):
        super().__init__(cfg, reader)
        self._requests = _Requests()
        self._loader = None
        self.skipped_clips: list[tuple[str, int]] = []  # (split, row) per corrupt clip skipped

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            workers = self.cfg.num_workers
            self._loader = DataLoader(
                _Batches(self.source(), self.mean, self.std),
                batch_size=None,  # items are whole batches already
                sampler=self._requests,
                num_workers=workers,
                # every tensor of the batch dict (features, labels, index) is pinned, so the
                # non_blocking copies below are real asynchronous copies
                pin_memory=self.cfg.device == "gpu",
                prefetch_factor=PREFETCH_BATCHES if workers else None,
                persistent_workers=workers > 0,
            )
        return self._loader

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        self._requests.start_pass(self.cfg, epoch, start, len(self.plan))
        gpu = self.cfg.device == "gpu"
        if start >= len(self.plan):
            return
        for k, batch in enumerate(self._dataloader(), start):
            if CORRUPT in batch:
                raise batch[CORRUPT]
            record_skipped(self.reader, self.plan, epoch, k, batch["index"], self.skipped_clips)
            if gpu:
                batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
            yield batch

    def close(self) -> None:
        self._loader = None  # persistent workers stop with their iterator
