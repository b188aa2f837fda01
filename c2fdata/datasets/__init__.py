"""Dataset adapters: metadata + audio on disk -> DatasetSpec. One module per dataset."""

from __future__ import annotations

import importlib
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource, untrained_note
from c2fdata.vocab import Vocabulary

# name -> (module, function); imported lazily so that one adapter's optional needs
# (e.g. the synthesiser behind `instruments`) never break the others.
ADAPTERS = {
    "audioset": ("c2fdata.datasets.audioset", "prepare_audioset"),
    "vggsound": ("c2fdata.datasets.vggsound", "prepare_vggsound"),
    "esc50": ("c2fdata.datasets.esc50", "prepare_esc50"),
    "voxceleb": ("c2fdata.datasets.voxceleb", "prepare_voxceleb"),
    "folder": ("c2fdata.datasets.folder", "prepare_folder"),
    "manifest": ("c2fdata.datasets.manifest", "prepare_manifest"),
    "instruments": ("c2fdata.datasets.instruments", "prepare_instruments"),
}
NEEDS_ROOT = {"audioset", "vggsound", "esc50", "voxceleb", "folder", "manifest"}


# Datasets whose classes come from the data found (folders, CSV rows): one without a training
# clip is worth a note, and --classes may fix them instead. ESC-50's and AudioSet's class lists
# are their metadata's.
CLASSES_FROM_DATA = {"folder", "manifest", "vggsound", "voxceleb"}
DEFAULT_STORE = "stores/{dataset}"  # where `c2fdata build` writes without --out


def build_command(store: str, dataset: str | None = None, fold: int | str | None = None) -> str:
    """The `c2fdata build` command that writes a store at `store`, for errors about a missing one.
    Its dataset, unless given, is read off the store's name where that is a dataset's (as the
    default stores/DATASET is; "esc50-fold2" too); else DATASET stands in. ESC-50 as its recipe
    reads it, unless `fold` is given: stores/esc50 with every fold its own split (--fold 0),
    stores/esc50-foldK with fold K held out."""
    name = str(store).rstrip("/").rsplit("/", 1)[-1]
    dataset = dataset or next((d for d in sorted(ADAPTERS, key=len, reverse=True)
                               if name == d or name.startswith(d + "-")), None)
    words = ["c2fdata build --dataset", dataset or "DATASET"]
    if dataset is None or dataset in NEEDS_ROOT:
        words.append("--root DIR")
    if fold is not None:
        words.append(f"--fold {fold}")
    elif dataset == "esc50":  # the recipes' convention: stores/esc50 holds every fold (--fold 0), esc50-foldK one
        fold = name[len("esc50-fold"):] if name.startswith("esc50-fold") else "0"
        words.append(f"--fold {fold if fold.isdigit() else 0}")
    if store != DEFAULT_STORE.format(dataset=dataset):
        words.append(f"--out {store}")
    return " ".join(words)


def missing_store(store: str) -> str:
    """What to say of a store that is not there: where a relative path was looked for (the
    current directory, which a recipe's `store` is taken from, not the recipe file's folder)
    and the command that builds it."""
    where = ""
    if "://" not in str(store) and not Path(store).is_absolute():
        where = f" (looked for at {Path(store).absolute()}: a relative store is taken from the current directory)"
    return f"store {store} not found{where}; build it first: `{build_command(store)}`"


def fixed_classes(source: str | Path) -> Vocabulary:
    """The classes of another store (a folder holding zarr.json: its vocabulary, ids and names),
    or of a text file (one class per line; blank lines and lines starting with # skipped): for a
    store that must have a model's classes whatever its clips hold (a test set lacking one, a
    split built apart). A clip whose label is not among them fails as an unknown label."""
    from c2fdata.store import open_store

    path = Path(source)
    if (path / "zarr.json").is_file():
        return Vocabulary.from_list(open_store(path).attrs["vocabulary"])
    if not path.is_file():
        raise ValueError(f"--classes {source}: neither a store nor a file of class names (one per line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"--classes {source}: no class in it (one per line)")
    return Vocabulary.from_names(names)


def prepare(name: str, root=None, *, train_split: str | None = None, classes: str | Path | None = None,
            **options) -> DatasetSpec:
    """The dataset as its adapter finds it under root. `train_split` names the training split
    (its statistics normalise the store, and recipes train on it unless they name another),
    where the adapter's choice is not wanted; a build checks it (DatasetSpec.check_train_split).
    `classes`: the classes, in order, instead of those found (see fixed_classes)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    if classes is not None and name not in CLASSES_FROM_DATA:
        raise ValueError(f"--classes is for datasets whose classes come from the data found "
                         f"({', '.join(sorted(CLASSES_FROM_DATA))}); {name}'s are fixed by its metadata")
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
    if classes is not None:
        spec.vocabulary = fixed_classes(classes)
    if name in CLASSES_FROM_DATA and classes is None:  # given classes are a model's: this store may only test it
        spec.notes += untrained_note(spec)
    return spec


__all__ = ["ADAPTERS", "Clip", "DatasetSpec", "FileSource", "build_command", "missing_store", "prepare"]
