"""`c2fdata build`: decode + fbank in worker processes, commit blocks to the store, resumable.

The library API is `build_store(BuildConfig(...), progress=...)`; the CLI only renders.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from c2fdata import store as st
from c2fdata.datasets import DatasetSpec, prepare
from c2fdata.features import BadClip, FbankConfig, fbank, pad_or_crop

log = logging.getLogger(__name__)

SILENT_PEAK = 1e-6  # peak |sample| below this: the clip is flagged "silent" (kept, reported)
SHORT_FRACTION = 0.5  # clips with fewer real frames than this share of the target are flagged


class StrictError(RuntimeError):
    """--strict and a clip that is not perfectly fine."""


@dataclass(frozen=True)
class BuildConfig:
    dataset: str
    out: Path
    root: Path | None = None
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # (K, N): this builder takes blocks b with b % N == K
    limit: int | None = None  # at most this many clips per split (quick trials)
    strict: bool = False
    block_clips: int = st.DEFAULT_BLOCK_CLIPS
    options: dict = field(default_factory=dict)  # adapter options: fold, target_frames, seed, ...

    def __post_init__(self):
        k, n = self.shard
        if not (n >= 1 and 0 <= k < n):
            raise ValueError(f"--shard K/N needs 0 <= K < N, got {k}/{n}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.block_clips < 1:
            raise ValueError(f"block_clips must be >= 1, got {self.block_clips}")


@dataclass
class BuildResult:
    path: Path
    computed: int  # clips computed by this call (0 when everything was already done)
    failed: int
    seconds: float
    finalized: bool
    stats: dict | None
    completion: dict
    problems: list[dict]  # {split, id, reason, detail, fatal}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    return k, n


# -- worker side -------------------------------------------------------------------------------
_CFG: tuple[FbankConfig, int] | None = None


def _init_worker(cfg: FbankConfig, target_frames: int, single_thread: bool = True) -> None:
    global _CFG
    if single_thread:  # pool workers: parallelism comes from processes, threads would oversubscribe
        import torch

        torch.set_num_threads(1)
    _CFG = (cfg, target_frames)


def _compute(task: tuple[str, Callable]):
    """One clip -> (features (T, F) float16 | None, real frames, status, message, sums)."""
    clip_id, source = task
    cfg, target = _CFG
    try:
        audio, sr = source()
        feats = fbank(audio, sr, cfg, source=str(getattr(source, "path", clip_id)))
    except BadClip as err:
        return None, 0, st.FAILED, f"{err.reason}: {err.detail}", None
    except Exception as err:  # a decoder bug must not kill a build of millions
        return None, 0, st.FAILED, f"error: {clip_id}: {type(err).__name__}: {err}", None
    padded, frames = pad_or_crop(feats, target)
    out = padded.numpy().astype(np.float16)
    real = out[:frames].astype(np.float64)
    sums = np.array([real.sum(), np.square(real).sum(), real.size], np.float64)
    message = ""
    peak = float(np.max(np.abs(audio))) if np.size(audio) else 0.0
    if peak < SILENT_PEAK:
        message = f"silent: {clip_id}: peak amplitude {peak:.2g}"
    elif frames < SHORT_FRACTION * target:
        message = f"short: {clip_id}: {frames} of {target} frames, zero-padded"
    return out, frames, st.OK, message, sums


# -- orchestration -----------------------------------------------------------------------------
def _labels_and_issues(spec: DatasetSpec, limit: int | None):
    metas, issues, clips_by_split = {}, [], {}
    for split, clips in spec.clips.items():
        clips = clips[:limit] if limit else clips
        clips_by_split[split] = clips
        enc, unknown = st.encode_labels([c.labels for c in clips], spec.vocabulary, spec.multi_label)
        for row, bad in unknown:
            issues.append({"split": split, "id": clips[row].id, "reason": "unknown-label",
                           "detail": f"labels not in the vocabulary: {', '.join(bad)}"})
        metas[split] = st.SplitMeta(ids=[c.id for c in clips], labels=enc)
    for split, ids in spec.missing.items():
        issues += [{"split": split, "id": i, "reason": "missing", "detail": "listed but not on disk"} for i in ids]
    return metas, issues, clips_by_split


def build_store(cfg: BuildConfig, progress=None, fbank_cfg: FbankConfig | None = None) -> BuildResult:
    """Build (or resume, or add this shard to) the store at cfg.out. Never stops on a bad clip
    unless cfg.strict. `progress(done, total)` is called after every committed block."""
    t0 = time.perf_counter()
    fbank_cfg = fbank_cfg or FbankConfig()
    spec = prepare(cfg.dataset, cfg.root, **cfg.options)
    metas, issues, clips_by_split = _labels_and_issues(spec, cfg.limit)
    if cfg.strict and issues:
        raise StrictError(f"--strict: {len(issues)} metadata problems, first: {issues[0]}")
    missing = {s: ids for s, ids in spec.missing.items() if ids}
    group = st.create_or_open(
        cfg.out, dataset=spec.name, vocabulary=spec.vocabulary, multi_label=spec.multi_label,
        target_frames=spec.target_frames, splits=metas, train_split=spec.train_split,
        fbank=fbank_cfg, block_clips=cfg.block_clips, missing=missing,
        prepare_issues=[i for i in issues if i["reason"] != "missing"],
        extra_attrs={"notes": spec.notes},
    )
    # Tasks of this shard's pending blocks, in block order.
    todo: list[tuple[str, int, int, int]] = []  # (split, block, start, end)
    for split in metas:
        for b in st.pending_blocks(group, split, cfg.shard):
            start = b * cfg.block_clips
            todo.append((split, b, start, min(start + cfg.block_clips, len(metas[split].ids))))
    total = sum(e - s for _, _, s, e in todo)
    problems = [dict(i, fatal=False) for i in issues]
    computed = failed = 0
    if progress:
        progress(0, total)

    def tasks():
        for split, _, start, end in todo:
            clips = clips_by_split[split]
            labels = metas[split].labels
            for row in range(start, end):
                # a single-label clip whose label is unknown is failed without decoding it
                yield (clips[row].id, None if (labels.ndim == 1 and labels[row] < 0) else clips[row].source)

    results = _run(tasks(), cfg.workers, fbank_cfg, spec.target_frames)
    try:
        for split, b, start, end in todo:
            n = end - start
            feats = np.zeros((n, spec.target_frames, fbank_cfg.n_mels), np.float16)
            frames = np.zeros(n, np.int32)
            status = np.zeros(n, np.uint8)
            errors, sums = [""] * n, np.zeros(3)
            for j in range(n):
                out, fr, stt, msg, s = next(results)
                clip_id = metas[split].ids[start + j]
                if out is not None:
                    feats[j], frames[j], sums = out, fr, sums + s
                status[j], errors[j] = stt, msg
                if msg:
                    reason, _, detail = msg.partition(": ")
                    problems.append({"split": split, "id": clip_id, "reason": reason, "detail": detail,
                                     "fatal": stt == st.FAILED})
                    if cfg.strict:
                        raise StrictError(f"--strict: {split}/{clip_id}: {msg}")
                failed += stt == st.FAILED
            st.write_block(group, split, b, feats, frames, status, errors, sums)
            computed += n
            if progress:
                progress(computed, total)
    finally:
        _close(results)
    stats = st.finalize(group, cfg.out)
    return BuildResult(
        path=Path(cfg.out), computed=computed, failed=failed, seconds=time.perf_counter() - t0,
        finalized=stats is not None, stats=stats or group.attrs.get("stats"),
        completion=st.completion(group), problems=problems,
    )


def _unknown_label(task):
    clip_id, source = task
    if source is None:
        return None, 0, st.FAILED, f"unknown-label: {clip_id}: label not in the vocabulary", None
    return _compute(task)


def _run(tasks, workers: int, cfg: FbankConfig, target: int):
    """Ordered results of _compute over tasks, in-process (workers=1) or in a process pool."""
    if workers == 1:
        _init_worker(cfg, target, single_thread=False)  # in-process: leave the caller's threads alone
        return (_unknown_label(t) for t in tasks)
    # forkserver: children do not inherit the parent's threads/locks (torch, zarr's event loop)
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, target))
    it = pool.imap(_unknown_label, tasks, chunksize=4)

    class _Results:
        def __iter__(self):
            return self

        def __next__(self):
            return next(it)

        def close(self):
            pool.terminate()
            pool.join()

    return _Results()


def _close(results) -> None:
    close = getattr(results, "close", None)
    if close:
        close()
