"""What every dataset adapter returns: clips (id, split, labels, where the audio comes from)."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from c2fdata.features import BadClip
from c2fdata.vocab import Vocabulary

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
# What downloaders (yt-dlp) and video datasets give that libsndfile cannot decode: such files are
# counted and named in the build's notes, never passed over silently.
UNDECODABLE_EXTENSIONS = (".m4a", ".mp4", ".webm", ".aac", ".wma", ".mkv", ".mov", ".avi", ".3gp", ".amr")
DUPLICATES_SHOWN = 5


class AudioSource(Protocol):
    """A picklable callable giving (audio (samples,) or (samples, channels), sample rate)."""

    def __call__(self) -> tuple[np.ndarray, int]: ...


# bytes per sample of libsndfile's WAV subtypes (a frame is this times the channels)
SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
                "DOUBLE": 8}
UNKNOWN_LENGTH = 0x7FFFF000  # from here up a header's data size means "not known when written" (SoX: 0x7ffff000; 0xffffffff)


# libsndfile's notes, per container, on a file shorter than its header says: (pattern, whether its
# numbers are bytes (else frames)). WAV: the data chunk ("data : 64000 (should be 19956)"); RF64:
# the 64-bit frame count of its ds64 chunk; W64: the size of the whole file, its only length.
CUT_NOTES = {
    "WAV": (r"\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", True),
    "WAVEX": (r"\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", True),
    "RF64": (r"\*+ Calculated frame count (\d+) does not match value from 'ds64' chunk of (\d+)", False),
    "W64": (r"\s*riff\s*:\s*(\d+)\s*\(should be (\d+)\)", True),
}


def _cut_short(extra_info: str, frame_bytes: int = 1, container: str = "WAV") -> str | None:
    """libsndfile's own note that a WAV, RF64 or W64 file holds less audio than its header says,
    by at least one frame, or None. FLAC and Ogg fail to decode when cut; these containers are
    read up to where the file ends, silently. A WAV header written before its length was known
    (by a program writing to a pipe) is no promise, and a chunk longer than its header says, or
    short by bytes that complete no frame (a pad byte), has lost no audio; a cut inside the last
    frame has lost that frame."""
    if container not in CUT_NOTES:
        return None
    pattern, in_bytes = CUT_NOTES[container]
    for line in extra_info.splitlines():
        found = re.match(pattern, line)
        if found:
            a, b = map(int, found.groups())
            declared, present = (a, b) if in_bytes else (b, a)  # RF64 says the calculated count first
            if container in ("WAV", "WAVEX") and declared >= UNKNOWN_LENGTH:  # a 32-bit size left unset
                continue
            if in_bytes:  # whole frames: a cut inside the last frame loses it too
                declared, present = declared // frame_bytes, present // frame_bytes
            if declared - present >= 1:
                return " ".join(line.strip(" *").split())
    return None


# Clips found after a fix to the audio (converted, renamed, merged) change a store's clip lists,
# which a store built before refuses: what to do then, in the notes that ask for such a fix.
BUILD_AGAIN = "build again (into a new --out where a store was built already: its clip lists change)"


# An MP3 may decode to this many samples fewer than its header declares (one MPEG-1 Layer III
# frame) before its clip is refused as damaged: libmpg123 skips damaged frames with a note on
# stderr and decodes on, so the audio comes out shorter, spliced where the frames went missing.
MP3_MISSING_SLACK = 1152


def _mp3_counts_frames(path: str) -> bool:
    """Whether an MP3's first frame is a Xing or Info header that counts the file's frames (LAME
    and ffmpeg write one), where libmpg123 reads it: only then is the length libsndfile reports
    exact. Without one (VBRI included: libmpg123 ignores it) the length is estimated from the
    file's size, which tags after the audio or a variable bitrate make wrong, so that a whole file
    could read as short."""
    with open(path, "rb") as fh:
        head = fh.read(10)
        start = 0
        if len(head) == 10 and head[:3] == b"ID3":  # an ID3v2 tag first: its size is 4 syncsafe bytes
            size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F
            start = 10 + size + (10 if head[5] & 0x10 else 0)  # and a footer, where the flag says so
        fh.seek(start)
        frame = fh.read(64)
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return False  # not a frame where one should start: leave the length alone
    mpeg1, mono = frame[1] & 0x18 == 0x18, frame[3] & 0xC0 == 0xC0
    at = 4 + (2 if not frame[1] & 0x01 else 0) + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))
    tag, flags = frame[at:at + 4], frame[at + 4:at + 8]
    return tag in (b"Xing", b"Info") and len(flags) == 4 and bool(flags[3] & 0x01)  # its frames field is there


def seconds_text(x: float) -> str:
    """A time as ids and messages write it: exact (the shortest text that reads back as the same
    float, so that two segments never print alike), without a trailing ".0"."""
    return repr(float(x)).removesuffix(".0")


# a manifest row fixed after a build: the store's fingerprint covers ids, times and channels
FIXED_ROW = "a fixed row makes another store: build it into a new --out"

# a segment's end may pass its file's end by this much (seconds), read to the end: lhotse loads
# cuts that far past their recording (durations rounded, or summed in floating point)
SEGMENT_END_SLACK = 0.05


@dataclass(frozen=True)
class FileSource:
    """An audio file, whole, or the segment [start, end) of it (seconds; end None: to the file's
    end), as a manifest lists a segment of a longer recording; `channel` (0-based) takes that
    channel of a multi-channel file alone (None: all of them, mixed to mono later)."""

    path: str
    start: float = 0.0
    end: float | None = None
    channel: int | None = None

    @property
    def segment(self) -> bool:
        return self.start > 0 or self.end is not None

    @property
    def span(self) -> str:
        """The segment's times, "start-end" in seconds ("end": the file's), or "" for all of it."""
        if not self.segment:
            return ""
        return f"{seconds_text(self.start)}-{'end' if self.end is None else seconds_text(self.end)}"

    @property
    def part(self) -> str:
        """Which part of the file this is, as the store's fingerprint records it ("" for all of it)."""
        return self.span + ("" if self.channel is None else f"/ch{self.channel}")

    def __call__(self) -> tuple[np.ndarray, int]:
        import soundfile as sf

        try:
            with sf.SoundFile(self.path) as f:
                cut = _cut_short(f.extra_info, f.channels * SAMPLE_BYTES.get(f.subtype, 1), f.format)
                sr = f.samplerate
                first, last = 0, f.frames
                if self.segment and not cut:
                    first, last = self._first_frame(f.frames, sr), self._last_frame(f.frames, sr)
                missing = 0
                if self.segment and (f.subtype in SAMPLE_BYTES or f.format == "FLAC"):  # seeking is sample-exact
                    f.seek(first)
                    audio = f.read(last - first, dtype="float32", always_2d=False)
                else:
                    # the whole file: Vorbis, Opus and MP3 seek a few hundred samples off (a decoder
                    # without its warm-up), and a damaged MP3 shows only over its whole length
                    audio = f.read(dtype="float32", always_2d=False)
                    whole = len(audio)
                    if f.subtype.startswith("MPEG") and not cut and _mp3_counts_frames(self.path):
                        missing = f.frames - whole
                    audio = audio[first:last] if self.segment else audio
        except BadClip:
            raise
        except FileNotFoundError:
            raise BadClip("missing", f"{self.path}: file not found") from None
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError
            said = str(err)
            if "does not exist" in said and os.path.isfile(self.path):
                # libsndfile's words for an MP3 it finds no frame in, of a file that is there
                said = "libsndfile found no audio it can decode in it (corrupt, or not the format its name says)"
            raise BadClip("unreadable", f"{self.path}: {said}") from None
        if cut:  # libsndfile reads what is there without a word: a part of a clip is not the clip
            raise BadClip("truncated", f"{self.path}: the file is cut short ({cut}): an interrupted download or "
                                       "copy? Fetch it again")
        if missing > MP3_MISSING_SLACK:  # as above: frames skipped without an error
            raise BadClip("damaged", f"{self.path}: {missing} of its {missing + whole} samples ({missing / sr:.2f} s) "
                                     "could not be decoded (damaged frames the decoder skipped, or the file is cut "
                                     "short): fetch it again")
        if self.channel is not None:
            channels = 1 if audio.ndim == 1 else audio.shape[1]
            if self.channel >= channels:
                raise BadClip("channel", f"{self}: the file has {channels} channel(s), numbered from 0: check the "
                                         f"manifest's channel column ({FIXED_ROW})")
            audio = audio if audio.ndim == 1 else np.ascontiguousarray(audio[:, self.channel])
        return audio, int(sr)

    def _first_frame(self, frames: int, sr: int) -> int:
        first = round(self.start * sr)
        if first >= frames:
            raise BadClip("segment", f"{self}: starts at or past the file's end ({frames / sr:.3f} s): check the "
                                     f"manifest's start column ({FIXED_ROW})")
        return first

    def _last_frame(self, frames: int, sr: int) -> int:
        if self.end is None:
            return frames
        if self.end > frames / sr + SEGMENT_END_SLACK:
            raise BadClip("segment", f"{self}: ends past the file's end ({frames / sr:.3f} s): check the manifest's "
                                     f"end column, or the file (cut short?) ({FIXED_ROW})")
        return min(round(self.end * sr), frames)

    def __str__(self) -> str:
        where = [f"{self.span} s"] if self.segment else []
        where += [f"channel {self.channel}"] if self.channel is not None else []
        return f"{self.path} [{', '.join(where)}]" if where else self.path


