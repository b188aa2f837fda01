"""Rendering notes on a General MIDI preset, and `SynthSource`: one clip's audio, fully determined.

The SoundFont is `TimGM6mb.sf2`, which pretty-midi's wheel ships (128 melodic presets in bank 0);
tinysoundfont renders it at 16 kHz mono. The font is parsed once per process and cloned per
clip, so a clip always starts from a silent synthesiser: rendering is bit-identical for the
same arguments, in any process, in any order.

All 128 presets sound. The quietest are Breath Noise, Helicopter and Applause (about -45 dBFS at
velocity 100, raised by the loudness step of `SynthSource`) and Reverse Cymbal (a slow swell).
Some presets leave keys unmapped (exact silence: Alto Sax has no sample on key 64, Whistle and
Bari Sax stop near key 80, Seashore covers 36-87), hence `playable_keys`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c2fdata.datasets.instruments.families import GM_PROGRAMS, PITCH_RANGES, family_of
from c2fdata.features import BadClip

__all__ = ["SAMPLE_RATE", "soundfont_path", "render_notes", "rms", "playable_keys", "SynthSource"]

SAMPLE_RATE = 16_000
MAX_VOICES = 64  # a 4-note chord of a layered preset, played twice, with releases ringing
MIDI_MAX = 127  # the largest MIDI velocity
SILENT_RMS = 1e-4  # -80 dBFS before loudness normalisation: such a clip is an error, not data
PEAK_MAX = 0.99  # loudness normalisation never drives a sample past this (no clipping)

# `playable_keys` plays each key once and listens: a note of PROBE_NOTE_S at PROBE_VELOCITY,
# heard over PROBE_CLIP_S (the attack of every preset falls well inside it).
PROBE_VELOCITY = 100
PROBE_NOTE_S = 0.3
PROBE_CLIP_S = 0.4
MIN_PLAYABLE_KEYS = 12  # at least an octave, or a family's melodies would be a few notes


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
            synth.channel_note_on(0, key, velocity / MIDI_MAX)
        else:
            synth.channel_note_off(0, key)
    if pos < n_samples:
        synth.render(audio[pos:].view(np.uint8))
    return audio


def rms(audio: np.ndarray) -> float:
    """Root mean square, accumulated in float64."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@functools.cache
def playable_keys(program: int) -> tuple[int, ...]:
    """Keys of the family's range on which `program` makes sound (see PROBE_*).

    TimGM6mb maps samples to key zones and a few presets leave keys unmapped (exact silence).
    Probing the font once per process (~4 ms per program) keeps every drawn note audible.
    """
    lo, hi = PITCH_RANGES[family_of(program)]
    n = round(PROBE_CLIP_S * SAMPLE_RATE)
    keys = []
    for key in range(lo, hi + 1):
        audio = render_notes(program, [(key, PROBE_VELOCITY, 0.0, PROBE_NOTE_S)], n)
        if rms(audio) > SILENT_RMS:
            keys.append(key)
    if len(keys) < MIN_PLAYABLE_KEYS:
        raise RuntimeError(f"GM program {program}: only {len(keys)} audible keys in {lo}-{hi}")
    return tuple(keys)


@dataclass(frozen=True)
class SynthSource:
    """One clip: a phrase on one GM program, scaled to an RMS level. Picklable, a few hundred
    bytes, fully determined (no randomness left at render time)."""

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
        if not 0 <= self.program < GM_PROGRAMS:
            raise ValueError(f"GM program must be in 0-{GM_PROGRAMS - 1}, got {self.program}")

    @property
    def n_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    def __call__(self) -> tuple[np.ndarray, int]:
        notes = list(zip(self.keys, self.velocities, self.onsets_s, self.durations_s))
        audio = render_notes(self.program, notes, self.n_samples, self.sample_rate)
        level = rms(audio)
        if not level > SILENT_RMS:  # also catches NaN
            raise BadClip("silent", f"{self}: rendered RMS {level:.2e}")
        # loudness carries no information about the family: every clip gets its drawn level,
        # unless that would clip
        gain = min(10 ** (self.level_db / 20) / level, PEAK_MAX / float(np.abs(audio).max()))
        return (audio * np.float32(gain)).astype(np.float32, copy=False), self.sample_rate

    def __str__(self) -> str:
        return f"GM program {self.program} ({family_of(self.program)}), {len(self.keys)} notes"
