"""Picklable, lazily-opened reader of one split of a c2f store: the pipelines' only input."""

from __future__ import annotations

import os
import shlex
import weakref
from functools import cached_property
from pathlib import Path

import numpy as np

from c2fdata.shard_io import CorruptClipError, ShardedClipReader
from c2fdata.storage import as_location
from c2fdata.store import (
    FAILED,
    OK,
    PENDING,
    DamagedStoreError,
    StoreFormatError,
    check_documents,
    open_store,
    read_meta,
    write_once_missing,
)
from c2fdata.vocab import Vocabulary

__all__ = ["StoreReader", "StoreFormatError", "CorruptClipError", "rebuild_hint"]

# Readers whose store handles are open in this process. A forked child (a torch DataLoader
# worker, a forked DALI reader) inherits them, but an s3:// handle is bound to the parent's event
# loop, which zarr and fsspec replace in the child: used there, it fails ("attached to a
# different loop"). So the child forgets them and reopens on first use, as after unpickling.
_OPEN_READERS: weakref.WeakSet = weakref.WeakSet()
_HANDLES = ("_group", "_features")


def _forget_handles_after_fork() -> None:
    for reader in list(_OPEN_READERS):
        for name in _HANDLES:
            reader.__dict__.pop(name, None)
    _OPEN_READERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_handles_after_fork)


def rebuild_hint(path: str | Path, split: str, row: int, block_clips: int, n_rows: int) -> str:
    """How to rebuild the block holding a damaged clip (or metadata chunk) at `row`: `c2fdata
    repair` marks it (the build recomputes blocks whose clips are pending), then the build."""
    block = int(row) // int(block_clips)
    start, end = block * int(block_clips), min((block + 1) * int(block_clips), int(n_rows))
    return (
        f"rebuild block {block} of split {split!r} (rows {start}..{end - 1}): "
        f"`c2fdata repair {shlex.quote(str(path))} --block {shlex.quote(f'{split}:{block}')}` marks it for "
        f"rebuilding (its shard file deleted, its clips pending), then re-run the same `c2fdata build ...` "
        f"command: it recomputes pending blocks from the audio and finalises the store again (with "
        f"--shard K/N, on the builder with K = {block} mod N)"
    )


