"""ESC-50: ROOT/meta/esc50.csv (filename,fold,target,category,...) and ROOT/audio/*.wav.

`fold=K` (1..5) makes fold K the "eval" split and the other four "train" (AST's protocol runs
all five). 50 classes in the order of the `target` column, 5-s clips -> 512 frames."""

from __future__ import annotations

import csv
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 512


def prepare_esc50(root, *, fold: int = 1, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: ESC-50 needs meta/esc50.csv and audio/ under --root")
    fold = int(fold)
    if fold not in range(1, 6):
        raise ValueError(f"--fold must be 1..5 (ESC-50 has five folds), got {fold}")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    # The 50 classes ship with c2f (AST's esc_class_labels_indices.csv, index = ESC-50 target),
    # so a partial copy of the dataset still gets the full, standard label space.
    builtin = Vocabulary.builtin("esc50")
    vocab = Vocabulary.from_names(builtin.names)
    for r in rows:
        t = int(r["target"])
        if not 0 <= t < len(vocab) or vocab.names[t] != r["category"]:
            raise ValueError(f"{meta}: {r['filename']}: target {t} / category {r['category']!r} do not "
                             "match ESC-50's class list; is this the original meta/esc50.csv?")
    clips: dict[str, list[Clip]] = {"train": [], "eval": []}
    missing: dict[str, list[str]] = {}
    for r in rows:
        split = "eval" if int(r["fold"]) == fold else "train"
        path = root / "audio" / r["filename"]
        if not path.is_file():
            missing.setdefault(split, []).append(r["filename"])
            continue
        clips[split].append(Clip(Path(r["filename"]).stem, split, (r["category"],), FileSource(str(path))))
    return DatasetSpec(
        name="esc50", vocabulary=vocab, multi_label=False, target_frames=target_frames or TARGET_FRAMES,
        clips=clips, train_split="train", missing=missing, notes=[f"eval = fold {fold}"],
    )
