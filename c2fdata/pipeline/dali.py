"""The DALI backend: one `@pipeline_def`; reading in a parallel external source, the rest as DALI ops.

Reader processes (`num_workers`) run `DaliSource`, which reads whole batches from the store and
draws their random parameters (sampling.py). The graph crops/pads, compresses, normalises and
masks, on the GPU with device="gpu" (only reading stays on the CPU), else on `num_threads` CPU
threads with `device_id=None`. The graph bakes in the phase (shapes depend on C), so a phase
change rebuilds the pipeline - milliseconds with forked workers - never the reader's scan.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
from nvidia.dali import backend as dali_backend
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from c2fdata.pipeline.loader import OUTPUTS, Loader
from c2fdata.pipeline.sampling import BatchSource

__all__ = ["DaliLoader", "DaliSource", "c2f_pipeline", "crop", "compress", "normalize", "mask", "transform"]


# -- graph pieces, one per reference op (tests hold each equal to its torch twin) ------------------
def crop(x, start, frames: int):
    """(T, F) -> (frames, F): frames [start, start + frames), zeros past the end. start: (1,) int32."""
    return fn.slice(x, start, np.array([frames], np.int32), axes=[0], out_of_bounds_policy="pad", fill_values=0)


def compress(x, method: str, factor: int, frames: int, offset=None):
    """(frames, F) -> (frames // C, F), the tail rule of c2fdata.compress. offset: (1,) int32 or
    None (0). Frame-Shift selects (any dtype); pooling wants float32 (DALI reduces no float16)."""
    out = frames // factor
    if method == "none" or factor == 1:
        return x
    if method == "fshift":
        span = (out - 1) * factor + 1  # frames offset + k*C for k < out: never past the end of x
        if offset is None:
            return x[:span:factor]
        return fn.slice(x, offset, np.array([span], np.int32), axes=[0])[::factor]
    if frames % factor:
        x = x[: out * factor]  # drop the tail that does not fill a group
    grouped = fn.reshape(x, shape=[out, factor, -1])  # (T/C, C, F)
    if method == "pool-avg":
        return fn.reductions.mean(grouped, axes=1)  # sum * (1/C) in float32, as the reference
    if method == "pool-max":
        return fn.reductions.max(grouped, axes=1)
    raise ValueError(f"unknown compression method {method!r}")


def normalize(x, mean: float | None, std: float | None):
    """(T, F) any float -> float32 (x - mean) * (1 / (2 std)); a plain cast when mean is None.

    crop_mirror_normalize casts and normalises in one pass (the cheapest way on DALI's CPU
    backend; its arithmetic operators are several times slower); it wants an image layout, so
    it sees (T, F) as a one-channel (T, F, 1) "HWC" image.
    """
    if mean is None:
        return fn.cast(x, dtype=types.FLOAT)
    image = fn.reshape(fn.expand_dims(x, axes=[2]), layout="HWC")  # (T, F, 1)
    image = fn.crop_mirror_normalize(image, mean=[mean], std=[2.0 * std], dtype=types.FLOAT, output_layout="HWC")
    return fn.reshape(fn.squeeze(image, axes=[2]), layout="")  # (T, F)


def mask(x, anchor, shape):
    """SpecAugment: zero a time band and a frequency band. anchor/shape: (4,) float32 per sample,
    [t0, 0, 0, f0] and [time width, F, T, freq width] (two regions over axes (time, freq))."""
    return fn.erase(x, anchor=anchor, shape=shape, axes=[0, 1], fill_value=0.0)


def transform(x, cfg, mean, std, crop_start=None, offset=None):
    """Stored (T_store, F) float16 -> (T/C, F) float32, the reference's crop -> compress -> normalise.

    Frame-Shift selects the stored float16 frames before one cast-and-normalise pass (selection
    commutes with both, exactly: a third of the work at C = 3); pooling sums in float32.
    """
    if crop_start is not None:
        x = crop(x, crop_start, cfg.target_frames)  # (T, F)
    if cfg.method in ("pool-avg", "pool-max"):
        x = compress(fn.cast(x, dtype=types.FLOAT), cfg.method, cfg.factor, cfg.target_frames)
        return normalize(x, mean, std) if mean is not None else x
    return normalize(compress(x, cfg.method, cfg.factor, cfg.target_frames, offset), mean, std)


# -- source and pipeline ---------------------------------------------------------------------------
class DaliSource(BatchSource):
    """Batch-mode callable for `fn.external_source(parallel=True, batch=True, batch_info=True)`.

    Batch mode (not sample mode) because DALI drops a partial last batch in sample mode; here
    the last batch of an epoch is simply shorter. DALI's epoch counter restarts at 0 with each
    pipeline, so the loader's epoch is `base_epoch + epoch_idx`. The first epoch may start at
    batch `start` (a resumed run); the following ones start at 0.
    """

    def __init__(self, reader, plan, cfg, base_epoch: int = 0, start: int = 0):
        super().__init__(reader, plan, cfg)
        self.base_epoch = base_epoch
        self.start = start

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of what __call__ returns: only what this phase's graph uses."""
        cfg = self.cfg
        names = ("stored", "labels", "index")
        if cfg.random_crop or self.reader.target_frames != cfg.target_frames:
            names += ("crop_start",)
        if cfg.random_offset and cfg.method == "fshift":
            names += ("offset",)
        if cfg.time_mask_frames or cfg.freq_mask_bins:
            names += ("mask_anchor", "mask_shape")
        return names

    def __call__(self, info):
        iteration = info.iteration + (self.start if info.epoch_idx == 0 else 0)
        if iteration >= len(self.plan):
            raise StopIteration
        batch = self.read(self.base_epoch + info.epoch_idx, iteration)
        p = batch.params
        n = len(batch.index)
        out = {  # per output, a list of samples or one array whose first axis is the batch
            "stored": batch.features,  # B x (T_store, F) float16
            "labels": batch.labels,
            "index": batch.index,  # (B,) int64
            "crop_start": p.crop_start.astype(np.int32)[:, None],  # (B, 1)
            "offset": p.offset.astype(np.int32)[:, None],  # (B, 1)
        }
        if "mask_anchor" in self.outputs:
            zeros = np.zeros(n)
            frames, bins = np.full(n, self.cfg.out_frames), np.full(n, self.n_mels)
            out["mask_anchor"] = np.stack([p.time_start, zeros, zeros, p.freq_start], 1).astype(np.float32)
            out["mask_shape"] = np.stack([p.time_width, bins, frames, p.freq_width], 1).astype(np.float32)
        return tuple(out[name] for name in self.outputs)


@pipeline_def
def c2f_pipeline(source: DaliSource, mean: float | None, std: float | None, gpu: bool, parallel: bool):
    cfg = source.cfg
    # parallel: prefetch two batches per reader process, to keep every one of them busy
    ahead = dict(parallel=True, prefetch_queue_depth=2 * cfg.num_workers) if parallel else {}
    nodes = fn.external_source(source=source, num_outputs=len(source.outputs), batch=True, batch_info=True, **ahead)
    inputs = dict(zip(source.outputs, nodes))
    x = inputs["stored"].gpu() if gpu else inputs["stored"]  # (T_store, F) float16; the rest runs where x is
    x = transform(x, cfg, mean, std, inputs.get("crop_start"), inputs.get("offset"))  # (T/C, F) float32
    if "mask_anchor" in inputs:
        x = mask(x, inputs["mask_anchor"], inputs["mask_shape"])
    return x, inputs["labels"], inputs["index"]


def _start_method(gpu: bool) -> str:
    # fork starts workers in milliseconds (spawn: seconds), but is unsafe once CUDA is initialised.
    return "spawn" if gpu or dali_backend.IsDriverInitialized() else "fork"


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, cfg, reader=None):
        super().__init__(cfg, reader)
        self._pipe = self._iterator = None
        self._built_for = None  # (phase config, next epoch, its first batch) the live pipeline serves

    def _build(self, epoch: int, start: int = 0) -> None:
        self.close()
        gpu = self.cfg.device == "gpu"
        device_id = None
        if gpu:
            import torch

            device_id = torch.cuda.current_device()
        workers = self.cfg.num_workers
        self._pipe = c2f_pipeline(
            source=DaliSource(self.reader, self.plan, self.cfg, base_epoch=epoch, start=start),
            mean=self.mean, std=self.std, gpu=gpu, parallel=workers > 0,
            batch_size=self.cfg.batch_size, num_threads=self.cfg.num_threads, device_id=device_id,
            py_num_workers=workers, py_start_method=_start_method(gpu), seed=self.cfg.seed,
        )
        self._pipe.build()
        self._iterator = DALIGenericIterator([self._pipe], list(OUTPUTS), auto_reset=True)
        self._built_for = (self.cfg, epoch, start)

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        if len(self.plan) - start <= 0:
            return
        if self._built_for != (self.cfg, epoch, start):
            self._build(epoch, start)
        done = False
        try:
            for out in self._iterator:
                yield out[0]
            done = True
            self._built_for = (self.cfg, epoch + 1, 0)  # auto_reset: DALI moves on to the next epoch
        finally:
            if not done:
                self.close()  # an interrupted pass leaves prefetched batches behind: start afresh

    def close(self) -> None:
        if self._pipe is not None:
            self._iterator = self._pipe = self._built_for = None
            gc.collect()  # the pipeline's finaliser stops its reader processes
