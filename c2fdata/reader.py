"""Picklable, lazily-opened reader of one split of a c2f store: the pipelines' only input."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from c2fdata.shard_io import ShardedClipReader
from c2fdata.store import FAILED, OK, StoreFormatError, open_store
from c2fdata.vocab import Vocabulary

__all__ = ["StoreReader", "StoreFormatError"]


class StoreReader:
    """Clip i of a split: (features (T, F) float16, real frames, label).

    Only clips whose build succeeded are served; `rows` maps reader indices to store rows.
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
        return open_store(self.path, mode="r")

    @cached_property
    def attrs(self) -> dict:
        return dict(self._group.attrs)

    @cached_property
    def _features(self):
        """A callable row -> (T, F): the direct shard reader where the layout allows, else zarr."""
        array_dir = Path(self.path) / self.split / "features"
        if ShardedClipReader.supports(array_dir):
            return ShardedClipReader(array_dir).read
        array = self._group[self.split]["features"]
        return array.__getitem__

    @cached_property
    def rows(self) -> np.ndarray:
        status = self._group[self.split]["status"][:]
        return np.flatnonzero(status == OK)

    # -- metadata ------------------------------------------------------------------------------
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
        return [str(x) for x in self._group[self.split]["ids"][:][self.rows]]

    @cached_property
    def _labels(self) -> np.ndarray:
        lab = self._group[self.split]["labels"][:][self.rows]
        return lab.astype(np.float32) if self.multi_label else lab.astype(np.int64)

    @cached_property
    def _frames(self) -> np.ndarray:
        return self._group[self.split]["frames"][:][self.rows].astype(np.int64)

    def labels(self) -> np.ndarray:
        """(N, K) float32 multi-hot, or (N,) int64 class indices."""
        return self._labels

    def frames(self) -> np.ndarray:
        return self._frames

    def failed(self) -> int:
        return int((self._group[self.split]["status"][:] == FAILED).sum())

    # -- data ----------------------------------------------------------------------------------
    def features(self, i: int) -> np.ndarray:
        """(T, F) float16 of clip i (zero-padded beyond frames(i))."""
        return self._features(int(self.rows[i]))

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
