"""What a build worker does with one clip: decode -> fbank -> pad/crop -> as the store's codec
keeps it (float16, or float32 for a codec that quantises), as a `ClipResult`.

`compute_clip` runs in the builder's process (workers=1) or in a pool of worker processes; both
return the same frozen `ClipResult`s, in task order (`clip_results`). A result carries the
problem, if any, as a `reason` tag and a `detail` text, never parsed back from a string.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from c2fdata import store as st
from c2fdata.codec import DEFAULT_CODEC, FeatureCodec, get_codec
from c2fdata.datasets.base import AudioSource
from c2fdata.features import BadClip, FbankConfig, fbank, pad_or_crop, to_mono_float
from c2fdata.lifetime import end_with
from c2fdata.threads import one_torch_thread

__all__ = ["SILENT_PEAK", "SHORT_FRACTION", "ClipTask", "ClipResult", "compute_clip", "clip_results"]

SILENT_PEAK = 1e-6  # peak |sample| below this: the clip is flagged "silent" (kept, reported)
SHORT_FRACTION = 0.5  # clips with fewer real frames than this share of the target are flagged
POOL_CHUNK = 4  # clips per pool message: amortises pickling without starving workers near the end
IN_FLIGHT_PER_WORKER = 4  # chunks in flight per worker: keeps workers busy, bounds the results held


@dataclass(frozen=True)
class ClipTask:
    """One clip to compute. `source` is None for a clip whose single label is not in the
    vocabulary: it is failed without being decoded (nothing could ever train on it)."""

    clip_id: str
    source: AudioSource | None


@dataclass(frozen=True)
class ClipResult:
    """What one clip became. `reason` is "" for a clean clip; otherwise a short tag ("silent",
    "too-short", "unreadable", ...) with a human `detail`. A failed clip (status FAILED) has no
    features; a kept clip with a reason is a warning (silent, short)."""

    status: int  # st.OK or st.FAILED
    features: np.ndarray | None = None  # (target_frames, n_mels) in the codec's dtype, zero-padded
    frames: int = 0  # real (not padded) frames in `features`
    sums: np.ndarray | None = None  # (sum, sum of squares, count) of the real values, float64
    reason: str = ""
    detail: str = ""

    @classmethod
    def failure(cls, reason: str, detail: str) -> "ClipResult":
        return cls(status=st.FAILED, reason=reason, detail=detail)

    @property
    def failed(self) -> bool:
        return self.status == st.FAILED

    @property
    def message(self) -> str:
        """"reason: detail", as the store's per-clip error column keeps it; "" when clean."""
        return f"{self.reason}: {self.detail}" if self.reason else ""


# Per-process settings, set once by `init_worker` (a pool ships them to each worker once, not
# with every task).
_SETTINGS: tuple[FbankConfig, int, FeatureCodec] | None = None


def init_worker(cfg: FbankConfig, target_frames: int, single_thread: bool = True,
                codec: str = DEFAULT_CODEC, owner: int | None = None) -> None:
    """owner: the build's process id, in a pool worker, which then ends with it (a killed build
    leaves no worker behind)."""
    global _SETTINGS
    if owner is not None:
        end_with(owner)
    if single_thread:  # pool workers: parallelism comes from processes, threads would oversubscribe
        import torch

        torch.set_num_threads(1)
    _SETTINGS = (cfg, target_frames, get_codec(codec))


def compute_clip(task: ClipTask) -> ClipResult:
    """Features of one clip (needs `init_worker` first). Never raises for a bad clip: a build
    of millions must not stop at one, so every problem comes back as a result."""
    if task.source is None:
        return ClipResult.failure("unknown-label", f"{task.clip_id}: label not in the vocabulary")
    cfg, target, codec = _SETTINGS
    try:
        audio, sr = task.source()
        source = str(task.source) if hasattr(task.source, "path") else task.clip_id  # a segment says which
        mono = to_mono_float(audio, source)  # once: fbank takes it as it is, the silence check below too
        feats = fbank(mono, sr, cfg, source=source, max_frames=target)
    except BadClip as err:
        return ClipResult.failure(err.reason, err.detail)
    except Exception as err:  # a decoder bug must not kill a build of millions
        return ClipResult.failure("error", f"{task.clip_id}: {type(err).__name__}: {err}")
    padded, frames = pad_or_crop(feats, target)
    out = padded.numpy()  # (target, n_mels) float32
    # stats from the values readers will serve (float16, or the codec's rounding), padding left out
    real = codec.served(out[:frames]).astype(np.float64)
    sums = np.array([real.sum(), np.square(real).sum(), real.size], np.float64)
    # silence as the features see it: the mono mix, its mean removed (channels that cancel, or a
    # constant offset, give the log floor as surely as zeros do)
    peak = float(np.max(np.abs(mono - mono.mean()))) if mono.size else 0.0
    reason = detail = ""
    if peak < SILENT_PEAK:
        reason, detail = "silent", f"{task.clip_id}: peak amplitude {peak:.2g} (mono, mean removed)"
        sums = np.zeros(3)  # kept, but left out of the statistics: a few floor-valued clips would move them
    elif frames < SHORT_FRACTION * target:
        reason, detail = "short", f"{task.clip_id}: {frames} of {target} frames, zero-padded"
    return ClipResult(status=st.OK, features=codec.stored(out), frames=frames, sums=sums, reason=reason, detail=detail)


