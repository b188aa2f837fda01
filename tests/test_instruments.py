"""The embedded `instruments` dataset: deterministic, balanced, audible, the right shape."""

import multiprocessing
import pickle
from collections import Counter

import numpy as np
import pytest

from c2fdata.datasets.base import DatasetSpec
from c2fdata.datasets.instruments import (
    FAMILIES,
    SynthSource,
    playable_keys,
    prepare_instruments,
    target_frames_for,
)
from c2fdata.features import BadClip, FbankConfig, fbank

SMALL = dict(n_train=48, n_eval=32, n_eval_seen=16)  # 3 / 2 / 1 clips per family


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return prepare_instruments(seed=0, **SMALL)


@pytest.fixture(scope="module")
def audio(spec) -> dict[str, tuple[np.ndarray, int]]:
    return {c.id: c.source() for clips in spec.clips.values() for c in clips}


def test_spec_contract(spec):
    assert spec.name == "instruments"
    assert not spec.multi_label
    assert spec.vocabulary.names == FAMILIES and len(spec.vocabulary) == 16
    assert spec.target_frames == 256
    assert {s: len(c) for s, c in spec.clips.items()} == {"train": 48, "eval": 32, "eval_seen": 16}
    for split, clips in spec.clips.items():
        assert all(c.split == split and len(c.labels) == 1 for c in clips)
        assert all(c.labels[0] in spec.vocabulary for c in clips)


def test_target_frames_is_honoured():
    """--target-frames, as for every dataset: the clips are then cropped or padded to it."""
    assert prepare_instruments(seed=0, n_train=16, n_eval=0, n_eval_seen=0, target_frames=128).target_frames == 128


def test_classes_balanced_and_all_present_in_train(spec):
    for split, clips in spec.clips.items():
        counts = Counter(c.labels[0] for c in clips)
        assert set(counts) == set(FAMILIES), split
        assert len(set(counts.values())) == 1, (split, counts)


