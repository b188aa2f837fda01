"""The torch reference of load-time compression: shapes, tail rule, values, Kaldi equivalence."""

import math

import pytest
import torch

from c2fdata.compress import METHODS, compress, compressed_frames, frame_shift, pool
from c2fdata.features import FbankConfig
from c2fdata.torchaudio_compat import kaldi_fbank

FACTORS = [1, 2, 3, 4]
LENGTHS = [12, 13, 14]  # 12: every C divides it; 13 and 14: a tail for C = 2, 3, 4 (or some of them)


def features(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 4 - 4


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("frames", LENGTHS)
def test_frame_shift_selects_every_cth_frame(factor, frames):
    x = features(frames, 5)
    for offset in range(factor):
        y = frame_shift(x, factor, offset)
        assert y.shape == (math.ceil((frames - offset) / factor), 5)
        for k in range(y.shape[0]):
            assert torch.equal(y[k], x[offset + k * factor])


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("frames", LENGTHS)
def test_pool_groups_and_drops_the_tail(factor, frames):
    x = features(frames, 5)
    groups = frames // factor
    avg, mx = pool(x, factor, "avg"), pool(x, factor, "max")
    assert avg.shape == mx.shape == (groups, 5)
    for k in range(groups):
        group = x[k * factor : (k + 1) * factor]
        assert torch.equal(mx[k], group.max(dim=0).values)
        torch.testing.assert_close(avg[k], group.mean(dim=0), rtol=1e-6, atol=1e-6)  # within an ulp
        assert torch.equal(avg[k], group.sum(dim=0) * (1.0 / factor))  # the exact definition


PHASES = [("none", 1)] + [(m, c) for m in METHODS[1:] for c in FACTORS]


@pytest.mark.parametrize("method, factor", PHASES)
@pytest.mark.parametrize("frames", LENGTHS)
def test_compress_serves_t_over_c_frames_batched_or_not(method, factor, frames):
    x = features(3, frames, 6)  # (B, T, F)
    offsets = range(factor) if method == "fshift" else [0]
    for offset in offsets:
        y = compress(x, method, factor, offset)
        assert y.shape == (3, compressed_frames(frames, method, factor), 6) == (3, frames // factor, 6)
        for b in range(3):  # batched == per clip
            assert torch.equal(y[b], compress(x[b], method, factor, offset))
    if method == "fshift":  # the crop to T // C keeps the first frames of the selection
        y = compress(x, "fshift", factor, factor - 1)
        assert torch.equal(y, frame_shift(x, factor, factor - 1)[:, : frames // factor])


def test_factor_one_is_identity():
    x = features(2, 13, 4)
    for method in METHODS:
        assert torch.equal(compress(x, method, 1), x)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: compress(x, "stretch", 2), "unknown compression method 'stretch'"),
        (lambda x: compress(x, "fshift", 0), "integer >= 1"),
        (lambda x: compress(x, "fshift", 2.0), "integer >= 1"),
        (lambda x: compress(x, "none", 2), "'none' takes factor 1"),
        (lambda x: compress(x, "fshift", 2, offset=2), r"offset must be in \[0, 2\)"),
        (lambda x: compress(x, "pool-avg", 2, offset=1), "'fshift' only"),
        (lambda x: pool(x, 2, "min"), "'avg' or 'max'"),
        (lambda x: compress(x[0, 0], "fshift", 2), r"\(T, F\) or \(B, T, F\)"),
    ],
)
def test_bad_arguments_fail_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call(features(2, 8, 3))


def test_compressed_frames():
    assert compressed_frames(1024, "pool-avg", 4) == 256
    assert compressed_frames(1024, "fshift", 3) == 341
    assert compressed_frames(5, "fshift", 5) == 1
    with pytest.raises(ValueError, match=r"leaves 0 frames; use a factor <= 5"):
        compressed_frames(5, "pool-max", 8)
    with pytest.raises(ValueError, match="unknown compression method"):
        compressed_frames(1024, "patch", 2)


@pytest.fixture(scope="module")
def audio():
    """1.73 s at 16 kHz: a chirp in noise, with its mean removed as the store's builder does."""
    t = torch.arange(27_713) / 16_000
    wave = torch.sin(2 * math.pi * (200 + 900 * t) * t) + 0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    wave = wave[None].float()
    return wave - wave.mean()


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_frame_shift_equals_kaldi_fbank_at_a_larger_hop(audio, factor):
    kwargs = FbankConfig().kaldi_kwargs()
    fbank_10ms = kaldi_fbank(audio, **kwargs)  # (T, 128)
    coarse = kaldi_fbank(audio, **{**kwargs, "frame_shift": kwargs["frame_shift"] * factor})
    assert torch.equal(frame_shift(fbank_10ms, factor), coarse)
    # A start offset of k frames is the same hop on the audio started k * 10 ms later.
    hop = FbankConfig().hop_samples
    for offset in range(1, factor):
        later = kaldi_fbank(audio[:, offset * hop :], **{**kwargs, "frame_shift": kwargs["frame_shift"] * factor})
        assert torch.equal(frame_shift(fbank_10ms, factor, offset), later)
