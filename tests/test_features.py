"""Stored features equal torchaudio's Kaldi fbank on the same audio (AST's exact call)."""

import numpy as np
import pytest
import soundfile as sf
import torch

from c2fdata.build import BuildConfig, build_store
from c2fdata.features import BadClip, FbankConfig, fbank
from c2fdata.reader import StoreReader
from c2fdata.torchaudio_compat import kaldi_fbank, resample
from conftest import tone


def ast_fbank(wave_1xn: torch.Tensor) -> torch.Tensor:
    """AST's call, written out as in YuanGongND/ast's dataloader (the reference)."""
    wave_1xn = wave_1xn - wave_1xn.mean()
    return kaldi_fbank(wave_1xn, htk_compat=True, sample_frequency=16000, use_energy=False,
                       window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)


def test_fbank_matches_ast_call():
    x = tone(1.5, seed=3)
    ours = fbank(x, 16000, FbankConfig())
    ref = ast_fbank(torch.from_numpy(x)[None])
    assert ours.shape == (148, 128)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_stored_features_equal_kaldi_fbank_within_float16(esc50_root, tmp_path):
    res = build_store(BuildConfig(dataset="esc50", root=esc50_root, out=tmp_path / "s", options={"fold": 1}))
    assert res.finalized and res.failed == 0
    r = StoreReader(tmp_path / "s", "train")
    for i, clip_id in enumerate(r.ids):
        audio, sr = sf.read(esc50_root / "audio" / f"{clip_id}.wav", dtype="float32")
        wave = resample(torch.from_numpy(audio)[None], sr, 16000)  # fixtures are 44.1 kHz
        ref = ast_fbank(wave).numpy()
        feats, frames, _ = r[i]
        assert frames == ref.shape[0] == 98
        np.testing.assert_allclose(feats[:frames].astype(np.float32), ref, rtol=2**-10, atol=1e-3)
        assert not feats[frames:].any()  # zero padding up to 512, as AST pads


def test_stereo_is_downmixed_not_refused():
    st = tone(1.0, seed=1, channels=2)
    ref = ast_fbank(torch.from_numpy(st.mean(axis=1))[None])
    torch.testing.assert_close(fbank(st, 16000, FbankConfig()), ref)


def test_integer_pcm_is_scaled():
    x = tone(1.0, seed=2)
    pcm = np.round(x * 32767).astype(np.int16)
    ref = ast_fbank(torch.from_numpy(pcm.astype(np.float32) / 32767)[None])
    torch.testing.assert_close(fbank(pcm, 16000, FbankConfig()), ref)


@pytest.mark.parametrize(
    "audio, reason",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.1, np.nan] * 8000, np.float32), "non-finite"),
        (np.ones(100, np.float32), "too-short"),
    ],
)
def test_bad_audio_raises_badclip(audio, reason):
    with pytest.raises(BadClip) as e:
        fbank(audio, 16000, FbankConfig(), source="x.wav")
    assert e.value.reason == reason and "x.wav" in str(e.value)


def test_frame_count_formula_matches_kaldi():
    cfg = FbankConfig()
    for n in (400, 401, 560, 16000, 160000, 12345):
        assert cfg.n_frames(n) == ast_fbank(torch.ones(1, n) + torch.randn(1, n)).shape[0]


def test_samples_so_large_their_features_overflow_are_refused():
    """Finite samples (a float wav written unscaled, ~1e30): fbank's power overflows to inf."""
    from c2fdata.features import BadClip, FbankConfig, fbank

    x = (np.sin(np.arange(8000) / 10) * 1e30).astype(np.float32)
    with pytest.raises(BadClip, match=r"huge.wav: the features are not finite \(peak sample 1e\+30"):
        fbank(x, 16000, FbankConfig(), source="huge.wav")
    assert np.isfinite(fbank(x / 1e30, 16000, FbankConfig()).numpy()).all()


@pytest.mark.parametrize("sr", [16000, 22050])
def test_the_first_frames_alone_equal_the_whole_spectrograms_first_frames(sr):
    """A build keeps target_frames: computing only those (max_frames) must change no bit, the
    mean being still the whole clip's (AST subtracts it before the fbank)."""
    x = (np.random.default_rng(0).standard_normal(sr * 30) * 0.1).astype(np.float32) + 0.05
    whole = fbank(x, sr, FbankConfig())
    for frames in (1024, 128):
        part = fbank(x, sr, FbankConfig(), max_frames=frames)
        assert part.shape[0] == frames and torch.equal(part, whole[:frames])
