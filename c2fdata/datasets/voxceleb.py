"""VoxCeleb1 speaker identification: ROOT/iden_split.txt and ROOT/wav/idXXXXX/<video>/<n>.wav.

iden_split.txt lines are `<set> <speaker>/<video>/<utt>.wav` with set 1 = train, 2 = val,
3 = test. 1,251 speakers, single-label. Utterances vary in length: each is stored up to
`target_frames` (default 1024 = 10.24 s; most utterances are shorter) with its true frame count,
so the loader can crop randomly while training."""

from __future__ import annotations

from pathlib import Path

from c2fdata.datasets.base import Clip, DatasetSpec, FileSource
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
    clips: dict[str, list[Clip]] = {s: [] for s in SETS.values()}
    missing: dict[str, list[str]] = {}
    for split, rel in entries:
        path = root / "wav" / rel
        clip_id = rel.rsplit(".", 1)[0]
        if not path.is_file():
            missing.setdefault(split, []).append(clip_id)
            continue
        clips[split].append(Clip(clip_id, split, (rel.split("/")[0],), FileSource(str(path))))
    return DatasetSpec(
        name="voxceleb", vocabulary=Vocabulary.from_names(speakers), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split="train", missing=missing,
    )
