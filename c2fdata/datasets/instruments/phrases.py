"""The musical phrase of each clip, drawn from `numpy.random.default_rng([seed, split, index])`.

A clip therefore does not depend on how many clips are asked for, nor on the order they are
drawn or rendered in. A phrase:
- style: melody (50%: 3-6 notes, a random walk of -7..+7 semitones, 0.15-0.55 s between onsets,
  legato or detached), chord (30%: 2-4 notes stacked from 3, 4, 5, 7, 10 or 12 semitones,
  strummed over up to 40 ms, held 0.5-1.8 s, played once or twice), or long notes (20%: 1-2
  notes of 0.8-2.0 s);
- pitch: MIDI keys inside the family's range (`PITCH_RANGES`), and only keys on which that
  preset actually sounds (`playable_keys`);
- timing: first onset in 0-0.25 s; notes that would start in the last 0.2 s are dropped;
  releases ring on and are cut at the clip end;
- velocity: a phrase level of 50-120 with +-10 per note;
- loudness: an RMS level of -32 to -16 dBFS for the whole clip (`SynthSource` applies it).

Every constant below is part of the dataset: changing one changes every clip.
"""

from __future__ import annotations

import bisect

import numpy as np

from c2fdata.datasets.instruments.families import SPLITS
from c2fdata.datasets.instruments.synth import MIDI_MAX, SynthSource, playable_keys

__all__ = ["draw_phrase", "make_source", "LEVEL_DB_RANGE"]

# Ranges are (low, high), both included for counts and semitones, as `uniform` draws for times.
STYLE_WEIGHTS = (0.5, 0.3, 0.2)  # melody, chord, long notes
MELODY, CHORD = 0, 1  # indices into STYLE_WEIGHTS (the last one: long notes)
FIRST_ONSET_S = (0.0, 0.25)
LAST_ONSET_MARGIN_S = 0.2  # notes starting later than this before the clip end are dropped
MELODY_NOTES = (3, 6)
MELODY_MAX_STEP = 7  # semitones up or down from one melody note to the next
MELODY_IOI_S = (0.15, 0.55)  # inter-onset interval
MELODY_ARTICULATION = (0.5, 1.3)  # duration / inter-onset interval: detached .. legato
CHORD_INTERVALS = (3, 4, 5, 7, 10, 12)  # semitones above the root
CHORD_EXTRA_NOTES = (1, 3)  # notes above the root, before those outside the playable keys go
CHORD_PLAYS = (1, 2)
CHORD_HOLD_S = (0.5, 1.8)
CHORD_STRUM_S = 0.04  # the whole chord's notes start within this
CHORD_GAP_S = (0.0, 0.3)  # between two plays of the chord
LONG_NOTES = (1, 2)
LONG_HOLD_S = (0.8, 2.0)
VELOCITY_LEVEL = (50, 120)  # the phrase's level
VELOCITY_SPREAD = 10  # +- per note around the phrase's level
LEVEL_DB_RANGE = (-32.0, -16.0)  # RMS of a returned clip, dBFS
TIME_DECIMALS = 4  # onsets and durations kept to 0.1 ms: short, exact parameters
LEVEL_DECIMALS = 2


def _count(rng: np.random.Generator, low_high: tuple[int, int]) -> int:
    """A uniform integer in [low, high]."""
    low, high = low_high
    return int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options) -> int:
    return int(options[rng.integers(len(options))])


def _walk(rng: np.random.Generator, keys: tuple[int, ...], n: int) -> list[int]:
    """A melodic random walk over the playable keys, reflected at the ends of the range."""
    lo, hi = keys[0], keys[-1]
    out = [_pick(rng, keys)]
    for _ in range(n - 1):
        k = out[-1] + int(rng.integers(-MELODY_MAX_STEP, MELODY_MAX_STEP + 1))
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
    latest_onset = clip_seconds - LAST_ONSET_MARGIN_S
    t0 = rng.uniform(*FIRST_ONSET_S)
    style = rng.choice(len(STYLE_WEIGHTS), p=list(STYLE_WEIGHTS))
    notes = []  # (key, onset, duration)
    if style == MELODY:
        t = t0
        for key in _walk(rng, keys, _count(rng, MELODY_NOTES)):
            ioi = rng.uniform(*MELODY_IOI_S)
            notes.append((key, t, ioi * rng.uniform(*MELODY_ARTICULATION)))
            t += ioi
    elif style == CHORD:
        root = _pick(rng, keys)
        above = rng.choice(list(CHORD_INTERVALS), size=_count(rng, CHORD_EXTRA_NOTES), replace=False)
        chord = [root] + [root + int(i) for i in np.sort(above) if root + int(i) in keys]
        t = t0
        for _ in range(_count(rng, CHORD_PLAYS)):
            hold = rng.uniform(*CHORD_HOLD_S)
            for i, key in enumerate(chord):
                notes.append((key, t + i * rng.uniform(0.0, CHORD_STRUM_S / len(chord)), hold))
            t += hold + rng.uniform(*CHORD_GAP_S)
    else:  # long notes
        t = t0
        for key in _walk(rng, keys, _count(rng, LONG_NOTES)):
            hold = rng.uniform(*LONG_HOLD_S)
            notes.append((key, t, hold))
            t += hold
    level = rng.uniform(*VELOCITY_LEVEL)
    out = []
    for key, onset, duration in notes:
        if onset > latest_onset and out:
            break
        velocity = min(MIDI_MAX, max(1, round(level + rng.uniform(-VELOCITY_SPREAD, VELOCITY_SPREAD))))
        out.append((key, velocity, round(float(onset), TIME_DECIMALS), round(float(duration), TIME_DECIMALS)))
    return out


def make_source(seed: int, split: str, index: int, program: int, clip_seconds: float) -> SynthSource:
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
        level_db=round(float(rng.uniform(*LEVEL_DB_RANGE)), LEVEL_DECIMALS),
    )
