"""VGGSound: `vggsound.csv` (no header: youtube_id,start_seconds,label,split) plus clips.

Layout: ROOT/vggsound.csv and the audio anywhere below ROOT, named `YTID_START6.ext` (the
official `---g-f_I2yQ_000001`), `YTID_START.ext`, `YTID_STARTms_ENDms.ext` (`YTID_30000_40000`,
as AudioSet's) or `YTID_START6_END6.ext` (`YTID_000030_000040`), the end 10 s after the start,
or `YTID.ext`. A file named by its YouTube id alone is taken only for a video the CSV lists
at one start time: where it lists several (the same video's segments, possibly in both splits
under different labels) one such file cannot tell them apart, and those rows are left out and
named in a note. Single-label, 309 classes taken from the CSV (sorted by name), splits "train"
and "test"."""

from __future__ import annotations

import csv
from pathlib import Path

from c2fdata.datasets.base import (
    AUDIO_EXTENSIONS,
    BUILD_AGAIN,
    AudioIndex,
    Clip,
    DatasetSpec,
    FileSource,
    index_audio,
)
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024
CLIP_SECONDS = 10  # every VGGSound clip: [start, start + 10 s)
NAMINGS = ("YTID_000030.ext, YTID_30.ext, YTID_30000_40000.ext (start and end in ms), "
           "YTID_000030_000040.ext (in s) or YTID.ext")
SHOWN = 5  # examples named in a note or an error


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


def candidate_stems(ytid: str, start: int) -> list[str]:
    """The names a segment's own file may have (not the bare `YTID`, which is no segment's own).
    Each holds the start, so no two segments share one: an end is the start + 10 s exactly (in
    ms, or in zero-padded s), and `YTID_000030_000040` read as ms would start at 0.03 s, which no
    row of whole seconds does."""
    end = start + CLIP_SECONDS
    return [f"{ytid}_{start:06d}", f"{ytid}_{start}", f"{ytid}_{start * 1000}_{end * 1000}",
            f"{ytid}_{start:06d}_{end:06d}"]


def prepare_vggsound(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    meta = root / "vggsound.csv"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: VGGSound needs its vggsound.csv in --root")
    rows = read_vggsound_csv(meta)
    audio = index_audio(root)
    starts: dict[str, set[int]] = {}
    for ytid, start, _, _ in rows:
        starts.setdefault(ytid, set()).add(start)
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    shared: dict[str, list[tuple[str, str, str]]] = {}  # ytid -> (clip id, split, label): rows finding only YTID.ext
    for ytid, start, label, split in rows:
        clip_id = f"{ytid}_{start:06d}"
        hit = audio.find(candidate_stems(ytid, start))
        if hit is None and ytid in audio.paths:
            if len(starts[ytid]) == 1:
                hit = audio.paths[ytid]
            else:  # one file for several segments: it is at most one of them, and which is not known
                shared.setdefault(ytid, []).append((clip_id, split, label))
        clips.setdefault(split, [])
        if hit is None:
            missing.setdefault(split, []).append(clip_id)
        else:
            clips[split].append(Clip(clip_id, split, (label,), FileSource(str(hit))))
    notes = list(audio.notes)
    if shared:
        notes.append(_shared_note(shared, audio))
    if not any(clips.values()):
        raise ValueError(_nothing_found(root, rows, audio, notes))
    names = sorted({r[2] for r in rows})
    return DatasetSpec(
        name="vggsound", vocabulary=Vocabulary.from_names(names), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split="train", missing=missing,
        notes=notes,
    )


def _shared_note(shared: dict[str, list[tuple[str, str, str]]], audio: AudioIndex) -> str:
    n = sum(map(len, shared.values()))
    shown = "; ".join(f"{ytid}: {', '.join(f'{i} ({s}, {label!r})' for i, s, label in rows)} -> {audio.paths[ytid]}"
                      for ytid, rows in list(shared.items())[:SHOWN])
    more = f"; and {len(shared) - SHOWN} more videos" if len(shared) > SHOWN else ""
    first = next(iter(shared.values()))[0][0]
    return (f"{n} row(s) of vggsound.csv were left out (counted as missing): their video is listed at more than one "
            f"start time and the only file found is named by its YouTube id alone, which cannot say which segment "
            f"it holds ({shown}{more}); name each segment's file YTID_START.ext (e.g. {first}.wav) "
            f"and {BUILD_AGAIN}")


def _nothing_found(root: Path, rows, audio: AudioIndex, notes: list[str]) -> str:
    """Why no row of the CSV found its file: the namings looked for, and what is there instead."""
    exts = ",".join(e[1:] for e in AUDIO_EXTENSIONS)
    ytid, start = rows[0][:2] if rows else ("---g-f_I2yQ", 1)
    stems = sorted(audio.paths)
    found = (f"found {len(stems)} audio file(s), none named so: {', '.join(stems[:SHOWN])}"
             f"{' ...' if len(stems) > SHOWN else ''}" if stems else "found no audio file")
    return (f"{root}: none of the {len(rows)} clips of vggsound.csv has its audio below it; expected files "
            f"named {NAMINGS}, .ext one of {exts} (e.g. {ytid}_{start:06d}.wav); {found}"
            + "".join(f". {n}" for n in notes))
