"""AudioSet: the official segment CSVs (or AST's data json) plus a folder of downloaded clips.

Layout under --root (any subset of the metadata files; audio anywhere below root)::

    ROOT/balanced_train_segments.csv     -> split "balanced_train"
    ROOT/unbalanced_train_segments.csv   -> split "unbalanced_train"
    ROOT/eval_segments.csv               -> split "eval"
    ROOT/<name>.json                     -> split "<name>" (AST's {"data": [{"wav", "labels"}]})
    ROOT/**/<clip>.{wav,flac,ogg,mp3,...}

Clip files are matched by the common namings: `YTID_START.ext` (AST: `--PJHxphWEs_30.000.flac`),
`YTID_STARTms_ENDms.ext`, `YYTID.ext` (PANNs' downloader), `YTID.ext`. Clips listed but absent
on disk are counted and listed in the store's report, never fatal: every AudioSet copy misses
some videos. Labels: the 527-class ontology shipped with c2f, multi-label.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource, index_audio
from c2fdata.vocab import Vocabulary

CSV_SPLITS = {
    "balanced_train_segments.csv": "balanced_train",
    "unbalanced_train_segments.csv": "unbalanced_train",
    "eval_segments.csv": "eval",
}
TARGET_FRAMES = 1024  # 10 s at 10 ms hop (AST)


def read_segments_csv(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """(ytid, start s, end s, [mid, ...]) rows of an official segments CSV.

    Three '#' header lines, ', ' separators, the label list quoted."""
    rows = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 fields (YTID, start, end, labels), got {row}")
            ytid, start, end, labels = row
            rows.append((ytid, float(start), float(end), [m for m in labels.split(",") if m]))
    return rows


def candidate_stems(ytid: str, start: float, end: float) -> list[str]:
    return [
        f"{ytid}_{start:.3f}", f"{ytid}_{start:.1f}", f"{ytid}_{int(start)}",
        f"{ytid}_{int(start * 1000)}_{int(end * 1000)}", f"Y{ytid}", ytid,
    ]


def prepare_audioset(root, *, train_split: str | None = None, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder")
    audio = index_audio(root)
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    for filename, split in CSV_SPLITS.items():
        path = root / filename
        if not path.is_file():
            continue
        found, lost = [], []
        for ytid, start, end, labels in read_segments_csv(path):
            clip_id = f"{ytid}_{start:.3f}"
            hit = next((audio[s] for s in candidate_stems(ytid, start, end) if s in audio), None)
            if hit is None:
                lost.append(clip_id)
            else:
                found.append(Clip(clip_id, split, tuple(labels), FileSource(str(hit))))
        clips[split], missing[split] = found, lost
    for path in sorted(root.glob("*.json")):
        split = path.stem
        try:
            entries = json.loads(path.read_text())["data"]
        except (ValueError, KeyError, TypeError):
            continue  # not an AST data file
        found, lost = [], []
        for e in entries:
            wav = Path(e["wav"])
            if not wav.is_absolute():
                wav = root / wav
            hit = wav if wav.is_file() else audio.get(wav.stem)
            if hit is None:
                lost.append(wav.stem)
                continue
            labels = tuple(m for m in e["labels"].split(",") if m)
            found.append(Clip(wav.stem, split, labels, FileSource(str(hit))))
        clips[split], missing[split] = found, lost
    if not clips:
        raise ValueError(
            f"{root}: no AudioSet metadata found; expected one of {', '.join(CSV_SPLITS)} "
            "or an AST data json ({\"data\": [{\"wav\": ..., \"labels\": ...}]})"
        )
    if train_split is None:
        train_split = next((s for s in ("unbalanced_train", "balanced_train", "train") if s in clips), None)
        train_split = train_split or sorted(clips)[0]
    return DatasetSpec(
        name="audioset", vocabulary=Vocabulary.builtin("audioset"), multi_label=True,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train_split,
        missing=missing,
    )
