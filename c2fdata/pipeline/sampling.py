"""What an epoch reads, in which order, on which shard, with which random draws.

Shared by both backends, so that they serve the same clips in the same batches with the same
augmentation. Everything here is numpy only and picklable (it runs in reader processes).

- Order: clip order of an epoch is a function of (seed, epoch): a permutation when shuffling,
  weighted draws with replacement for balanced sampling, else 0..N-1.
- Shards: rank r of W takes positions r, r+W, r+2W, ... of the epoch's order, so the W shards
  partition the epoch (every draw exactly once overall). With drop_last the order is first cut
  to a multiple of W, so every rank has the same number of batches (DDP needs that).
- Random draws: the parameters of a sample (crop start, Frame-Shift offset, SpecAugment masks)
  come from a generator seeded by (seed, epoch, global position in the epoch), independent of
  batch size, workers, shards and backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["balanced_weights", "EpochPlan", "SampleParams", "draw_params", "Batch", "BatchSource"]

_ORDER, _PARAMS = 0, 1  # seed-sequence domains, so order and parameter draws never collide


def balanced_weights(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """AST's balanced sampling weights: per label 1000 / (count + 0.01), summed over a clip's
    labels. labels: (N, K) multi-hot or (N,) class indices -> (N,) float64."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        multi_hot = labels.astype(np.float64)
    elif labels.ndim == 1:
        k = int(labels.max()) + 1 if n_classes is None and labels.size else int(n_classes or 0)
        multi_hot = np.zeros((labels.size, k), np.float64)
        multi_hot[np.arange(labels.size), labels.astype(np.int64)] = 1.0
    else:
        raise ValueError(f"labels must be (N, K) multi-hot or (N,) indices, got shape {labels.shape}")
    per_label = 1000.0 / (multi_hot.sum(axis=0) + 0.01)  # (K,)
    return multi_hot @ per_label  # (N,)


