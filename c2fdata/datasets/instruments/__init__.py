"""`instruments`: the embedded default dataset, 16 General MIDI instrument families.

No download: every clip is a short musical phrase rendered on the fly from the General MIDI
SoundFont that pretty-midi's wheel ships by tinysoundfont. The task is single-label
classification of the instrument *family* of a phrase. Modules, one job each:
- `families`: the 16 classes, and which GM programs each split plays (`eval` holds 2 programs
  per family out of training, `eval_seen` has new phrases of the training programs);
- `phrases`: the notes, timing, velocity and loudness of each clip, drawn per clip;
- `synth`: rendering notes on a preset (`SynthSource`, one clip's audio);
- `dataset`: the adapter, `prepare_instruments` -> DatasetSpec.

Clips are `clip_seconds` long (2.5 s by default: 248 Kaldi frames at a 10 ms hop, stored padded
to 256). Some presets are near-duplicates (Strings / Slow Strings, Violin / Viola / Fiddle, the
last being "ethnic"): that is the General MIDI standard, and it is part of what makes the task
hard.

Difficulty (seed 0, default sizes; chance is 6.25%): logistic regression on the clip's mean and
std log-mel gets 23% on `eval` and 39% on `eval_seen`; the tiny ViT of the demo recipe (width
192, depth 4, AdamW 1e-3, batch 64, 8 epochs, no augmentation) 29% and 53%.
"""

from c2fdata.datasets.instruments.dataset import prepare_instruments, target_frames_for
from c2fdata.datasets.instruments.families import (
    EVAL_SLOTS,
    FAMILIES,
    PITCH_RANGES,
    PROGRAMS_PER_FAMILY,
    SPLITS,
    family_of,
    programs,
)
from c2fdata.datasets.instruments.phrases import LEVEL_DB_RANGE, draw_phrase, make_source
from c2fdata.datasets.instruments.synth import (
    SAMPLE_RATE,
    SynthSource,
    playable_keys,
    render_notes,
    soundfont_path,
)

__all__ = [
    "prepare_instruments", "target_frames_for", "FAMILIES", "PROGRAMS_PER_FAMILY", "EVAL_SLOTS", "SPLITS",
    "PITCH_RANGES", "family_of", "programs", "draw_phrase", "make_source", "LEVEL_DB_RANGE", "SAMPLE_RATE",
    "SynthSource", "playable_keys", "render_notes", "soundfont_path",
]