class StoreReader:
    """Clip i of a split: (features (T, F) float16, real frames, label).

    Only clips whose build succeeded are served; `rows` maps reader indices to store rows.
    Every read checks the clip's crc32c: a corrupt clip raises `CorruptClipError` naming the
    store, split, row and id, and how to rebuild it; it never returns data.
    Pickling sends the path and split only: each worker process opens the store itself on first
    use, so a reader is cheap to hand to DataLoader or DALI workers (fork or spawn).
    """

    def __init__(self, path: str | Path, split: str, *, allow_unfinalized: bool = False):
        self.path = str(path)
        self.split = split
        self.allow_unfinalized = allow_unfinalized
        self._check()

    def _check(self) -> None:
        attrs = self.attrs
        if self.split not in attrs["splits"]:
            raise ValueError(f"{self.path}: no split {self.split!r}; splits are {sorted(attrs['splits'])}")
        check_documents(self.path, [self.split])  # zarr's own error would name no file
        if not attrs.get("finalized") and not self.allow_unfinalized:
            raise StoreFormatError(
                f"{self.path} is not finalised (a build is unfinished or shards are missing); "
                f"finish it with `c2fdata build ...` (same command) or `c2fdata finalize {self.path}`"
            )

    def __getstate__(self):
        return {"path": self.path, "split": self.split, "allow_unfinalized": self.allow_unfinalized}

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- store handles, opened once per process ------------------------------------------------
    @cached_property
    def _group(self):
        _OPEN_READERS.add(self)
        return open_store(self.path, mode="r")

    @cached_property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    @cached_property
    def _features(self):
        """A callable row -> (T, F), crc32c checked: the direct shard reader where the layout
        allows, else zarr (whose crc32c codec raises ValueError on a mismatch, in the clip or in
        the shard index: made a CorruptClipError here)."""
        _OPEN_READERS.add(self)
        array_dir = as_location(self.path).child(self.split, "features")
        if ShardedClipReader.supports(array_dir):
            return ShardedClipReader(array_dir).read
        array = self._group[self.split]["features"]
        block_clips = int(self.attrs["block_clips"])

        def read(row: int) -> np.ndarray:
            try:
                x = np.asarray(array[row]).astype(np.float16, copy=False)
            except ValueError as err:  # the row is in range: its stored bytes do not decode
                raise CorruptClipError(f"{array_dir.url}: clip {row}: {err}", row=row) from err
            # zarr reads a missing shard as zeros; no served clip is all zeros, so only then look
            shard = array_dir.child("c", str(row // block_clips), "0", "0")
            if not x.any() and not shard.exists():
                raise CorruptClipError(f"{shard.url}: shard file missing (deleted, or not copied with "
                                       "the store)", row=row)
            return x

        return read

    @cached_property
    def rows(self) -> np.ndarray:
        status = self._meta("status")
        if self.attrs.get("finalized"):
            self._check_complete(status)
        return np.flatnonzero(status == OK)

    def _check_complete(self, status: np.ndarray) -> None:
        """A finalised store has every clip committed and every metadata chunk file: zarr reads
        a lost one as zeros (pending clips, class 0, no frames), which must not be served."""
        pending = np.flatnonzero(status == PENDING)
        if pending.size:
            blocks = sorted({int(r) // int(self.attrs["block_clips"]) for r in pending})
            raise DamagedStoreError(
                f"{self.path}: split {self.split!r} is finalised, yet {pending.size} of its clips read as pending "
                f"(blocks {', '.join(map(str, blocks[:10]))}{' ...' if len(blocks) > 10 else ''}): their status "
                f"chunks are lost. `c2fdata verify {self.path}` lists the damage; `c2fdata repair {self.path}` "
                f"marks those blocks for the same build command to recompute")
        # a lost status chunk reads as pending (above), a lost frames chunk as OK clips without
        # frames (_frames); the write-once arrays need a count of their chunk files (one listing
        # of a few hundred files for AudioSet, where status and frames hold tens of thousands)
        if lost := write_once_missing(self._group, self.split):
            name, missing = next(iter(lost.items()))
            raise DamagedStoreError(
                f"{self.path}: split {self.split!r}: {missing} chunk file(s) of its {name} are missing (deleted, "
                f"or not copied with the store); zarr would read them as zeros. `c2fdata verify {self.path}` "
                f"says which and what to do")

    # -- metadata ------------------------------------------------------------------------------
    def _meta(self, name: str) -> np.ndarray:
        """A metadata array of the split, whole, its chunks' crc32c checked (DamagedStoreError)."""
        return read_meta(self._group, self.split, name, self.path)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def target_frames(self) -> int:
        return int(self.attrs["target_frames"])

    @property
    def n_mels(self) -> int:
        return int(self.attrs["features"]["n_mels"])

    @property
    def frame_shift_ms(self) -> float:
        return float(self.attrs["features"]["frame_shift_ms"])

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_list(self.attrs["vocabulary"])

    @property
    def n_classes(self) -> int:
        return len(self.attrs["vocabulary"])

    @property
    def multi_label(self) -> bool:
        return bool(self.attrs["multi_label"])

    @property
    def mean(self) -> float:
        return float(self.attrs["stats"]["mean"])

    @property
    def std(self) -> float:
        return float(self.attrs["stats"]["std"])

    @property
    def format_version(self) -> int:
        return int(self.attrs["format_version"])

    @property
    def dataset(self) -> str:
        return str(self.attrs["dataset"])

    @cached_property
    def ids(self) -> list[str]:
        return [str(x) for x in self._meta("ids")[self.rows]]

    @cached_property
    def _labels(self) -> np.ndarray:
        lab = self._meta("labels")[self.rows]
        return lab.astype(np.float32) if self.multi_label else lab.astype(np.int64)

    @cached_property
    def _frames(self) -> np.ndarray:
        frames = self._meta("frames")[self.rows].astype(np.int64)
        if frames.size and frames.min() <= 0:  # a served clip has frames: zeros are a lost chunk
            row = int(self.rows[int(np.argmin(frames))])
            raise DamagedStoreError(f"{self.path}: split {self.split!r}, row {row}: no frames recorded for a clip "
                                    f"that built fine (its frames chunk lost?); `c2fdata verify {self.path}` says "
                                    f"what to do")
        return frames

    def labels(self) -> np.ndarray:
        """(N, K) float32 multi-hot, or (N,) int64 class indices."""
        return self._labels

    def frames(self) -> np.ndarray:
        return self._frames

    def failed(self) -> int:
        return int((self._meta("status") == FAILED).sum())

    # -- data ----------------------------------------------------------------------------------
    def features(self, i: int) -> np.ndarray:
        """(T, F) float16 of clip i (zero-padded beyond frames(i)), whatever the store's codec;
        CorruptClipError if its stored bytes fail their checksum or its shard is missing."""
        row = int(self.rows[i])
        try:
            return self._features(row)
        except CorruptClipError as err:
            raise self._corrupt(int(i) % len(self), row, err) from err

    def _corrupt(self, i: int, row: int, err: CorruptClipError) -> CorruptClipError:
        ids = self.__dict__.get("ids")  # the cached list if there is one, else just this id
        try:
            clip_id = ids[i] if ids is not None else str(self._group[self.split]["ids"][row])
        except (ValueError, RuntimeError):  # its ids chunk is damaged too: the row still says which clip
            clip_id = "(unreadable)"
        n_rows = self.attrs["splits"][self.split]["clips"]
        hint = rebuild_hint(self.path, self.split, row, self.attrs["block_clips"], n_rows)
        return CorruptClipError(
            f"{self.path}: corrupt clip in split {self.split!r}, row {row} (clip {i} of this reader, "
            f"id {clip_id!r}): {err}. Its data is not served: run `c2fdata verify {self.path}` to "
            f"list every corrupt clip, then {hint}",
            path=self.path, split=self.split, row=row, clip_id=clip_id,
        )

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips in {self.path}:{self.split}")
        i = int(i) % len(self)
        return self.features(i), int(self._frames[i]), self._labels[i]

    def read_batch(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        feats = np.stack([self.features(i) for i in idx])
        return feats, self._frames[idx], self._labels[idx]

    def __repr__(self) -> str:
        return f"StoreReader({self.path!r}, {self.split!r})"
