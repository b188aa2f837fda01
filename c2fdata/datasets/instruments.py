"""`instruments`: the embedded default dataset, 16 General MIDI instrument families.

No download: every clip is a short musical phrase rendered on the fly from the General MIDI
SoundFont that pretty-midi's wheel ships (`TimGM6mb.sf2`, 128 melodic presets in bank 0) by
tinysoundfont. The task is single-label classification of the instrument *family* of a phrase.

Classes: the 16 General MIDI families of 8 programs each (program // 8), in GM order:
piano, chromatic percussion, organ, guitar, bass, strings, ensemble, brass, reed, pipe,
synth lead, synth pad, synth effects, ethnic, percussive, sound effects.

Splits (all three balanced over families; programs cycle within a family):
- `train`: programs whose slot in their family (program % 8) is NOT in `EVAL_SLOTS` = (1, 5),
  i.e. 6 programs per family, 96 in all.
- `eval`: the other 2 programs per family (32 programs NEVER heard in training: 1, 5, 9, 13,
  ..., 121, 125), so that accuracy measures generalisation to unseen instruments of a family.
- `eval_seen`: new phrases from the training programs (held-out clips, seen instruments).

A phrase (drawn per clip from `numpy.random.default_rng([seed, split, index])`, so a clip does not
depend on how many clips are asked for):
- style: melody (50%: 3-6 notes, a random walk of -7..+7 semitones, 0.15-0.55 s between onsets,
  legato or detached), chord (30%: 2-4 notes stacked from 3, 4, 5, 7, 10 or 12 semitones, strummed
  over up to 40 ms, held 0.5-1.8 s, played once or twice), or long notes (20%: 1-2 notes of
  0.8-2.0 s);
- pitch: MIDI keys inside the family's range (`PITCH_RANGES`, e.g. bass 28-60, pipe 55-93), and
  only keys on which that preset actually sounds (some TimGM6mb presets have holes: Alto Sax has
  no sample on key 64, Whistle and Bari Sax stop near key 80, Seashore covers 36-87; see
  `playable_keys`);
- timing: first onset in 0-0.25 s; notes that would start in the last 0.2 s are dropped; releases
  ring on and are cut at the clip end (`clip_seconds`, 2.5 s by default: 248 Kaldi frames at a
  10 ms hop, stored padded to 256);
- velocity: a phrase level of 50-120 with +-10 per note;
- loudness: each clip is scaled to an RMS level of -32 to -16 dBFS (peak capped at 0.99), so that
  loudness carries no information about the family.

All 128 presets sound. The quietest are Breath Noise, Helicopter and Applause (about -45 dBFS at
velocity 100, raised by the loudness step) and Reverse Cymbal (a slow swell). Some presets are
near-duplicates (Strings / Slow Strings, Violin / Viola / Fiddle, the last being "ethnic"): that
is the General MIDI standard, and it is part of what makes the task hard.

Difficulty (seed 0, default sizes; chance is 6.25%): logistic regression on the clip's mean and
std log-mel gets 23% on `eval` and 39% on `eval_seen`; the tiny ViT of the demo recipe (width
192, depth 4, AdamW 1e-3, batch 64, 8 epochs, no augmentation) 29% and 53%.

Audio is rendered at 16 kHz mono, `SynthSource` holds every parameter of one clip (no randomness
left at render time) and rendering is bit-identical for a given seed, in any process, in any order.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c2fdata.datasets.base import Clip, DatasetSpec
from c2fdata.features import BadClip, FbankConfig
from c2fdata.vocab import Vocabulary

FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar",
    "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad",
    "synth effects", "ethnic", "percussive", "sound effects",
)  # fmt: skip
PROGRAMS_PER_FAMILY = 8
EVAL_SLOTS = (1, 5)  # program % 8 in these -> programs held out of training
SPLITS = ("train", "eval", "eval_seen")

# MIDI keys (inclusive) per family: a sensible register for the family, kept wide enough that
# pitch alone does not give the family away.
PITCH_RANGES = {
    "piano": (33, 96),
    "chromatic percussion": (48, 96),
    "organ": (36, 91),
    "guitar": (40, 84),
    "bass": (28, 60),
    "strings": (36, 91),
    "ensemble": (36, 88),
    "brass": (36, 82),
    "reed": (40, 79),
    "pipe": (55, 93),
    "synth lead": (45, 93),
    "synth pad": (36, 84),
    "synth effects": (40, 84),
    "ethnic": (40, 84),
    "percussive": (36, 84),
    "sound effects": (40, 80),
}

SAMPLE_RATE = 16_000
MAX_VOICES = 64  # a 4-note chord of a layered preset, played twice, with releases ringing
SILENT_RMS = 1e-4  # -80 dBFS before loudness normalisation: such a clip is an error, not data
LEVEL_DB_RANGE = (-32.0, -16.0)  # RMS of a returned clip, dBFS
PEAK_MAX = 0.99


def family_of(program: int) -> str:
    return FAMILIES[program // PROGRAMS_PER_FAMILY]


def programs(family: str, split: str) -> tuple[int, ...]:
    """GM programs (0-127, bank 0) of a family that a split draws from."""
    first = FAMILIES.index(family) * PROGRAMS_PER_FAMILY
    slots = range(PROGRAMS_PER_FAMILY)
    if split == "eval":
        return tuple(first + s for s in slots if s in EVAL_SLOTS)
    if split in ("train", "eval_seen"):
        return tuple(first + s for s in slots if s not in EVAL_SLOTS)
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# --- the synthesiser: one SoundFont per process, a fresh cheap clone per clip -------------------


def soundfont_path() -> Path:
    """TimGM6mb.sf2 inside the installed pretty_midi package (found without importing it)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the instruments dataset needs pretty-midi: pip install pretty-midi")
    path = Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"
    if not path.is_file():
        raise RuntimeError(f"{path}: pretty-midi's General MIDI SoundFont is missing")
    return path


