"""VoxCeleb1 speaker identification: ROOT/iden_split.txt and ROOT/wav/idXXXXX/<video>/<n>.wav.

iden_split.txt lines are `<set> <speaker>/<video>/<utt>.wav` with set 1 = train, 2 = val,
3 = test. 1,251 speakers, single-label. An utterance's file may have any audio extension c2f
decodes (`00001.flac` for a FLAC-converted copy); two files for one utterance are refused.
VoxCeleb1 comes as two downloads, vox1_dev_wav and vox1_test_wav, whose wav/ folders go into
one ROOT/wav: speakers with no training clip are named in a note, which says so where whole
speakers have no audio. Utterances vary in length: each is stored up to `target_frames`
(default 1024 = 10.24 s; most utterances are shorter) with its true frame count, so the loader
can crop randomly while training; a short one is no defect, and the build counts those cut at
`target_frames` (DatasetSpec.variable_length)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from c2fdata.datasets.base import (
    AUDIO_EXTENSIONS,
    BUILD_AGAIN,
    Clip,
    DatasetSpec,
    FileSource,
    audio_files,
)
from c2fdata.vocab import Vocabulary

SETS = {"1": "train", "2": "val", "3": "test"}
TARGET_FRAMES = 1024
# the 40 speakers of VoxCeleb1's test download (vox1_test_wav); vox1_dev_wav holds the other 1,211
TEST_SPEAKERS = frozenset(f"id{n}" for n in range(10270, 10310))
SHOWN = 10


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
    if not wav.is_dir():
        downloads = sorted(str(p.relative_to(root)) for p in root.glob("*/wav") if p.is_dir())
        raise ValueError(f"{wav} not found: VoxCeleb1 needs its audio in ROOT/wav/idXXXXX/VIDEO/NNNNN.wav next to "
                         "iden_split.txt" + (f"; found {', '.join(downloads)}: put the idXXXXX folders of both of "
                                             "VoxCeleb1's downloads (vox1_dev_wav, vox1_test_wav) into one wav/ folder"
                                             if downloads else ""))
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
    if not any(clips.values()):
        exts = ",".join(e[1:] for e in AUDIO_EXTENSIONS)
        there = sorted(files)
        found = (f"found {len(there)} audio file(s), none of them listed: {', '.join(there[:3])}"
                 f"{' ...' if len(there) > 3 else ''}" if there else "found no audio file")
        raise ValueError(f"{root}: none of the {len(entries)} utterances of iden_split.txt is in {wav} (expected "
                         f"{wav}/idXXXXX/VIDEO/NNNNN.ext, .ext one of {exts}); {found}"
                         + "".join(f". {n}" for n in notes))
    notes += _speaker_notes(speakers, entries, clips, wav)
    return DatasetSpec(
        name="voxceleb", vocabulary=Vocabulary.from_names(speakers), multi_label=False,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split="train", missing=missing,
        notes=notes, variable_length=True,
    )


def _speaker_notes(speakers: list[str], entries, clips: dict[str, list[Clip]], wav: Path) -> list[str]:
    """Speakers with no audio at all, and the likely cause: one of VoxCeleb1's two downloads left
    out of wav/ (the speakers without a training clip are noted for every dataset: prepare)."""
    heard = {c.labels[0] for split in clips.values() for c in split}
    absent = [s for s in speakers if s not in heard]
    if not absent:
        return []
    lost = set(absent)
    listed = sum(rel.split("/")[0] in lost for _, rel in entries)
    which = ""
    if lost == TEST_SPEAKERS & set(speakers):
        which = ": the speakers of the vox1_test_wav download"
    elif lost == set(speakers) - TEST_SPEAKERS:
        which = ": the speakers of the vox1_dev_wav download"
    shown = f"{', '.join(absent[:SHOWN])}{' ...' if len(absent) > SHOWN else ''}"
    return [(f"{len(absent)} of {len(speakers)} speakers have no audio at all in {wav} ({shown}{which}), though "
             f"iden_split.txt lists {listed} utterances of theirs: VoxCeleb1 comes as two downloads, vox1_dev_wav "
             "(1,211 speakers) and vox1_test_wav (40 speakers, id10270 .. id10309), and iden_split.txt uses both; "
             f"put the idXXXXX folders of both wav/ folders into one wav/ under --root and {BUILD_AGAIN}")]
