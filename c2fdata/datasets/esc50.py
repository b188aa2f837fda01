"""ESC-50: ROOT/meta/esc50.csv (filename,fold,target,category,...) and ROOT/audio/*.wav.

Two layouts of the same clips (AST's protocol holds out each of the five folds once):

- `fold=K` (1..5): fold K is the "eval" split and the other four "train", the store of one
  held-out fold (`c2ftrain run`);
- `fold=0`: every fold its own split, "fold1" .. "fold5", each clip stored once, so one store
  serves the whole cross-validation (`c2ftrain cv` with `[cv] split = "fold{fold}"` trains on
  four fold splits and evaluates on the fifth). A store records one train split, the one its
  normalisation statistics come from: "fold1" here (400 clips, as good an estimate of ESC-50's
  mean and std as any fold; recipes with fixed norm_mean/norm_std, as esc50's, never read them).

50 classes in the order of the `target` column, 5-s clips -> 512 frames."""

from __future__ import annotations

import csv
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 512
FOLDS = 5
ALL_FOLDS = 0  # fold=0: the fold splits, no held-out fold
STATS_SPLIT = "fold1"  # the train split a fold=0 store records (module docstring)


def fold_split(fold: int) -> str:
    """The split of fold K in a fold=0 store."""
    return f"fold{fold}"


def prepare_esc50(root, *, fold: int = 1, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: ESC-50 needs meta/esc50.csv and audio/ under --root")
    fold = int(fold)
    if fold not in range(FOLDS + 1):
        raise ValueError(f"--fold must be 1..{FOLDS} (that fold as eval, the others as train) or "
                         f"{ALL_FOLDS} (every fold its own split, fold1..fold{FOLDS}), got {fold}")
    with open(meta, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM some editors add
        rows = list(csv.DictReader(f))
    columns = {"filename", "fold", "target", "category"}
    if rows and not columns <= set(rows[0]):
        raise ValueError(f"{meta}: needs the columns {', '.join(sorted(columns))} (ESC-50's header line); "
                         f"found {', '.join(rows[0])}")
    # The 50 classes ship with c2f (AST's esc_class_labels_indices.csv, index = ESC-50 target),
    # so a partial copy of the dataset still gets the full, standard label space.
    builtin = Vocabulary.builtin("esc50")
    vocab = Vocabulary.from_names(builtin.names)
    for r in rows:
        t = int(r["target"])
        if not 0 <= t < len(vocab) or vocab.names[t] != r["category"]:
            raise ValueError(f"{meta}: {r['filename']}: target {t} / category {r['category']!r} do not "
                             "match ESC-50's class list; is this the original meta/esc50.csv?")
        if int(r["fold"]) not in range(1, FOLDS + 1):
            raise ValueError(f"{meta}: {r['filename']}: fold {r['fold']} is not one of ESC-50's 1..{FOLDS}")
    if fold == ALL_FOLDS:
        split_of = {k: fold_split(k) for k in range(1, FOLDS + 1)}
        splits, train_split = list(split_of.values()), STATS_SPLIT
        notes = [f"every fold its own split, fold1..fold{FOLDS}; statistics from {STATS_SPLIT}"]
    else:
        split_of = {k: "eval" if k == fold else "train" for k in range(1, FOLDS + 1)}
        splits, train_split, notes = ["train", "eval"], "train", [f"eval = fold {fold}"]
    clips: dict[str, list[Clip]] = {s: [] for s in splits}
    missing: dict[str, list[str]] = {}
    for r in rows:
        split = split_of[int(r["fold"])]
        path = root / "audio" / r["filename"]
        if not path.is_file():
            missing.setdefault(split, []).append(r["filename"])
            continue
        clips[split].append(Clip(Path(r["filename"]).stem, split, (r["category"],), FileSource(str(path))))
    return DatasetSpec(
        name="esc50", vocabulary=vocab, multi_label=False, target_frames=target_frames or TARGET_FRAMES,
        clips=clips, train_split=train_split, missing=missing, notes=notes,
    )