@functools.cache
def _soundfont():
    """The parsed SoundFont, loaded once per process (~20 ms) and never played directly."""
    try:
        # The compiled binding that tinysoundfont's own `Synth` wraps. We use it directly because
        # only it can clone a loaded font (a fresh synthesiser state per clip, sharing the
        # samples: ~1 us) and render mono into a caller's buffer; `Synth` would re-parse the file
        # per clip or carry fading voices from one clip into the next.
        from tinysoundfont import _tinysoundfont as tsf
    except ImportError:
        raise RuntimeError(
            "the instruments dataset needs tinysoundfont: pip install --no-deps tinysoundfont"
        ) from None
    return tsf, tsf.SoundFont(str(soundfont_path()))


def render_notes(
    program: int,
    notes: list[tuple[int, int, float, float]],
    n_samples: int,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Play (key, velocity, onset_s, duration_s) notes on GM program `program` (bank 0).

    Returns (n_samples,) float32 mono, unscaled. Always starts from a silent synthesiser, so the
    result depends on the arguments only.
    """
    tsf, font = _soundfont()
    synth = tsf.SoundFont(font)  # shares the samples; new channels and voices
    synth.set_output(tsf.OutputMode.Mono, sample_rate, 0.0)
    synth.set_max_voices(MAX_VOICES)
    synth.channel_set_bank(0, 0)
    synth.channel_set_preset_number(0, program, False)
    events = []  # (sample, 0 = off / 1 = on, key, velocity); offs first when simultaneous
    for key, velocity, onset_s, duration_s in notes:
        start = round(onset_s * sample_rate)
        events.append((start, 1, key, velocity))
        events.append((start + max(1, round(duration_s * sample_rate)), 0, key, 0))
    audio = np.zeros(n_samples, np.float32)
    pos = 0
    for sample, is_on, key, velocity in sorted(events):
        sample = min(sample, n_samples)
        if sample > pos:
            synth.render(audio[pos:sample].view(np.uint8))  # overwrites, no mixing
            pos = sample
        if is_on:
            synth.channel_note_on(0, key, velocity / 127.0)
        else:
            synth.channel_note_off(0, key)
    if pos < n_samples:
        synth.render(audio[pos:].view(np.uint8))
    return audio


@functools.cache
def playable_keys(program: int) -> tuple[int, ...]:
    """Keys of the family's range on which `program` makes sound (a 0.3 s note, velocity 100).

    TimGM6mb maps samples to key zones and a few presets leave keys unmapped (exact silence).
    Probing the font once per process (~4 ms per program) keeps every drawn note audible.
    """
    lo, hi = PITCH_RANGES[family_of(program)]
    n = round(0.4 * SAMPLE_RATE)
    keys = []
    for key in range(lo, hi + 1):
        audio = render_notes(program, [(key, 100, 0.0, 0.3)], n)
        if np.sqrt(np.mean(np.square(audio, dtype=np.float64))) > SILENT_RMS:
            keys.append(key)
    if len(keys) < 12:
        raise RuntimeError(f"GM program {program}: only {len(keys)} audible keys in {lo}-{hi}")
    return tuple(keys)


@dataclass(frozen=True)
class SynthSource:
    """One clip: a phrase on one GM program. Picklable, a few hundred bytes, fully determined."""

    program: int  # GM program 0-127 (bank 0)
    keys: tuple[int, ...]  # MIDI key per note
    velocities: tuple[int, ...]  # 1-127 per note
    onsets_s: tuple[float, ...]
    durations_s: tuple[float, ...]  # from note-on to note-off; the release rings on after
    clip_seconds: float
    level_db: float  # RMS level of the returned audio, dBFS
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        lengths = {len(v) for v in (self.keys, self.velocities, self.onsets_s, self.durations_s)}
        if lengths == {0} or len(lengths) > 1:
            raise ValueError(
                f"{self!r}: keys, velocities, onsets_s and durations_s must align, non-empty"
            )
        if not 0 <= self.program < 128:
            raise ValueError(f"GM program must be in 0-127, got {self.program}")

    @property
    def n_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    def __call__(self) -> tuple[np.ndarray, int]:
        notes = list(zip(self.keys, self.velocities, self.onsets_s, self.durations_s))
        audio = render_notes(self.program, notes, self.n_samples, self.sample_rate)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        if not rms > SILENT_RMS:  # also catches NaN
            raise BadClip("silent", f"{self}: rendered RMS {rms:.2e}")
        gain = min(10 ** (self.level_db / 20) / rms, PEAK_MAX / float(np.abs(audio).max()))
        return (audio * np.float32(gain)).astype(np.float32, copy=False), self.sample_rate

    def __str__(self) -> str:
        return f"GM program {self.program} ({family_of(self.program)}), {len(self.keys)} notes"


# --- phrases -------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options) -> int:
    return int(options[rng.integers(len(options))])


def _walk(rng: np.random.Generator, keys: tuple[int, ...], n: int) -> list[int]:
    """A melodic random walk over the playable keys, reflected at the ends of the range."""
    lo, hi = keys[0], keys[-1]
    out = [_pick(rng, keys)]
    for _ in range(n - 1):
        k = out[-1] + int(rng.integers(-7, 8))
        k = lo + abs(k - lo) if k < lo else hi - abs(k - hi) if k > hi else k
        out.append(_nearest(keys, k))
    return out


def _nearest(keys: tuple[int, ...], k: int) -> int:
    """The key of `keys` (sorted) closest to k, the lower one on a tie."""
    i = bisect.bisect_left(keys, k)
    if i == len(keys) or (i > 0 and k - keys[i - 1] <= keys[i] - k):
        return keys[i - 1]
    return keys[i]


def draw_phrase(rng: np.random.Generator, program: int, clip_seconds: float) -> list[tuple]:
    """(key, velocity, onset_s, duration_s) notes of one phrase; see the module docstring."""
    keys = playable_keys(program)
    latest_onset = clip_seconds - 0.2
    t0 = rng.uniform(0.0, 0.25)
    style = rng.choice(3, p=[0.5, 0.3, 0.2])
    notes = []  # (key, onset, duration)
    if style == 0:  # melody
        t = t0
        for key in _walk(rng, keys, int(rng.integers(3, 7))):
            ioi = rng.uniform(0.15, 0.55)
            notes.append((key, t, ioi * rng.uniform(0.5, 1.3)))
            t += ioi
    elif style == 1:  # chord, once or twice
        root = _pick(rng, keys)
        above = rng.choice([3, 4, 5, 7, 10, 12], size=int(rng.integers(1, 4)), replace=False)
        chord = [root] + [root + int(i) for i in np.sort(above) if root + int(i) in keys]
        t = t0
        for _ in range(int(rng.integers(1, 3))):
            hold = rng.uniform(0.5, 1.8)
            for i, key in enumerate(chord):
                notes.append((key, t + i * rng.uniform(0.0, 0.04 / len(chord)), hold))
            t += hold + rng.uniform(0.0, 0.3)
    else:  # long notes
        t = t0
        for key in _walk(rng, keys, int(rng.integers(1, 3))):
            hold = rng.uniform(0.8, 2.0)
            notes.append((key, t, hold))
            t += hold
    level = rng.uniform(50, 120)
    out = []
    for key, onset, duration in notes:
        if onset > latest_onset and out:
            break
        velocity = min(127, max(1, round(level + rng.uniform(-10, 10))))
        out.append((key, velocity, round(float(onset), 4), round(float(duration), 4)))
    return out


def make_source(
    seed: int, split: str, index: int, program: int, clip_seconds: float
) -> SynthSource:
    """Clip `index` of `split`: its phrase depends on (seed, split, index) only."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    keys, velocities, onsets, durations = zip(*draw_phrase(rng, program, clip_seconds))
    return SynthSource(
        program=program,
        keys=keys,
        velocities=velocities,
        onsets_s=onsets,
        durations_s=durations,
        clip_seconds=clip_seconds,
        level_db=round(float(rng.uniform(*LEVEL_DB_RANGE)), 2),
    )


# --- the dataset ---------------------------------------------------------------------------------


def target_frames_for(clip_seconds: float, cfg: FbankConfig = FbankConfig()) -> int:
    """Smallest multiple of 16 (the patch size) >= the Kaldi frames of one clip."""
    frames = cfg.n_frames(round(clip_seconds * cfg.sample_rate))
    return 16 * math.ceil(frames / 16)


def _split_clips(seed: int, split: str, n: int, clip_seconds: float) -> list[Clip]:
    clips = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        pool = programs(family, split)
        program = pool[(i // len(FAMILIES)) % len(pool)]
        clips.append(
            Clip(
                id=f"{split}/{i:05d}_p{program:03d}",
                split=split,
                labels=(family,),
                source=make_source(seed, split, i, program, clip_seconds),
            )
        )
    return clips


def prepare_instruments(
    root=None,
    *,
    seed: int = 0,
    n_train: int = 3200,
    n_eval: int = 1600,
    n_eval_seen: int = 800,
    clip_seconds: float = 2.5,
    **_,
) -> DatasetSpec:
    """The instruments dataset (no files: `root` is ignored). Clip i of a split has family
    i % 16, so every split is balanced; a split asked for 0 clips is left out."""
    if n_train < 1 or n_eval < 0 or n_eval_seen < 0:
        raise ValueError(
            "need n_train >= 1, n_eval >= 0, n_eval_seen >= 0; "
            f"got {n_train}, {n_eval}, {n_eval_seen}"
        )
    if not 1.0 <= clip_seconds <= 60.0:
        raise ValueError(f"clip_seconds must be within 1-60 s, got {clip_seconds}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    sizes = {"train": n_train, "eval": n_eval, "eval_seen": n_eval_seen}
    clips = {s: _split_clips(seed, s, n, clip_seconds) for s, n in sizes.items() if n > 0}
    train_programs = [p for f in FAMILIES for p in programs(f, "train")]
    eval_programs = [p for f in FAMILIES for p in programs(f, "eval")]
    return DatasetSpec(
        name="instruments",
        vocabulary=Vocabulary.from_names(FAMILIES),
        multi_label=False,
        target_frames=target_frames_for(clip_seconds),
        clips=clips,
        notes=[
            f"rendered from {soundfont_path().name} (pretty-midi) by tinysoundfont, seed {seed}, "
            f"{clip_seconds} s phrases at {SAMPLE_RATE} Hz",
            f"train and eval_seen programs: {train_programs}",
            f"eval programs (never in training): {eval_programs}",
        ],
    )
