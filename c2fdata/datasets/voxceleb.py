"""VoxCeleb1 speaker identification: ROOT/iden_split.txt and ROOT/wav/idXXXXX/<video>/<n>.wav.

iden_split.txt lines are `<set> <speaker>/<video>/<utt>.wav` with set 1 = train, 2 = val,
3 = test. 1,251 speakers, single-label. An utterance's file may have any audio extension c2f
decodes (`00001.flac` for a FLAC-converted copy); two files for one utterance are refused.
Utterances vary in length: each is stored up to `target_frames` (default 1024 = 10.24 s; most
utterances are shorter) with its true frame count, so the loader can crop randomly while
training."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource, audio_files
from c2fdata.vocab import Vocabulary

SETS = {"1": "train", "2": "val", "3": "test"}
TARGET_FRAMES = 1024


def prepare_voxceleb(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    meta = root / "iden_split.txt"
    if not meta.is_file():
        raise ValueError(f"{meta} not found: VoxCeleb1 identification needs iden_split.txt and wav/ under --root")
    entries = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SETS:
            raise ValueError(f"{meta}:{lineno}: expected '<1|2|3> idXXXXX/video/utt.wav', got {line!r}")
        entries.append((SETS[parts[0]], parts[1]))
    speakers = sorted({rel.split("/")[0] for _, rel in entries})
    wav = root / "wav"
    scan = audio_files(wav)
    files: dict[str, list[Path]] = {}  # speaker/video/utt (no extension) -> its files
    for p in scan.files:
        files.setdefault(p.relative_to(wav).with_suffix("").as_posix(), []).append(p)
    clips: dict[str, list[Clip]] = {s: [] for s in SETS.values()}
    missing: dict[str, list[str]] = {}
    for split, rel in entries:
        clip_id = rel.rsplit(".", 1)[0]
        found = files.get(PurePosixPath(rel).with_suffix("").as_posix(), [])
        if not found:
            missing.setdefault(split, []).append(clip_id)
        # two files for one utterance (00001.wav and 00001.flac) are two clips of one id: refused by DatasetSpec
        clips[split] += [Clip(clip_id, split, (rel.split("/")[0],), FileSource(str(p))) for p in found]
    notes = scan.notes(wav)
    return DatasetSpec(
        name="voxceleb", vocabulary=Vocabulary.from_names(speakers), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split="train", missing=missing,
        notes=notes,
    )

