"""`c2fdata build`: clips -> features in worker processes (build_worker.py), committed to the store
block by block, resumable.

The library API is `build_store(BuildConfig(...), progress=...)`; the CLI only renders.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from c2fdata import store as st
from c2fdata.build_worker import (
    SHORT_FRACTION,
    ClipResult,
    ClipTask,
    clip_results,
    close_results,
)
from c2fdata.codec import DEFAULT_CODEC, get_codec
from c2fdata.datasets import Clip, DatasetSpec, prepare
from c2fdata.datasets.base import limited
from c2fdata.features import FbankConfig
from c2fdata.repair import RepairPlan, mark_for_rebuild


class StrictError(RuntimeError):
    """--strict and a clip that is not perfectly fine."""


@dataclass(frozen=True)
class BuildConfig:
    dataset: str
    out: str | Path  # a local folder or an s3://bucket/path URL
    root: Path | None = None
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # (K, N): this builder takes blocks b with b % N == K
    limit: int | None = None  # at most this many clips per split (quick trials)
    strict: bool = False
    retry_failed: bool = False  # compute again the blocks holding clips that failed (their files since fixed)
    block_clips: int = st.DEFAULT_BLOCK_CLIPS
    codec: str = DEFAULT_CODEC  # how the store keeps features (codec.py; docs/STORE.md compares them)
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
        get_codec(self.codec)  # an unknown name fails here, before any work


@dataclass
class BuildResult:
    path: str
    computed: int  # clips computed by this call (0 when everything was already done)
    failed: int
    seconds: float
    finalized: bool
    stats: dict | None
    completion: dict
    problems: list[dict]  # {split, id, reason, detail, fatal}
    notes: list[str] = field(default_factory=list)  # what the adapter noted: files left out, the statistics split when guessed


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    return k, n


@dataclass(frozen=True)
class BlockTask:
    """Rows [start, end) of a split: block `block`, one shard file of the store."""

    split: str
    block: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BlockResult:
    """A computed block, as `store.write_block` takes it, and the problems of its clips."""

    features: np.ndarray  # (n, target_frames, n_mels) in the codec's dtype
    frames: np.ndarray  # (n,) int32 real frames per clip
    status: np.ndarray  # (n,) uint8 st.OK / st.FAILED
    errors: list[str]  # per clip "reason: detail", or "" when clean
    sums: np.ndarray  # (3,) float64: sum, sum of squares, count of the real values
    problems: list[dict]  # {split, id, reason, detail, fatal}

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(self.status == st.FAILED))


def _parts_digest(clips_by_split: dict[str, list]) -> str | None:
    """A digest of which part of its file each clip is (a manifest's segment times and channel),
    for the store's fingerprint: a clip whose times change under the same id is another clip. None
    where every clip is a whole file, so that such stores keep the fingerprint they had."""
    parts = {split: [getattr(c.source, "part", "") for c in clips] for split, clips in clips_by_split.items()}
    if not any(any(p) for p in parts.values()):
        return None
    h = hashlib.sha256()
    for split in sorted(parts):
        h.update(split.encode() + b"\0" + "\n".join(parts[split]).encode())
    return h.hexdigest()[:16]


def _labels_and_issues(spec: DatasetSpec, limit: int | None):
    metas, issues, clips_by_split = {}, [], {}
    for split, clips in spec.clips.items():
        clips = limited(clips, limit)
        clips_by_split[split] = clips
        enc, unknown = st.encode_labels([c.labels for c in clips], spec.vocabulary, spec.multi_label)
        for row, bad in unknown:
            if spec.multi_label and enc[row].any():  # the clip stays, with the labels that are known
                issues.append({"split": split, "id": clips[row].id, "reason": "labels-dropped",
                               "detail": f"labels not in the vocabulary left out (its others kept): {', '.join(bad)}"})
            else:
                issues.append({"split": split, "id": clips[row].id, "reason": "unknown-label",
                               "detail": f"labels not in the vocabulary: {', '.join(bad)}"})
        metas[split] = st.SplitMeta(ids=[c.id for c in clips], labels=enc)
    for split, ids in spec.missing.items():
        issues += [{"split": split, "id": i, "reason": "missing", "detail": "listed but not on disk"} for i in ids]
    return metas, issues, clips_by_split


def _pending_blocks(group, metas: dict[str, st.SplitMeta], cfg: BuildConfig) -> list[BlockTask]:
    """This shard's blocks that are not committed yet, in block order."""
    todo = []
    for split, meta in metas.items():
        for b in st.pending_blocks(group, split, cfg.shard):
            start = b * cfg.block_clips
            todo.append(BlockTask(split, b, start, min(start + cfg.block_clips, len(meta.ids))))
    return todo


def _clip_tasks(todo: list[BlockTask], clips_by_split: dict[str, list[Clip]],
                metas: dict[str, st.SplitMeta]) -> Iterator[ClipTask]:
    for block in todo:
        clips, labels = clips_by_split[block.split], metas[block.split].labels
        for row in range(block.start, block.end):
            # fail without decoding a clip whose labels are all unknown (single-label encoding marks
            # it -1; multi-label, no class set although it has labels): no target to train it on
            unknown = labels[row] < 0 if labels.ndim == 1 else not labels[row].any() and bool(clips[row].labels)
            yield ClipTask(clips[row].id, None if unknown else clips[row].source)


# Failures a file fetched or converted again mends, which the build's report says how to retry (a
# retry computes every failed clip again but those of unknown labels: the rest may fail again).
MENDABLE = ("truncated", "damaged", "unreadable", "missing")
RETRY_HINT = " (mended, the same build command with --retry-failed computes it again)"


def _collect_block(block: BlockTask, ids: list[str], results: Iterator[ClipResult], target_frames: int,
                   n_mels: int, dtype: str, flag_short: bool = True) -> BlockResult:
    """The next `block.size` results, assembled into the block's arrays. `flag_short` False (a
    variable-length dataset): a clip flagged only as short is kept as clean."""
    n = block.size
    feats = np.zeros((n, target_frames, n_mels), dtype)
    frames = np.zeros(n, np.int32)
    status = np.zeros(n, np.uint8)
    errors, sums, problems = [""] * n, np.zeros(3), []
    for j in range(n):
        r = next(results)
        if r.reason == "short" and not flag_short:
            r = replace(r, reason="", detail="")
        if r.features is not None:
            feats[j], frames[j], sums = r.features, r.frames, sums + r.sums
        status[j], errors[j] = r.status, r.message
        if r.reason and r.reason != "unknown-label":  # reported from the metadata, with the labels
            detail = r.detail + (RETRY_HINT if r.reason in MENDABLE else "")
            problems.append({"split": block.split, "id": ids[block.start + j], "reason": r.reason,
                             "detail": detail, "fatal": r.failed})
    return BlockResult(feats, frames, status, errors, sums, problems)


def _length_notes(built: list[np.ndarray], target: int, frame_shift_ms: float) -> list[str]:
    """A note where most clips built are short of the target length (a dataset's default of
    1024 frames for clips of a few seconds): each is mostly padding, which the model attends to
    and pays for."""
    frames = np.concatenate(built) if built else np.zeros(0)
    short = int((frames < SHORT_FRACTION * target).sum())
    if not frames.size or short * 2 < frames.size:
        return []
    fit = int(np.percentile(frames, 90))
    what = (f"--target-frames {fit} would hold 90% of them whole" if fit < target else
            f"a shorter --target-frames (their median, {int(np.median(frames))}) would store less padding and crop "
            "the longer clips")
    return [(f"{short} of {frames.size} clips are shorter than half of the {target} frames each is stored at "
             f"(median {int(np.median(frames))} frames, {1000 / frame_shift_ms:g} a second; the rest zero-padding): "
             f"{what}, into another --out")]


def _cut_notes(built: list[np.ndarray], target: int) -> list[str]:
    """A variable-length dataset's clips that reached target_frames: cut there, their ends lost."""
    frames = np.concatenate(built) if built else np.zeros(0)
    cut = int((frames >= target).sum())
    if not cut:
        return []
    return [(f"{cut} of the {frames.size} clips built are {target} frames or longer and were stored as their first "
             f"{target} frames, the rest of each left out (a larger --target-frames, into another --out, keeps more)")]


def build_store(cfg: BuildConfig, progress=None, fbank_cfg: FbankConfig | None = None) -> BuildResult:
    """Build (or resume, or add this shard to) the store at cfg.out. Never stops on a bad clip
    unless cfg.strict. `progress(done, total)` is called once the dataset is found and the store
    opened, then after every committed block."""
    t0 = time.perf_counter()
    fbank_cfg = fbank_cfg or FbankConfig()
    spec = prepare(cfg.dataset, cfg.root, **cfg.options)
    spec.check_train_split()  # before any feature is computed, not when finalising
    metas, issues, clips_by_split = _labels_and_issues(spec, cfg.limit)
    if cfg.strict and issues:
        first = issues[0]
        raise StrictError(f"--strict: {len(issues)} metadata problem(s), first: {first['split']}/{first['id']}: "
                          f"{first['reason']}: {first['detail']}")
    missing = {s: ids for s, ids in spec.missing.items() if ids}

    def open_group():
        return st.create_or_open(
            cfg.out, dataset=spec.name, vocabulary=spec.vocabulary, multi_label=spec.multi_label,
            target_frames=spec.target_frames, splits=metas, train_split=spec.train_split,
            fbank=fbank_cfg, block_clips=cfg.block_clips, codec=cfg.codec, missing=missing,
            prepare_issues=[i for i in issues if i["reason"] != "missing"],
            extra_attrs={"notes": spec.notes, "train_split_note": spec.train_split_note,
                         **({"parts": parts} if (parts := _parts_digest(clips_by_split)) else {})},
        )

    group = open_group()
    earlier = _earlier_failures(group, metas, cfg.shard)  # before anything is computed: what failed before
    if cfg.retry_failed and earlier.mine:
        blocks = {split: sorted({int(r) // cfg.block_clips for r in rows}) for split, rows in earlier.mine.items()}
        mark_for_rebuild(cfg.out, RepairPlan(blocks))  # as `c2fdata repair` does: pending, the store unfinalised
        group = open_group()
    todo = _pending_blocks(group, metas, cfg)
    total = sum(b.size for b in todo)
    problems = [dict(i, fatal=False) for i in issues]
    computed = failed = 0
    built_frames = []  # real frames of the clips built now, for the note on a target that does not fit them
    if progress:
        progress(0, total)
    codec = st.store_codec(dict(group.attrs))
    results = clip_results(_clip_tasks(todo, clips_by_split, metas), cfg.workers, fbank_cfg, spec.target_frames,
                           codec.name)
    try:
        for task in todo:
            block = _collect_block(task, metas[task.split].ids, results, spec.target_frames, fbank_cfg.n_mels,
                                   codec.dtype, flag_short=not spec.variable_length)
            problems += block.problems
            if cfg.strict and block.problems:
                first = block.problems[0]
                raise StrictError(f"--strict: {first['split']}/{first['id']}: {first['reason']}: {first['detail']}")
            st.write_block(group, task.split, task.block, block.features, block.frames, block.status,
                           block.errors, block.sums)
            computed += task.size
            failed += block.failed
            built_frames.append(block.frames[block.status == st.OK])
            if progress:
                progress(computed, total)
    finally:
        close_results(results)
    if computed == 0 and group.attrs.get("finalized"):
        stats = group.attrs["stats"]  # a finished store, built again: nothing to do, nothing rewritten
    else:
        stats = st.finalize(group, cfg.out)
    completion = st.completion(group)
    return BuildResult(
        path=str(cfg.out), computed=computed, failed=failed, seconds=time.perf_counter() - t0,
        finalized=stats is not None, stats=stats or group.attrs.get("stats"),
        completion=completion, problems=problems,
        notes=st.store_notes(dict(group.attrs)) + _length_notes(built_frames, spec.target_frames, fbank_cfg.frame_shift_ms)
        + (_cut_notes(built_frames, spec.target_frames) if spec.variable_length else [])
        + _retry_notes(cfg, earlier, group),
    )


@dataclass
class EarlierFailures:
    """Rows of clips that had failed when a build started and that a fixed file could mend (an
    unknown label fails again whatever the file): this shard's, per split, and the other shards'
    count."""

    mine: dict[str, np.ndarray]
    others: int


def _earlier_failures(group, metas: dict[str, st.SplitMeta], shard: tuple[int, int]) -> EarlierFailures:
    k, n = shard
    block = int(group.attrs["block_clips"])
    mine, others = {}, 0
    for split in metas:
        rows = np.flatnonzero(st.read_meta(group, split, "status") == st.FAILED)
        if rows.size:
            errors = st.read_meta(group, split, "errors")
            rows = np.array([r for r in rows if not str(errors[r]).startswith("unknown-label")], np.int64)
        in_mine = (rows // block) % n == k
        if in_mine.any():
            mine[split] = rows[in_mine]
        others += int((~in_mine).sum())
    return EarlierFailures(mine, others)


def _retry_notes(cfg: BuildConfig, earlier: EarlierFailures, group) -> list[str]:
    """What a build run again says of the clips that had failed before it: a re-run computes
    pending blocks only, so without this its report would show none of them, as if mended."""
    notes = []
    mine = sum(r.size for r in earlier.mine.values())
    shard = f" --shard {cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard[1] > 1 else ""
    if cfg.retry_failed:
        still = sum(int((st.read_meta(group, s, "status")[rows] == st.FAILED).sum()) for s, rows in earlier.mine.items())
        notes.append(f"--retry-failed: {mine} clip(s) that had failed were computed again (with their blocks): "
                     f"{mine - still} now built, {still} failed again (the table above says why)" if mine else
                     f"--retry-failed: no clip of{shard or ' this build'}'s blocks had failed; nothing was computed again")
    elif mine:
        notes.append(f"{mine} clip(s) failed in an earlier run of this build and were not tried again "
                     f"(`c2fdata info {cfg.out} --problems` says why); once their files are fixed, the same command "
                     "with --retry-failed computes them again")
    if earlier.others and cfg.retry_failed:  # without it, other shards may still be building: theirs to say
        notes.append(f"{earlier.others} clip(s) that failed before are in other shards' blocks: their own --shard "
                     "with --retry-failed computes them again")
    return notes
