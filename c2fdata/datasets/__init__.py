"""Dataset adapters: metadata + audio on disk -> DatasetSpec. One module per dataset."""

from __future__ import annotations

import importlib
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource

# name -> (module, function); imported lazily so that one adapter's optional needs
# (e.g. the synthesiser behind `instruments`) never break the others.
ADAPTERS = {
    "audioset": ("c2fdata.datasets.audioset", "prepare_audioset"),
    "vggsound": ("c2fdata.datasets.vggsound", "prepare_vggsound"),
    "esc50": ("c2fdata.datasets.esc50", "prepare_esc50"),
    "voxceleb": ("c2fdata.datasets.voxceleb", "prepare_voxceleb"),
    "folder": ("c2fdata.datasets.folder", "prepare_folder"),
    "instruments": ("c2fdata.datasets.instruments", "prepare_instruments"),
}
NEEDS_ROOT = {"audioset", "vggsound", "esc50", "voxceleb", "folder"}


def prepare(name: str, root=None, *, train_split: str | None = None, **options) -> DatasetSpec:
    """The dataset as its adapter finds it under root. `train_split` names the training split
    (its statistics normalise the store, and recipes train on it unless they name another),
    where the adapter's choice is not wanted; a build checks it (DatasetSpec.check_train_split)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    if name in NEEDS_ROOT and root is None:
        raise ValueError(f"dataset {name!r} needs --root (the folder holding its metadata and audio)")
    if name in NEEDS_ROOT and not Path(root).is_dir():
        # checked here, once for every adapter, so that no adapter reports a file missing under
        # a root that does not exist
        raise ValueError(
            f"--root {root}: no such folder; point --root at the folder holding the {name} "
            "metadata and audio (the layout is in the README)"
        )
    module, func = ADAPTERS[name]
    spec = getattr(importlib.import_module(module), func)(root, **options)
    if train_split is not None:
        spec.train_split, spec.train_split_note = train_split, ""
    return spec


__all__ = ["ADAPTERS", "Clip", "DatasetSpec", "FileSource", "prepare"]