@dataclass(frozen=True)
class Clip:
    id: str  # unique within the dataset, e.g. "YTID_30.000" or "fold1/1-100032-A-0"
    split: str
    labels: tuple[str, ...]  # label ids or names as the metadata gives them
    source: AudioSource


@dataclass
class DatasetSpec:
    """A dataset as an adapter found it on disk, before any audio is decoded."""

    name: str
    vocabulary: Vocabulary
    multi_label: bool
    target_frames: int  # frames stored per clip (longer clips cropped, shorter zero-padded)
    clips: dict[str, list[Clip]]  # split -> clips in a stable order
    train_split: str = "train"  # the split the normalisation statistics come from
    # Listed in the metadata but not on disk: split -> ids. Counted, reported, never fatal.
    missing: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    train_split_note: str = ""  # when train_split is a guess: which split, and how to choose another
    # Clips whose lengths vary by nature (VoxCeleb's utterances): stored at their true length up to
    # target_frames, so a short clip is no defect (the build flags none as "short") and the build
    # counts those cut at target_frames in a note instead.
    variable_length: bool = False

    def __post_init__(self):
        if self.target_frames <= 0:
            raise ValueError(f"target_frames must be positive, got {self.target_frames}")
        if not any(self.clips.values()):
            raise ValueError(
                f"dataset {self.name!r}: no clips found (missing on disk: "
                f"{sum(map(len, self.missing.values()))}); check --root and the layout in README"
            )
        for split, clips in self.clips.items():
            seen: dict[str, Clip] = {}
            twins = []
            for c in clips:
                if c.id in seen:
                    same = str(seen[c.id].source) == str(c.source)  # one file listed twice, or two files
                    twins.append(f"{c.id!r} ({f'{c.source} listed twice' if same else f'{seen[c.id].source} and {c.source}'})")
                seen.setdefault(c.id, c)
            if twins:
                more = f" and {len(twins) - DUPLICATES_SHOWN} more" if len(twins) > DUPLICATES_SHOWN else ""
                raise ValueError(f"dataset {self.name!r}, split {split!r}: {len(twins)} duplicate clip ids: "
                                 f"{'; '.join(twins[:DUPLICATES_SHOWN])}{more}; keep one file per clip "
                                 "(e.g. not both clip.wav and clip.flac) and list each clip once")

    def check_train_split(self) -> None:
        """The split the normalisation statistics come from must exist and have clips on disk:
        checked before any feature is computed, not when the finished build is finalised."""
        listed = {s: len(c) for s, c in self.clips.items()}
        usable = sorted(s for s, n in listed.items() if n)
        if self.train_split not in listed:
            raise ValueError(f"dataset {self.name!r}: no split {self.train_split!r} for the normalisation "
                             f"statistics; splits with clips: {', '.join(usable)} (choose with --train-split)")
        if not listed[self.train_split]:
            lost = len(self.missing.get(self.train_split, []))
            raise ValueError(f"dataset {self.name!r}: split {self.train_split!r}, where the normalisation statistics "
                             f"would come from, has no clip on disk ({lost} listed, all missing); choose another "
                             f"with --train-split (splits with clips: {', '.join(usable)})")


