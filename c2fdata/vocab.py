"""Label vocabularies: index <-> id (e.g. an AudioSet mid) <-> display name."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Vocabulary:
    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.ids) != len(self.names):
            raise ValueError("ids and names must have the same length")
        if len(set(self.ids)) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise ValueError(f"duplicate label ids in vocabulary: {dup[:5]}")
        if not self.ids:
            raise ValueError("empty vocabulary")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, label: str) -> int:
        """Index of a label given by id or by display name; KeyError if unknown."""
        lookup = self._lookup()
        if label not in lookup:
            raise KeyError(label)
        return lookup[label]

    def __contains__(self, label: str) -> bool:
        return label in self._lookup()

    def _lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {n: i for i, n in enumerate(self.names)}
            cache.update({m: i for i, m in enumerate(self.ids)})
            object.__setattr__(self, "_cache", cache)
        return cache

    @classmethod
    def from_names(cls, names) -> "Vocabulary":
        names = tuple(names)
        return cls(ids=names, names=names)

    @classmethod
    def from_csv(cls, path: str | Path) -> "Vocabulary":
        """AST's `class_labels_indices.csv` format: index,mid,display_name."""
        with open(path, newline="") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
        if [int(r["index"]) for r in rows] != list(range(len(rows))):
            raise ValueError(f"{path}: indices are not 0..N-1")
        return cls(ids=tuple(r["mid"] for r in rows), names=tuple(r["display_name"] for r in rows))

    @classmethod
    def builtin(cls, name: str) -> "Vocabulary":
        """A vocabulary shipped with c2f: 'audioset' (527), 'esc50' (50), 'speechcommands' (35)."""
        res = resources.files("c2fdata") / "resources" / f"{name}_class_labels_indices.csv"
        if not res.is_file():
            raise ValueError(f"no built-in vocabulary {name!r}")
        with resources.as_file(res) as p:
            return cls.from_csv(p)

    def to_list(self) -> list[dict]:
        return [{"index": i, "id": m, "name": n} for i, (m, n) in enumerate(zip(self.ids, self.names))]

    @classmethod
    def from_list(cls, rows: list[dict]) -> "Vocabulary":
        return cls(ids=tuple(r["id"] for r in rows), names=tuple(r["name"] for r in rows))
