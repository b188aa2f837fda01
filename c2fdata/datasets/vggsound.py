"""VGGSound: `vggsound.csv` (no header: youtube_id,start_seconds,label,split) plus clips.

Layout: ROOT/vggsound.csv and the audio anywhere below ROOT, named `YTID_START6.ext` (the
official `---g-f_I2yQ_000001`), `YTID_START.ext` or `YTID.ext`. Single-label, 309 classes taken
from the CSV (sorted by name), splits "train" and "test"."""

from __future__ import annotations

import csv
from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource, index_audio
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024


def read_vggsound_csv(path: Path) -> list[tuple[str, int, str, str]]:
    """(youtube id, start s, label, split) rows; a header row, which copies of the CSV made with
    pandas have, is skipped."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM some editors add
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{lineno}: expected youtube_id,start_seconds,label,split; got {row}")
            try:
                start = int(float(row[1]))
            except ValueError:
                if lineno == 1 and not rows:  # a header: "youtube_id,start_seconds,label,split" or the like
                    continue
                raise ValueError(f"{path}:{lineno}: start_seconds must be a number, got {row[1]!r}") from None
            rows.append((row[0].strip(), start, row[2].strip(), row[3].strip()))
    return rows


def prepare_vggsound(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    meta = root / "vggsound.csv"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: VGGSound needs its vggsound.csv in --root")
    rows = read_vggsound_csv(meta)
    audio = index_audio(root)
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    for ytid, start, label, split in rows:
        clip_id = f"{ytid}_{start:06d}"
        hit = audio.find((clip_id, f"{ytid}_{start}", ytid))
        clips.setdefault(split, [])
        if hit is None:
            missing.setdefault(split, []).append(clip_id)
        else:
            clips[split].append(Clip(clip_id, split, (label,), FileSource(str(hit))))
    vocab = Vocabulary.from_names(sorted({r[2] for r in rows}))
    return DatasetSpec(
        name="vggsound", vocabulary=vocab, multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split="train", missing=missing,
        notes=audio.notes,
    )
