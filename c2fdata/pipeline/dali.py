"""The DALI backend: one `@pipeline_def`; reading in a parallel external source, the rest as DALI ops.

Reader processes (`num_workers`) run `DaliSource`, which reads whole batches from the store (and
mixes them with their mixup partners) and draws their random parameters (sampling.py). The graph
crops/pads, compresses, normalises and masks, on the GPU with device="gpu" (only reading stays on the CPU), else on `num_threads` CPU
threads with `device_id=None`. The graph bakes in the phase (shapes depend on C), so each phase
has its own pipeline; the loader keeps the last `MAX_LIVE_PIPELINES` of them built, and a new
epoch (or a restart from any batch) on a built one only resets its iterator: building costs
seconds on a GPU, where reader processes are spawned, and an evaluation switches phases twice.
"""

from __future__ import annotations

import gc
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from nvidia.dali import backend as dali_backend
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from c2fdata.pipeline.dali_source import DaliSource, PassState
from c2fdata.pipeline.loader import OUTPUTS, Loader, mask_fill
from c2fdata.pipeline.sampling import record_skipped
from c2fdata.shard_io import CorruptClipError

__all__ = ["DaliLoader", "DaliSource", "PassState", "c2f_pipeline", "crop", "compress", "normalize", "mask",
           "transform", "MAX_LIVE_PIPELINES"]

# Built pipelines a loader keeps (least recently used one closed first): full resolution and the
# current coarse phase, all an evaluation loader alternates between; a training loader never goes
# back to an earlier phase. Each one holds its own reader processes and prefetch buffers.
MAX_LIVE_PIPELINES = 2
# DALI has no bfloat16: the graph ends in float32 and the cast to bfloat16 is torch's (on the
# GPU when the batch is there), the same rounding as the torch backend's.
DALI_OUTPUT_TYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}


# -- graph pieces, one per reference op (tests hold each equal to its torch twin) ------------------
def crop(x, start, frames: int):
    """(T, F) -> (frames, F): frames [start, start + frames), zeros past the end. start: (1,) int32.

    start and shape are named arguments, not positional inputs: arguments always live on the
    host, whereas a constant positional input of a GPU slice becomes a GPU constant that DALI
    copies back to the host every batch (a device-to-host sync; see fn.slice's docs)."""
    return fn.slice(x, start=start, shape=[frames], axes=[0], out_of_bounds_policy="pad", fill_values=0)


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
        return fn.slice(x, start=offset, shape=[span], axes=[0])[::factor]  # host-side arguments, as crop
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


def mask(x, anchor, shape, value: float = 0.0):
    """SpecAugment: set a time band and a frequency band to `value`. anchor/shape: (4,) float32
    per sample, [t0, 0, 0, f0] and [time width, F, T, freq width] (two regions over axes (time, freq))."""
    return fn.erase(x, anchor=anchor, shape=shape, axes=[0, 1], fill_value=float(value))


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
        x = mask(x, inputs["mask_anchor"], inputs["mask_shape"], mask_fill(cfg.mask_value, mean, std))
    if DALI_OUTPUT_TYPES[cfg.output_dtype] != types.FLOAT:
        x = fn.cast(x, dtype=DALI_OUTPUT_TYPES[cfg.output_dtype])  # what the model eats, not float32
    labels, index = inputs["labels"], inputs["index"]
    if gpu:  # every output on the GPU, as the torch backend hands them over: no pageable copies later
        labels, index = labels.gpu(), index.gpu()
    return x, labels, index


def _start_method(gpu: bool) -> str:
    # fork starts workers in milliseconds (spawn: seconds), but is unsafe once CUDA is initialised.
    return "spawn" if gpu or dali_backend.IsDriverInitialized() else "fork"


@dataclass
class _Live:
    """A built pipeline of one phase. complete: its last pass ran to the end, so resetting its
    iterator starts the next pass cleanly (DALI discards what it prefetched past the end)."""

    pipe: object
    iterator: DALIGenericIterator | None  # made on the first pass (building it prefetches)
    passes: PassState
    complete: bool = False

    def close(self) -> None:
        if self.pipe is not None:
            self.iterator = self.pipe = None
            gc.collect()  # the pipeline's finaliser stops its reader processes
            self.passes.close()


@contextmanager
def _corrupt_clip_errors():
    """A reader process's CorruptClipError (on_corrupt="raise", or a batch of corrupt clips only)
    reaches here as a plain Exception holding the traceback's text: raise it as what it was."""
    try:
        yield
    except Exception as err:
        found = re.findall(r"CorruptClipError: (.+)", str(err))
        if type(err) is Exception and found:
            raise CorruptClipError(found[-1]) from err  # the last one: the outermost, complete message
        raise


class DaliLoader(Loader):
    backend = "dali"

    def __init__(self, cfg, reader=None):
        super().__init__(cfg, reader)
        self._live: dict = {}  # phase config -> _Live, least recently used first
        self.builds = 0  # pipelines built so far (each spawns or forks its reader processes)
        self.skipped_clips: list[tuple[str, int]] = []  # (split, row) per corrupt clip skipped

    def _build(self) -> _Live:
        gpu = self.cfg.device == "gpu"
        workers = self.cfg.num_workers
        passes = PassState()
        try:
            pipe = c2f_pipeline(
                source=DaliSource(self.reader, self.plan, self.cfg, passes),
                mean=self.mean, std=self.std, gpu=gpu, parallel=workers > 0,
                batch_size=self.cfg.batch_size, num_threads=self.cfg.num_threads,
                device_id=torch.cuda.current_device() if gpu else None,
                py_num_workers=workers, py_start_method=_start_method(gpu), seed=self.cfg.seed,
            )
        except BaseException:
            passes.close()
            raise
        self.builds += 1
        return _Live(pipe, None, passes)

    def _pipeline(self, epoch: int, start: int) -> _Live:
        """The current phase's pipeline, about to serve batches start.. of epoch."""
        live = self._live.pop(self.cfg, None)
        if live is not None and not live.complete:
            live.close()  # an interrupted pass left prefetched batches behind: start afresh
            live = None
        if live is None:
            while len(self._live) >= MAX_LIVE_PIPELINES:
                self._live.pop(next(iter(self._live))).close()
            live = self._build()
        try:
            # The pass is set before DALI asks for any of its batches: building the iterator,
            # or resetting it, is what makes DALI request (prefetch) the first ones.
            live.passes.set(epoch, start)
            if live.iterator is None:
                live.pipe.build()
                live.iterator = DALIGenericIterator([live.pipe], list(OUTPUTS), auto_reset=False)
            else:
                live.iterator.reset()
        except BaseException:
            live.close()
            raise
        live.complete = False
        self._live[self.cfg] = live  # most recently used last
        return live

    def _epoch_batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        if len(self.plan) - start <= 0:
            return
        with _corrupt_clip_errors():
            key, live = self.cfg, self._pipeline(epoch, start)
        bf16 = self.cfg.output_dtype == "bfloat16"
        try:
            for k in itertools.count(start):
                with _corrupt_clip_errors():
                    out = next(live.iterator, None)
                if out is None:
                    break
                batch = out[0]
                record_skipped(self.reader, self.plan, epoch, k, batch["index"], self.skipped_clips)
                if bf16:
                    batch["features"] = batch["features"].to(torch.bfloat16)
                yield batch
            live.complete = True
        finally:
            if not live.complete:  # interrupted: release its reader processes now, not at next use
                if self._live.get(key) is live:
                    del self._live[key]
                live.close()

    def close(self) -> None:
        while self._live:
            self._live.popitem()[1].close()
