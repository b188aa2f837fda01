"""What an epoch reads, in which order, on which shard, with which random draws.

Shared by both backends, so that they serve the same clips in the same batches with the same
augmentation. Everything here is numpy only and picklable (it runs in reader processes).

- Order: clip order of an epoch is a function of (seed, epoch): a permutation when shuffling,
  weighted draws with replacement for balanced sampling, else 0..N-1.
- Shards: rank r of W takes positions r, r+W, r+2W, ... of the epoch's order, so the W shards
  partition the epoch (every draw exactly once overall). With drop_last the order is first cut
  to a multiple of W, so every rank has the same number of batches (DDP needs that).
- Random draws: the parameters of a sample (crop start, Frame-Shift offset, SpecAugment masks;
  mixup's partner and weight in mixup.py) come from generators seeded by (seed, epoch, global
  position in the epoch), independent of batch size, workers, shards and backend.
- Mixup (cfg.mixup > 0) happens here, in the reader: each sample drawn for it is mixed with its
  partner, a clip of the whole split, before the backends crop, compress, normalise and mask.
- Corrupt clips (a crc32c mismatch, `CorruptClipError`): with on_corrupt="skip" a batch leaves
  them out, so it carries fewer samples; the other samples keep their positions and so their
  draws. No replacement is read: nothing is served twice, and an evaluation still scores every
  readable clip once. The main process finds the skipped clips by comparing each batch with
  the plan (`record_skipped`), warns and counts them, the same way for both backends. A batch
  whose every clip is corrupt raises even then: an empty batch has no loss to train on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from c2fdata.pipeline.mixup import draw_mixup, mix_features, mix_labels, one_hot
from c2fdata.pipeline.splits import clip_location
from c2fdata.shard_io import CorruptClipError

__all__ = ["balanced_weights", "EpochPlan", "SampleParams", "draw_params", "Batch", "BatchSource",
           "missing_clips", "record_skipped"]

log = logging.getLogger(__name__)

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
    features: list[np.ndarray]  # B x (T_store, F) float16 as stored; float32 with mixup on
    labels: list[np.ndarray]  # B x (K,) float32 multi-hot or () int64; (K,) float32 with mixup on
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
        feats, labels, frames, keep, first_error = [], [], [], [], None
        for k, clip in enumerate(clips):
            try:
                f, n, label = self.reader[int(clip)]
            except CorruptClipError as err:
                if cfg.on_corrupt == "raise":
                    raise
                first_error = first_error or err  # skipped; the main process warns (record_skipped)
                continue
            keep.append(k)
            feats.append(np.asarray(f))
            frames.append(n)
            labels.append(np.asarray(label))
        if first_error is not None:
            if not keep:
                raise CorruptClipError(
                    f"every clip of batch {iteration} of epoch {epoch} is corrupt, and an empty batch "
                    f"cannot be served; the first: {first_error}", path=first_error.path,
                    split=first_error.split, row=first_error.row, clip_id=first_error.clip_id,
                ) from first_error
            positions, clips = positions[keep], clips[keep]  # the others keep their draws
        params = draw_params(cfg, epoch, positions, np.asarray(frames, np.int64), self.n_mels)
        if cfg.mixup > 0:
            feats, labels = self._mix(cfg, epoch, positions, feats, frames, labels)
        return Batch(feats, labels, clips.astype(np.int64), params)

    def _mix(self, cfg, epoch: int, positions: np.ndarray, feats: list, frames: list, labels: list):
        """Mixup with partners from the whole split (mixup.py): every sample's features as
        float32 and its label as (K,) float32, mixed or not, so that a batch has one type.
        A partner that fails its checksum leaves its sample unmixed (on_corrupt="skip")."""
        k = self.reader.n_classes
        mix = draw_mixup(cfg.seed, epoch, positions, len(self.reader), cfg.mixup, cfg.mixup_alpha)
        out_feats, out_labels = [], []
        for b, (f, n, y) in enumerate(zip(feats, frames, labels)):
            if mix.mixed[b]:
                try:
                    g, m, z = self.reader[int(mix.partner[b])]
                except CorruptClipError as err:
                    if cfg.on_corrupt == "raise":
                        raise
                    log.warning("mixup partner skipped, sample left unmixed: %s", err)
                else:
                    lam = float(mix.lam[b])
                    out_feats.append(mix_features(f, n, np.asarray(g), m, lam, cfg.mixup_domain))
                    out_labels.append(mix_labels(y, np.asarray(z), lam, k))
                    continue
            out_feats.append(f.astype(np.float32))
            out_labels.append(one_hot(y, k))
        return out_feats, out_labels


def missing_clips(expected: np.ndarray, served: np.ndarray) -> list[int]:
    """Clips of `expected` (a batch as planned, in order) that `served` (the batch's index as
    served: the planned clips less the skipped ones, in order) lacks, in plan order."""
    missing, j = [], 0
    for clip in np.asarray(expected).tolist():
        if j < len(served) and int(served[j]) == clip:
            j += 1
        else:
            missing.append(int(clip))
    if j != len(served):
        raise ValueError(f"served clips {list(served)} are not a subsequence of the plan's {list(expected)}")
    return missing


def record_skipped(reader, plan: EpochPlan, epoch: int, iteration: int, index, into: list) -> None:
    """In the main process, for batch `iteration` of `epoch` as served: warn about and append
    (split, row) to `into` for each planned clip the batch lacks (skipped as corrupt in a reader
    process). `index`: the batch's index, a tensor or array; only a short batch is looked at
    closely (its length is host metadata: no device sync otherwise)."""
    _, clips = plan.batch(epoch, iteration)
    if len(index) == len(clips):
        return
    served = index.cpu().numpy() if hasattr(index, "cpu") else np.asarray(index)
    for clip in missing_clips(clips, served):
        split, row = clip_location(reader, clip)
        try:  # read it again here for the exact error (a few tens of microseconds, rarely)
            reader.features(clip)
            reason = (f"{reader.path}: split {split!r}, row {row}: skipped, its read failed in a "
                      "reader process (it reads here now); run `c2fdata verify` on the store")
        except CorruptClipError as err:
            reason = str(err)
        log.warning("corrupt clip skipped (batch %d of epoch %d): %s", iteration, epoch, reason)
        into.append((split, row))