class EpochPlan:
    """The clips of each epoch for one shard, cut into batches."""

    def __init__(
        self, n_clips: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
        drop_last: bool = False, rank: int = 0, world_size: int = 1,
        weights: np.ndarray | None = None, num_samples: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if weights is not None:
            weights = np.asarray(weights, np.float64)
            if weights.shape != (n_clips,) or not np.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"weights must be ({n_clips},) finite and >= 0, got {weights.shape}")
            if n_clips and weights.sum() <= 0:
                raise ValueError("sampling weights are all zero")
        elif num_samples is not None:
            raise ValueError("num_samples needs weights (balanced sampling)")
        self.n_clips = int(n_clips)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.weights = weights
        self.draws = int(num_samples if num_samples is not None else n_clips)  # per epoch, all ranks
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def order(self, epoch: int) -> np.ndarray:
        """(draws,) clip indices of the whole epoch, all shards."""
        rng = np.random.default_rng([self.seed, _ORDER, int(epoch)])
        if self.weights is not None:
            return rng.choice(self.n_clips, size=self.draws, replace=True, p=self.weights / self.weights.sum())
        if self.shuffle:
            return rng.permutation(self.n_clips)
        return np.arange(self.n_clips)

    @property
    def used_draws(self) -> int:
        """Draws of an epoch that some shard serves (all of them unless drop_last)."""
        return self.draws - self.draws % self.world_size if self.drop_last else self.draws

    @property
    def shard_size(self) -> int:
        """Samples per epoch on this rank."""
        n = self.used_draws
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the epoch's order, clip indices) of this rank; cached per epoch."""
        if self._cache is None or self._cache[0] != epoch:
            positions = np.arange(self.rank, self.used_draws, self.world_size)
            self._cache = (epoch, positions, self.order(epoch)[positions])
        return self._cache[1], self._cache[2]

    def batch(self, epoch: int, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, clips) of batch `iteration`; IndexError past the last batch."""
        if not 0 <= iteration < len(self):
            raise IndexError(f"batch {iteration} of an epoch of {len(self)} batches")
        positions, clips = self.shard(epoch)
        s = slice(iteration * self.batch_size, (iteration + 1) * self.batch_size)
        return positions[s], clips[s]


@dataclass
class SampleParams:
    """Random choices for the samples of a batch, each (B,) int64. Time-mask numbers are in
    compressed frames; a width of 0 means no mask."""

    crop_start: np.ndarray  # first 10 ms frame of the target window
    offset: np.ndarray  # Frame-Shift's first frame within the window, in [0, C)
    time_start: np.ndarray
    time_width: np.ndarray
    freq_start: np.ndarray
    freq_width: np.ndarray


def draw_params(cfg, epoch: int, positions: np.ndarray, frames: np.ndarray, n_mels: int) -> SampleParams:
    """Random parameters for the samples at `positions` of `epoch` (cfg: a resolved PipelineConfig).

    Six uniforms per sample are always drawn, in one order, whatever is switched on, so
    switching one augmentation never changes another's draws.
    """
    if cfg.augments:
        # One generator per sample costs ~0.95 ms per batch of 64 (timeit, 2 busy CPU cores): kept, bit-exact.
        u = [np.random.default_rng([cfg.seed, _PARAMS, int(epoch), int(p)]).random(6) for p in positions]
        u = np.asarray(u, np.float64).reshape(len(positions), 6)
    else:
        u = np.zeros((len(positions), 6))  # nothing random: skip the generators

    def pick(k: int, n: np.ndarray | int) -> np.ndarray:  # uniform integers in [0, n)
        n = np.maximum(np.asarray(n, np.int64), 1)
        return np.minimum((u[:, k] * n).astype(np.int64), n - 1)

    zero = np.zeros(len(positions), np.int64)
    out_frames = cfg.out_frames
    crop = pick(0, np.asarray(frames) - cfg.target_frames + 1) if cfg.random_crop else zero
    offset = pick(1, cfg.factor) if cfg.random_offset and cfg.method == "fshift" else zero
    time_max = min(cfg.time_mask_frames // cfg.factor, out_frames)  # the mask scales with 1/C
    time_width = pick(2, time_max + 1)
    freq_max = min(cfg.freq_mask_bins, n_mels)
    freq_width = pick(4, freq_max + 1)
    return SampleParams(
        crop_start=crop, offset=offset,
        time_start=pick(3, out_frames - time_width + 1), time_width=time_width,
        freq_start=pick(5, n_mels - freq_width + 1), freq_width=freq_width,
    )


@dataclass
class Batch:
    features: list[np.ndarray]  # B x (T_store, F) float16, as stored
    labels: list[np.ndarray]  # B x (K,) float32 multi-hot or () int64
    index: np.ndarray  # (B,) int64 clip index in the split
    params: SampleParams


class BatchSource:
    """Reads batch `iteration` of `epoch` for one phase: the per-batch unit both backends share.

    Picklable (the reader reopens the store lazily in each process); it caches only what is a
    pure function of its arguments, so any worker may serve any batch.
    """

    def __init__(self, reader, plan: EpochPlan, cfg):
        self.reader = reader
        self.plan = plan
        self.cfg = cfg  # resolved PipelineConfig (target_frames set)
        self.n_mels = reader.n_mels

    def __len__(self) -> int:
        return len(self.plan)

    def read(self, epoch: int, iteration: int, cfg=None) -> Batch:
        """Batch `iteration` of `epoch`; its random draws follow `cfg`'s phase (default: the
        source's own cfg). Reads leave the source as it was, so one source serves any phase."""
        cfg = self.cfg if cfg is None else cfg
        positions, clips = self.plan.batch(epoch, iteration)
        feats, labels, frames = [], [], []
        for clip in clips:
            f, n, label = self.reader[int(clip)]
            feats.append(np.asarray(f))
            frames.append(n)
            labels.append(np.asarray(label))
        params = draw_params(cfg, epoch, positions, np.asarray(frames, np.int64), self.n_mels)
        return Batch(feats, labels, clips.astype(np.int64), params)
