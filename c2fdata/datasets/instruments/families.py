"""The classes and splits of `instruments`: General MIDI families, and which programs a split plays.

Classes: the 16 General MIDI families of 8 programs each (program // 8), in GM order. Every split
is balanced over families; programs cycle within a family:
- `train`: programs whose slot in their family (program % 8) is NOT in `EVAL_SLOTS` = (1, 5),
  i.e. 6 programs per family, 96 in all.
- `eval`: the other 2 programs per family (32 programs NEVER heard in training: 1, 5, 9, 13,
  ..., 121, 125), so that accuracy measures generalisation to unseen instruments of a family.
- `eval_seen`: new phrases from the training programs (held-out clips, seen instruments).
"""

from __future__ import annotations

__all__ = [
    "FAMILIES", "PROGRAMS_PER_FAMILY", "GM_PROGRAMS", "EVAL_SLOTS", "SPLITS", "PITCH_RANGES",
    "family_of", "programs",
]

FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar",
    "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad",
    "synth effects", "ethnic", "percussive", "sound effects",
)  # fmt: skip
PROGRAMS_PER_FAMILY = 8
GM_PROGRAMS = len(FAMILIES) * PROGRAMS_PER_FAMILY  # 128 melodic presets, bank 0
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
