"""Any labelled folder tree: ROOT/<split>/<class>/*.{wav,flac,ogg,mp3}.

For Kinetics-Sounds (audio extracted from the videos) and users' own data. Classes are the
sorted union of class folder names over all splits; single-label; "train" gives the statistics
(or the first split alphabetically when there is no "train")."""

from __future__ import annotations

from pathlib import Path

from c2fdata.datasets.base import AUDIO_EXTENSIONS, Clip, DatasetSpec, FileSource
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024


def prepare_folder(root, *, target_frames: int | None = None, name: str = "folder", **_) -> DatasetSpec:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder")
    clips: dict[str, list[Clip]] = {}
    classes: set[str] = set()
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                continue
            classes.add(class_dir.name)
            for f in files:
                clip_id = f"{class_dir.name}/{f.relative_to(class_dir).with_suffix('')}"
                clips.setdefault(split_dir.name, []).append(
                    Clip(clip_id, split_dir.name, (class_dir.name,), FileSource(str(f)))
                )
    if not clips:
        raise ValueError(
            f"{root}: no audio found; expected ROOT/<split>/<class>/*.{{{','.join(e[1:] for e in AUDIO_EXTENSIONS)}}}"
        )
    train = "train" if "train" in clips else sorted(clips)[0]
    return DatasetSpec(
        name=name, vocabulary=Vocabulary.from_names(sorted(classes)), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train,
    )
