"""Any labelled folder tree: ROOT/<split>/<class>/*.{wav,flac,ogg,mp3,opus,aiff,aif} (AUDIO_EXTENSIONS).

For Kinetics-Sounds (audio extracted from the videos) and users' own data. Classes are the
sorted union of class folder names over all splits; single-label. The statistics come from the
split named "train" (in any case, or the one name holding "train"; else the first by name, with
a note), or the one --train-split names. Hidden files and folders (`._x.wav`, `.ipynb_checkpoints`)
are not clips; symlinked folders are followed; files in formats c2f cannot decode (.m4a, .mp4,
...) are counted in a note."""

from __future__ import annotations

from pathlib import Path

from c2fdata.datasets.base import (
    AUDIO_EXTENSIONS,
    AudioScan,
    Clip,
    DatasetSpec,
    FileSource,
    audio_files,
    guess_train_split,
    is_hidden,
)
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024


def prepare_folder(root, *, target_frames: int | None = None, name: str = "folder", **_) -> DatasetSpec:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder")
    clips: dict[str, list[Clip]] = {}
    classes: set[str] = set()
    scan = AudioScan()
    loose: list[Path] = []  # audio files where a class folder was expected: no class, not clips
    for split_dir in _folders(root, scan):
        loose += _audio_here(split_dir)
        for class_dir in _folders(split_dir, scan):
            found = audio_files(class_dir)
            scan.undecodable += found.undecodable  # for the notes; its files become clips below
            scan.unreadable += found.unreadable
            if not found.files:
                continue
            classes.add(class_dir.name)
            for f in found.files:
                clip_id = f"{class_dir.name}/{f.relative_to(class_dir).with_suffix('')}"
                clips.setdefault(split_dir.name, []).append(
                    Clip(clip_id, split_dir.name, (class_dir.name,), FileSource(str(f)))
                )
    if not clips:
        raise ValueError(
            f"{root}: no audio found; expected ROOT/<split>/<class>/*.{{{','.join(e[1:] for e in AUDIO_EXTENSIONS)}}}"
            + "".join(f". {n}" for n in [*_one_level_up(root, loose), *scan.notes(root)])
        )
    train, guessed = guess_train_split(clips)
    notes = scan.notes(root)
    if loose:
        notes.append(f"{len(loose)} audio file(s) directly in a split folder, outside any class folder, are not clips "
                     f"(e.g. {loose[0]}): move them into ROOT/<split>/<class>/")
    if guessed and len(clips) > 2:
        guessed += (f". If the folders under {root} are classes, not splits, the layout is "
                    "ROOT/<split>/<class>/...: put them under ROOT/train/")
    return DatasetSpec(
        name=name, vocabulary=Vocabulary.from_names(sorted(classes)), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train,
        notes=notes, train_split_note=guessed,
    )


def _audio_here(folder: Path) -> list[Path]:
    """The visible audio files directly in `folder` (not below it)."""
    try:
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and not is_hidden(p.name) and p.suffix.lower() in AUDIO_EXTENSIONS)
    except OSError:
        return []


def _one_level_up(root: Path, loose: list[Path]) -> list[str]:
    """Why no clip was found, where the audio sits one level too high: ROOT/<class>/*.wav."""
    if not loose:
        return []
    folders = sorted({p.parent.name for p in loose})
    return [(f"found {len(loose)} audio file(s) in {len(folders)} folder(s) directly under {root} "
             f"({', '.join(folders[:5])}{' ...' if len(folders) > 5 else ''}): if those are classes, put them under "
             f"a split folder, e.g. {root}/train/{folders[0]}/")]


def _folders(parent: Path, scan: AudioScan) -> list[Path]:
    """The visible sub-folders of a split or class level, sorted; an unreadable parent is noted."""
    try:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not is_hidden(p.name))
    except OSError:
        scan.unreadable.append(str(parent))
        return []