def untrained_note(spec: DatasetSpec, shown: int = 10) -> list[str]:
    """The classes a model of a single-label dataset cannot learn (no clip on disk in its training
    split), noted once the training split is settled (--train-split included)."""
    if spec.multi_label:
        return []
    have = {c.labels[0] for c in spec.clips.get(spec.train_split, [])}
    untrained = [k for k in spec.vocabulary.ids if k not in have]
    if not untrained:
        return []
    more = " ..." if len(untrained) > shown else ""
    return [(f"{len(untrained)} of {len(spec.vocabulary.ids)} classes have no clip in the training split "
             f"{spec.train_split!r}, so a model cannot learn them: {', '.join(untrained[:shown])}{more}")]


def guess_train_split(splits, preferred: tuple[str, ...] = ("train",)) -> tuple[str, str]:
    """The split to take normalisation statistics from when the metadata does not say: the first
    of `preferred` present, else one named train in any case (`Train`), else the one name holding
    "train" (`train_data`), else the first by name. Returns it with a note when it is a guess
    that may be wrong ("" otherwise), so the build says which split it used and how to choose
    another."""
    names = sorted(splits)
    for name in preferred:
        if name in names:
            return name, ""
    for pick in ([n for n in names if n.lower() == "train"], [n for n in names if "train" in n.lower()]):
        if len(pick) == 1:
            return pick[0], ""
    return names[0], (f"normalisation statistics from split {names[0]!r}: no split is named train "
                      f"(splits: {', '.join(names)}); choose one with --train-split")


