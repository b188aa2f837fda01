"""The `instruments` adapter: splits of rendered phrases -> DatasetSpec (no files, no download)."""

from __future__ import annotations

import math

from c2fdata.datasets.base import Clip, DatasetSpec
from c2fdata.datasets.instruments.families import FAMILIES, programs
from c2fdata.datasets.instruments.phrases import make_source
from c2fdata.datasets.instruments.synth import SAMPLE_RATE, soundfont_path
from c2fdata.features import FbankConfig
from c2fdata.vocab import Vocabulary

__all__ = ["prepare_instruments", "target_frames_for"]

PATCH_FRAMES = 16  # AST's patch size along time: stored lengths are a whole number of patches
CLIP_SECONDS_RANGE = (1.0, 60.0)  # shorter: barely a note; longer: a store far too big for a demo


def target_frames_for(clip_seconds: float, cfg: FbankConfig = FbankConfig()) -> int:
    """Smallest multiple of the patch size (16) >= the Kaldi frames of one clip."""
    frames = cfg.n_frames(round(clip_seconds * cfg.sample_rate))
    return PATCH_FRAMES * math.ceil(frames / PATCH_FRAMES)


def _split_clips(seed: int, split: str, n: int, clip_seconds: float) -> list[Clip]:
    """Clip i has family i % 16 (every split balanced) and cycles through the family's programs."""
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
    target_frames: int | None = None,
    **_,
) -> DatasetSpec:
    """The instruments dataset (no files: `root` is ignored). Clip i of a split has family
    i % 16, so every split is balanced; a split asked for 0 clips is left out. target_frames:
    frames stored per clip (default: the clip's length, 256 for 2.5 s), cropped or padded as
    every dataset's are."""
    if n_train < 1 or n_eval < 0 or n_eval_seen < 0:
        raise ValueError(
            "need n_train >= 1, n_eval >= 0, n_eval_seen >= 0; "
            f"got {n_train}, {n_eval}, {n_eval_seen}"
        )
    shortest, longest = CLIP_SECONDS_RANGE
    if not shortest <= clip_seconds <= longest:
        raise ValueError(f"clip_seconds must be within {shortest:g}-{longest:g} s, got {clip_seconds}")
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
        target_frames=target_frames or target_frames_for(clip_seconds),
        clips=clips,
        notes=[
            f"rendered from {soundfont_path().name} (pretty-midi) by tinysoundfont, seed {seed}, "
            f"{clip_seconds} s phrases at {SAMPLE_RATE} Hz",
            f"train and eval_seen programs: {train_programs}",
            f"eval programs (never in training): {eval_programs}",
        ],
    )
