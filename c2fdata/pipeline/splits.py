"""Several splits of one store read as one: AudioSet full = balanced_train + unbalanced_train.

`SplitsReader` serves the concatenation of its parts' clips: clip i of the union is clip
i - offset(k) of part k, parts in the order given. Everything a loader reads of a reader (labels,
frames, features, the store's feature parameters and statistics) comes from the parts, so
sampling weights, shuffling and mixup partners range over the union. `open_reader` gives a
`StoreReader` for one split and a `SplitsReader` for several.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

__all__ = ["SplitsReader", "open_reader", "split_names", "clip_location"]

# What a union of splits shares with its first part: properties of the store, not of a split.
STORE_PROPERTIES = frozenset({"target_frames", "n_mels", "n_classes", "multi_label", "mean", "std", "attrs",
                              "vocabulary", "frame_shift_ms", "format_version", "dataset"})


def split_names(split: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """One split or several as a tuple of names; ValueError for an empty list, an empty name or
    a repeated one (a repeated split would serve its clips twice per epoch)."""
    names = (split,) if isinstance(split, str) else tuple(split)
    if not names or any(not isinstance(s, str) or not s for s in names):
        raise ValueError(f"split must be a split name or a non-empty list of them, got {split!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"split lists a split twice: {list(names)}")
    return names


def open_reader(store, split):
    """A reader of `split` of `store`: one name -> StoreReader, several -> SplitsReader."""
    from c2fdata.reader import StoreReader

    names = split_names(split)
    if len(names) == 1:
        return StoreReader(store, names[0])
    return SplitsReader([StoreReader(store, s) for s in names])


def clip_location(reader, i: int) -> tuple[str, int]:
    """(split, store row) of clip i of a StoreReader or a SplitsReader."""
    if isinstance(reader, SplitsReader):
        return reader.where(i)
    return reader.split, int(reader.rows[i])


class SplitsReader:
    """The clips of several `StoreReader`s of one store, one after the other (picklable: each
    part reopens its store lazily in a worker process)."""

    def __init__(self, parts: list):
        if not parts:
            raise ValueError("SplitsReader needs at least one split")
        paths = {p.path for p in parts}
        if len(paths) != 1:
            raise ValueError(f"splits read together must come from one store, got {sorted(paths)}")
        self.parts = list(parts)
        self.path = parts[0].path
        self.split = "+".join(p.split for p in parts)  # for messages and the run's records

    @cached_property
    def offsets(self) -> np.ndarray:
        """(parts + 1,) first union index of each part, then the total."""
        return np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def locate(self, i: int) -> tuple[object, int]:
        """(part, index in the part) of union clip i (negative i counts from the end)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip {i} out of range for {n} clips in {self.path}:{self.split}")
        i = int(i) % n
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k], i - int(self.offsets[k])

    def where(self, i: int) -> tuple[str, int]:
        """(split, store row) of union clip i: where a corrupt clip is reported."""
        part, j = self.locate(i)
        return part.split, int(part.rows[j])

    # -- what a loader reads ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        part, j = self.locate(i)
        return part[j]

    def features(self, i: int) -> np.ndarray:
        part, j = self.locate(i)
        return part.features(j)

    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels() for p in self.parts])

    def frames(self) -> np.ndarray:
        return np.concatenate([p.frames() for p in self.parts])

    @property
    def ids(self) -> list[str]:
        return [clip_id for p in self.parts for clip_id in p.ids]

    # -- the store's own properties: one store, so the same for every part ----------------------
    def __getattr__(self, name: str):
        if name not in STORE_PROPERTIES:  # per-split things (rows, ...) have no union meaning
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.parts[0], name)

    def __repr__(self) -> str:
        return f"SplitsReader({self.path!r}, {[p.split for p in self.parts]})"