def is_hidden(name: str) -> bool:
    """macOS's `._clip.wav` resource forks, `.DS_Store`, `.ipynb_checkpoints/`, `.git/`, ..."""
    return name.startswith(".")


@dataclass
class AudioScan:
    """What a walk of a folder found: audio files (sorted), and what it left out."""

    files: list[Path] = field(default_factory=list)
    undecodable: list[Path] = field(default_factory=list)  # files libsndfile cannot decode (sorted)
    unreadable: list[str] = field(default_factory=list)  # folders it could not list (permissions)

    def notes(self, root: Path) -> list[str]:
        out = []
        if self.undecodable:
            kinds = ", ".join(f"{n} {ext}" for ext, n in Counter(p.suffix.lower() for p in self.undecodable).most_common())
            n = len(self.undecodable)
            out.append(f"{n} file{'s' if n > 1 else ''} under {root} in formats c2f cannot decode "
                       f"{'were' if n > 1 else 'was'} left out "
                       f"({kinds}); convert them to flac or wav (e.g. `ffmpeg -i clip.m4a -ac 1 -ar 16000 clip.flac`) "
                       f"and {BUILD_AGAIN}")
        if self.unreadable:
            more = f" and {len(self.unreadable) - 3} more" if len(self.unreadable) > 3 else ""
            out.append(f"{len(self.unreadable)} folder(s) under {root} could not be read and were left out "
                       f"({', '.join(self.unreadable[:3])}{more}); check their permissions")
        return out


def audio_files(root: Path) -> AudioScan:
    """Every audio file under root, sorted, skipping hidden files and folders. Symlinked folders
    are followed, each real folder once (so a link loop ends) and real folders before links
    (so that a folder reached both ways keeps its real path: clip ids, hashed into the store's
    fingerprint, must not depend on the order a file system lists entries in). Folders that
    cannot be listed (a root-only lost+found) are left out and named."""
    scan, seen, links = AudioScan(), set(), []

    def walk(folder: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            scan.unreadable.append(folder)
            return
        for e in entries:
            if is_hidden(e.name):
                continue
            try:
                if e.is_dir(follow_symlinks=True):
                    if e.is_symlink():
                        links.append(e.path)
                    else:
                        walk(e.path)
                    continue
                if not e.is_file(follow_symlinks=True):
                    continue  # a broken link, a socket, ...
            except OSError:
                continue
            ext = os.path.splitext(e.name)[1].lower()
            if ext in AUDIO_EXTENSIONS:
                scan.files.append(Path(e.path))
            elif ext in UNDECODABLE_EXTENSIONS:
                scan.undecodable.append(Path(e.path))

    walk(str(root))
    while links:  # after every real folder: a link to one already walked adds nothing
        walk(links.pop(0))
    scan.files.sort()
    scan.undecodable.sort()
    return scan


@dataclass
class AudioIndex:
    """stem -> path for every audio file under a root (one scan instead of a stat per clip), and
    what the scan left out, as notes for the build."""

    paths: dict[str, Path]
    notes: list[str]

    def find(self, stems) -> Path | None:
        return next((self.paths[s] for s in stems if s in self.paths), None)


def index_audio(root: Path) -> AudioIndex:
    scan = audio_files(root)
    paths: dict[str, Path] = {}
    twins: dict[str, list[Path]] = {}
    for p in scan.files:
        if p.stem in paths:
            twins.setdefault(p.stem, [paths[p.stem]]).append(p)
        paths.setdefault(p.stem, p)
    notes = scan.notes(root)
    if twins:
        stem, where = next(iter(twins.items()))
        notes.append(f"{len(twins)} clip names have more than one file under {root}; the first by path is used "
                     f"(e.g. {stem}: {', '.join(map(str, where))})")
    return AudioIndex(paths, notes)


def limited(clips: list[Clip], limit: int | None) -> list[Clip]:
    """At most `limit` clips for a quick trial, taken in turn from each label (a clip's first),
    in their order in the split: a split listed class by class (a folder tree) would otherwise
    give its first class only."""
    if not limit or len(clips) <= limit:
        return clips
    queues: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        queues.setdefault(c.labels[0] if c.labels else "", []).append(i)
    picked, k = [], 0
    while len(picked) < limit:
        picked += [q[k] for q in queues.values() if k < len(q)][:limit - len(picked)]
        k += 1
    return [clips[i] for i in sorted(picked)]