class PoolResults:
    """Ordered results of a process pool, with at most `window` chunks of clips in flight (the
    main process, which writes blocks, may be slower than the workers: finished clips must not
    pile up in memory). A worker that dies (the OS killing it for memory, a decoder crashing)
    breaks the pool: the clips that were in flight are then computed again one at a time in a
    fresh pool, and the one that kills its worker again is failed as "crashed", so that the
    build goes on, and on resume does not stop at the same clip. `close()` stops the pool."""

    def __init__(self, tasks: Iterable[ClipTask], workers: int, initargs: tuple, window: int):
        self._tasks, self._workers, self._initargs, self._window = iter(tasks), workers, initargs, window
        self._pool = None
        self._restart()
        self._results = self._ordered()

    def _restart(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is not None:
            self._stop()
        # forkserver: children do not inherit the parent's threads/locks (torch, zarr's event loop)
        ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
        workers = min(self._workers, 61) if sys.platform == "win32" else self._workers  # Windows' limit
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=self._initargs)

    def _stop(self) -> None:
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:  # a worker stuck in a long clip would otherwise run on
            proc.terminate()
        for proc in processes:
            proc.join(timeout=5)

    def _ordered(self) -> Iterator[ClipResult]:
        from collections import deque
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        in_flight: deque = deque()  # (chunk of tasks, future), oldest first

        def fill() -> None:
            while len(in_flight) < self._window:
                chunk = list(itertools.islice(self._tasks, POOL_CHUNK))
                if not chunk:
                    return
                try:
                    future = self._pool.submit(compute_chunk, chunk)
                except BrokenProcessPool as err:  # a worker died since: the chunk goes the same way as the others
                    future = Future()
                    future.set_exception(err)
                in_flight.append((chunk, future))

        fill()
        while in_flight:
            chunk, future = in_flight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                again = chunk + [t for c, _ in in_flight for t in c]  # a finished later chunk: same results
                in_flight.clear()
                yield from self._one_at_a_time(again)
                fill()
                continue
            yield from results
            fill()

    def _one_at_a_time(self, tasks: list[ClipTask]) -> Iterator[ClipResult]:
        from concurrent.futures.process import BrokenProcessPool

        self._restart()
        for task in tasks:
            try:
                (result,) = self._pool.submit(compute_chunk, [task]).result()
            except BrokenProcessPool:  # alone in the pool: this clip killed its worker
                result = ClipResult.failure("crashed", f"{task.clip_id}: the process computing it died (killed by "
                                                       "the system, e.g. out of memory, or a decoder crash); skipped")
                self._restart()
            yield result

    def __iter__(self) -> "PoolResults":
        return self

    def __next__(self) -> ClipResult:
        return next(self._results)

    def close(self) -> None:
        self._stop()


def compute_chunk(tasks: list[ClipTask]) -> list[ClipResult]:
    return [compute_clip(t) for t in tasks]


def clip_results(tasks: Iterable[ClipTask], workers: int, cfg: FbankConfig, target_frames: int,
                 codec: str = DEFAULT_CODEC) -> Iterator[ClipResult]:
    """`compute_clip` over tasks, in task order: in this process (workers=1) or in a pool.
    Pass the result to `close_results` when done."""
    if workers == 1:
        init_worker(cfg, target_frames, single_thread=False, codec=codec)  # in-process: leave the caller's threads alone
        return _in_process(tasks)
    return PoolResults(tasks, workers, (cfg, target_frames, True, codec, os.getpid()),
                       window=IN_FLIGHT_PER_WORKER * workers)


def _in_process(tasks: Iterable[ClipTask]) -> Iterator[ClipResult]:
    """`compute_clip` in this process, one torch thread per clip as in a pool worker: fbank's
    float sums depend on the thread count (a 1-thread and a 2-thread fbank differ by a float16
    step in some values), and a store's bits must not depend on --workers. The caller's thread
    count is restored between clips."""
    for task in tasks:
        with one_torch_thread():
            result = compute_clip(task)
        yield result


def close_results(results: Iterator[ClipResult]) -> None:
    """Stop whatever computes `results` (a pool's workers; nothing for in-process results)."""
    close = getattr(results, "close", None)
    if close:
        close()