def test_label_is_the_programs_gm_family(spec):
    for clips in spec.clips.values():
        for c in clips:
            assert c.labels[0] == FAMILIES[c.source.program // 8]


def test_eval_programs_never_in_training(spec):
    full = prepare_instruments(seed=0, n_train=96 * 2, n_eval=32 * 2, n_eval_seen=96)
    programs = {s: {c.source.program for c in clips} for s, clips in full.clips.items()}
    assert len(programs["train"]) == 96 and len(programs["eval"]) == 32
    assert not programs["eval"] & programs["train"]
    assert programs["eval_seen"] <= programs["train"]
    for f in range(16):  # 2 unseen programs per family
        assert len({p for p in programs["eval"] if p // 8 == f}) == 2


def test_clip_ids_unique_and_order_deterministic(spec):
    ids = [c.id for clips in spec.clips.values() for c in clips]
    assert len(set(ids)) == len(ids)
    again = prepare_instruments(seed=0, **SMALL)
    assert ids == [c.id for clips in again.clips.values() for c in clips]


def test_audio_finite_audible_right_length_and_rate(audio):
    for clip_id, (a, sr) in audio.items():
        assert sr == 16_000
        assert a.dtype == np.float32 and a.shape == (40_000,), clip_id
        assert np.isfinite(a).all(), clip_id
        rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
        assert 10 ** (-40 / 20) < rms < 10 ** (-14 / 20), (clip_id, rms)
        assert np.abs(a).max() <= 0.99 + 1e-6, clip_id


def test_same_seed_bit_identical_in_any_order(spec, audio):
    again = prepare_instruments(seed=0, **SMALL)
    clips = [c for cl in again.clips.values() for c in cl]
    for c in reversed(clips):  # a different render order must not matter
        a, _ = c.source()
        assert np.array_equal(a, audio[c.id][0]), c.id


def test_different_seeds_differ(spec, audio):
    other = prepare_instruments(seed=1, **SMALL)
    for split, clips in other.clips.items():
        for c, c0 in zip(clips, spec.clips[split]):
            assert c.source != c0.source
            assert not np.array_equal(c.source()[0], audio[c0.id][0])


def test_clip_does_not_depend_on_split_size(spec):
    bigger = prepare_instruments(seed=0, n_train=64, n_eval=0, n_eval_seen=0)
    assert list(bigger.clips) == ["train"]
    assert [c.source for c in bigger.clips["train"][:48]] == [c.source for c in spec.clips["train"]]


def test_source_picklable_small_and_renders_the_same(spec, audio):
    clip = spec.clips["eval"][3]
    blob = pickle.dumps(clip.source)
    assert len(blob) < 1024
    copy = pickle.loads(blob)
    assert copy == clip.source
    assert np.array_equal(copy()[0], audio[clip.id][0])


def _render(source: SynthSource) -> np.ndarray:
    return source()[0]


def test_fresh_worker_process_renders_identically(spec, audio):
    clips = spec.clips["train"][:4]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        rendered = pool.map(_render, [c.source for c in clips])
    for c, a in zip(clips, rendered):
        assert np.array_equal(a, audio[c.id][0]), c.id


def test_fbank_frames(spec, audio):
    cfg = FbankConfig()
    clip = spec.clips["train"][0]
    feats = fbank(*audio[clip.id], cfg, source=clip.id)
    assert tuple(feats.shape) == (248, 128)
    assert feats.shape[0] <= spec.target_frames < feats.shape[0] + 16
    assert bool(feats.isfinite().all())


@pytest.mark.parametrize("seconds, frames", [(2.5, 256), (1.0, 112), (10.24, 1024)])
def test_target_frames_is_next_multiple_of_16(seconds, frames):
    assert target_frames_for(seconds) == frames


def test_every_program_has_audible_keys():
    for program in range(128):
        keys = playable_keys(program)
        assert len(keys) >= 12 and list(keys) == sorted(keys), program


def test_silent_render_is_a_bad_clip():
    # TimGM6mb's Alto Sax (program 65) has no sample on key 64: exact silence.
    assert 64 not in playable_keys(65)
    silent = SynthSource(65, (64,), (100,), (0.0,), (1.0,), clip_seconds=1.0, level_db=-20.0)
    with pytest.raises(BadClip) as err:
        silent()
    assert err.value.reason == "silent"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        prepare_instruments(n_train=0)
    with pytest.raises(ValueError):
        prepare_instruments(clip_seconds=0.1)
    with pytest.raises(ValueError):
        SynthSource(0, (60, 62), (100,), (0.0,), (1.0,), clip_seconds=1.0, level_db=-20.0)


# Phrases of seed 0 as the dataset has always drawn them (melodies and chords): a change to any
# phrase constant or to the order of the draws changes every store built from `instruments`.
KNOWN_PHRASES = {
    "train/00000_p000": (0, (35, 37, 36, 35), (57, 46, 60, 53), (0.1592, 0.6743, 1.1161, 1.6402),
                         (0.5075, 0.413, 0.604, 0.1792), 2.5, -27.2, 16000),
    "train/00016_p002": (2, (66, 69, 66, 69), (99, 93, 95, 96), (0.0336, 0.035, 1.6573, 1.6606),
                         (1.5064, 1.5064, 0.9468, 0.9468), 2.5, -16.79, 16000),
    "eval/00000_p001": (1, (52, 55, 62, 64), (64, 68, 52, 61), (0.2224, 0.2297, 0.2348, 0.2226),
                        (1.5242, 1.5242, 1.5242, 1.5242), 2.5, -26.97, 16000),
    "eval_seen/00000_p000": (0, (71, 77, 72), (91, 87, 87), (0.0202, 0.2163, 0.4137),
                             (0.1494, 0.1582, 0.2424), 2.5, -30.83, 16000),
}


def test_phrases_are_the_known_ones():
    import dataclasses

    spec = prepare_instruments(seed=0, n_train=17, n_eval=1, n_eval_seen=1)
    by_id = {c.id: c.source for clips in spec.clips.values() for c in clips}
    for clip_id, params in KNOWN_PHRASES.items():
        assert dataclasses.astuple(by_id[clip_id]) == params, clip_id


def test_adapter_registered_under_its_import_path():
    from c2fdata.datasets import ADAPTERS, prepare
    from c2fdata.datasets.instruments.synth import SynthSource as FromModule

    assert ADAPTERS["instruments"][0] == "c2fdata.datasets.instruments"
    assert FromModule is SynthSource
    spec = prepare("instruments", None, n_train=16, n_eval=0, n_eval_seen=0)
    assert [len(c) for c in spec.clips.values()] == [16]
