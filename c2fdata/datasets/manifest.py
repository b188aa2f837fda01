"""A manifest of one's own: ROOT/manifest.csv listing each clip's file, label(s) and split.

For data that is not laid out as a folder tree, or that another tool lists (a lhotse CutSet, a
CSV from a labelling tool, Kinetics-Sounds' own CSVs turned into one): no file is moved or
copied. The CSV has a header row naming its columns, in any order:

- `path`: the audio file, relative to ROOT or absolute (whole files: a segment of a longer
  recording must be cut into its own file first);
- `label` (one class per clip: single-label) or `labels` (classes separated by `;`: multi-label);
- `split`: the split the clip belongs to (`train`, `eval`, ...);
- `id` (optional): the clip's id, unique in its split (default: `path` without its extension).

Classes are the sorted set of the labels. The statistics come from the split named "train" (as
for folder trees: in any case, or the one name holding "train"), or the one --train-split
names. A listed file that is not there is counted as missing (reported, never fatal); a file c2f
cannot decode (.m4a, .mp4, ...) is named in a note; rows without a path, label or split are
errors naming the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from c2fdata.datasets.base import (
    AUDIO_EXTENSIONS,
    UNDECODABLE_EXTENSIONS,
    AudioScan,
    Clip,
    DatasetSpec,
    FileSource,
    guess_train_split,
)
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024
MANIFEST = "manifest.csv"
SHOWN = 5  # rows named in an error


def prepare_manifest(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: --dataset manifest reads ROOT/{MANIFEST}, a CSV with a header row "
                         "path,label,split (or labels, several classes separated by ';'; an id column optional)")
    rows, columns = _read(path)
    multi_label = "labels" in columns
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    scan = AudioScan()
    bad: list[str] = []
    for line, row in rows:
        where, split = row.get("path", "").strip(), row.get("split", "").strip()
        labels = tuple(x.strip() for x in row.get("labels" if multi_label else "label", "").split(";") if x.strip())
        if not where or not split or not labels or (not multi_label and len(labels) > 1):
            bad.append(f"line {line}: {dict(row)}")
            continue
        file = Path(where) if Path(where).is_absolute() else root / where
        clip_id = row.get("id", "").strip() or str(Path(where).with_suffix(""))
        ext = file.suffix.lower()
        if ext in UNDECODABLE_EXTENSIONS:
            scan.undecodable.append(file)
        elif not file.is_file():
            missing.setdefault(split, []).append(clip_id)
        elif ext not in AUDIO_EXTENSIONS:
            bad.append(f"line {line}: {where} is not an audio file c2f reads ({', '.join(AUDIO_EXTENSIONS)})")
        else:
            clips.setdefault(split, []).append(Clip(clip_id, split, labels, FileSource(str(file))))
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise ValueError(f"{path}: {len(bad)} row(s) lack a path, a label or a split, or name more than one class "
                         f"in a `label` column (use `labels` for several, separated by ';'): "
                         f"{'; '.join(bad[:SHOWN])}{more}")
    if not clips:
        found = sum(map(len, missing.values()))
        raise ValueError(f"{path}: none of its {len(rows)} clips was found ({found} listed files are not there; "
                         f"relative paths are taken from {root})" + "".join(f". {n}" for n in scan.notes(root)))
    train, guessed = guess_train_split(clips)
    classes = sorted({label for split in clips.values() for c in split for label in c.labels})
    notes = scan.notes(root)
    untrained = sorted(set(classes) - {label for c in clips.get(train, []) for label in c.labels})
    if untrained:
        notes.append(f"{len(untrained)} class(es) have no clip in the training split {train!r}, so a model cannot "
                     f"learn them: {', '.join(untrained[:10])}{' ...' if len(untrained) > 10 else ''}")
    return DatasetSpec(
        name="manifest", vocabulary=Vocabulary.from_names(classes), multi_label=multi_label,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train, missing=missing,
        notes=notes, train_split_note=guessed,
    )


def _read(path: Path) -> tuple[list[tuple[int, dict[str, str]]], set[str]]:
    """The rows (with their line numbers) and the column names; ValueError naming what the header
    lacks. A UTF-8 byte-order mark (spreadsheets write one) is not part of the first name."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = {c.strip() for c in reader.fieldnames or ()}
        need = {"path", "split"} | ({"labels"} if "labels" in columns else {"label"})
        if lacking := sorted(need - columns):
            raise ValueError(f"{path}: its header row ({', '.join(reader.fieldnames or ()) or 'empty'}) lacks "
                             f"{', '.join(lacking)}; the columns are path, label (or labels), split and, optional, id")
        if {"label", "labels"} <= columns:
            raise ValueError(f"{path}: both a label and a labels column: keep one (label: one class per clip; "
                             "labels: several, separated by ';')")
        rows = [(reader.line_num, {k.strip(): (v or "") for k, v in row.items() if k is not None})
                for row in reader]
    return rows, columns
