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
from pathlib import Path, PurePosixPath, PureWindowsPath

from c2fdata.datasets.base import (
    Clip,
    DatasetSpec,
    FileSource,
    guess_train_split,
    index_audio,
)
from c2fdata.vocab import Vocabulary

CSV_SPLITS = {
    "balanced_train_segments.csv": "balanced_train",
    "unbalanced_train_segments.csv": "unbalanced_train",
    "eval_segments.csv": "eval",
}
TARGET_FRAMES = 1024  # 10 s at 10 ms hop (AST)
SEGMENT_SECONDS = 10.0  # every AudioSet segment; an AST json gives only the start
# the training split when --train-split does not say: the first of these with clips on disk
TRAIN_SPLITS = ("unbalanced_train", "balanced_train", "train")


def mids(text: str) -> list[str]:
    """The label ids of a quoted list: '/m/09x0r,/t/dd00088' or, as some copies write it,
    '/m/09x0r, /t/dd00088'."""
    return [m.strip() for m in text.split(",") if m.strip()]


def read_segments_csv(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """(ytid, start s, end s, [mid, ...]) rows of an official segments CSV.

    Three '#' header lines, ', ' separators, the label list quoted."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM some editors add
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 fields (YTID, start, end, labels), got {row}")
            ytid, start, end, labels = row
            try:
                rows.append((ytid, float(start), float(end), mids(labels)))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: start and end must be seconds, got {start!r}, {end!r}") from None
    return rows


def candidate_stems(ytid: str, start: float, end: float) -> list[str]:
    return [
        f"{ytid}_{start:.3f}", f"{ytid}_{start:.1f}", f"{ytid}_{int(start)}",
        f"{ytid}_{int(start * 1000)}_{int(end * 1000)}", f"Y{ytid}", ytid,
    ]


def json_stems(wav: str) -> tuple[str, list[str]]:
    """An AST json entry's clip id (its file's stem) and the names its file may have in this
    copy of AudioSet: the json may come from another machine (absolute paths, Windows paths)
    whose files were named differently (`YTID_START`, `YYTID`, `YTID_STARTms_ENDms`, ...)."""
    stem = (PureWindowsPath(wav) if "\\" in wav else PurePosixPath(wav)).stem
    ytid, _, start = stem.rpartition("_")
    if not ytid:
        return stem, [stem]
    try:
        return stem, [stem] + candidate_stems(ytid, float(start), float(start) + SEGMENT_SECONDS)
    except ValueError:  # not YTID_START
        return stem, [stem]


def read_ast_json(path: Path, root: Path, audio, split: str) -> tuple[list[Clip], list[str]] | str:
    """(clips found, ids missing) of an AST data json, or why it is not one."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))["data"]
        if not isinstance(entries, list):
            raise TypeError
    except ValueError as err:
        return f"not valid JSON ({err})"
    except (KeyError, TypeError):
        return 'not an AST data json ({"data": [{"wav": ..., "labels": ...}]})'
    found, lost = [], []
    for k, e in enumerate(entries):
        try:
            wav, labels = str(e["wav"]), mids(e["labels"])
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}: entry {k} ({str(e)[:80]}) needs \"wav\" and \"labels\" "
                             "(AST's {\"wav\": path, \"labels\": \"/m/..,/m/..\"})") from None
        clip_id, stems = json_stems(wav)
        given = Path(wav) if Path(wav).is_absolute() else root / wav
        hit = given if "\\" not in wav and given.is_file() else audio.find(stems)
        if hit is None:
            lost.append(clip_id)
        else:
            found.append(Clip(clip_id, split, tuple(labels), FileSource(str(hit))))
    return found, lost


def prepare_audioset(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder")
    audio = index_audio(root)
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    notes = list(audio.notes)
    source_of: dict[str, str] = {}
    for filename, split in CSV_SPLITS.items():
        path = root / filename
        if not path.is_file():
            continue
        found, lost = [], []
        for ytid, start, end, labels in read_segments_csv(path):
            clip_id = f"{ytid}_{start:.3f}"
            hit = audio.find(candidate_stems(ytid, start, end))
            if hit is None:
                lost.append(clip_id)
            else:
                found.append(Clip(clip_id, split, tuple(labels), FileSource(str(hit))))
        clips[split], missing[split] = found, lost
        source_of[split] = filename
    for path in sorted(root.glob("*.json")):
        split = path.stem
        read = read_ast_json(path, root, audio, split)
        if isinstance(read, str):
            notes.append(f"{path.name} skipped: {read}")
            continue
        if split in source_of:
            raise ValueError(f"{root}: {path.name} and {source_of[split]} both give split {split!r}; rename the "
                             "json (its name is its split's) or move one of them out of --root")
        (clips[split], missing[split]), source_of[split] = read, path.name
    if not clips:
        raise ValueError(
            f"{root}: no AudioSet metadata found; expected one of {', '.join(CSV_SPLITS)} "
            "or an AST data json ({\"data\": [{\"wav\": ..., \"labels\": ...}]})"
        )
    # a split whose clips are all missing (the unbalanced CSV next to the balanced clips) cannot
    # give statistics: the guess is among the splits with clips on disk
    train_split, guessed = guess_train_split([s for s in clips if clips[s]] or clips, TRAIN_SPLITS)
    return DatasetSpec(
        name="audioset", vocabulary=Vocabulary.builtin("audioset"), multi_label=True,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train_split,
        missing=missing, notes=notes, train_split_note=guessed,
    )
