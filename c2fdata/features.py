"""Audio -> AST's Kaldi log-mel filterbank, exactly as AST computes it.

AST's recipe: mono, resampled to 16 kHz, mean removed, then `torchaudio.compliance.kaldi.fbank`
with AST's Kaldi settings (`FbankConfig`: 128 mel bins, 25 ms Hanning window, 10 ms hop, HTK
compatible, no energy, no dither). Stored features are this output in float16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where features are computed: a store's readers (DALI's reader
    import torch  # processes among them) only need FbankConfig, and spawned ones pay every import


class BadClip(Exception):
    """A clip that cannot become features; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FbankConfig:
    """AST's feature settings. Changing any of these makes a different store."""

    sample_rate: int = 16_000
    frame_shift_ms: float = 10.0  # hop; Frame-Shift phases derive 10*C ms hops at load time
    frame_length_ms: float = 25.0  # window
    n_mels: int = 128
    window_type: str = "hanning"
    htk_compat: bool = True
    use_energy: bool = False
    dither: float = 0.0

    def __post_init__(self):
        if self.sample_rate <= 0 or self.n_mels <= 0:
            raise ValueError(f"sample_rate and n_mels must be positive, got {self}")
        # a hop longer than the window is allowed: Frame-Shift at 40/80 ms is exactly Kaldi's output
        if not (self.frame_shift_ms > 0 and self.frame_length_ms > 0):
            raise ValueError(
                f"frame_shift_ms and frame_length_ms must be positive, got {self.frame_shift_ms}, "
                f"{self.frame_length_ms}"
            )

    def kaldi_kwargs(self) -> dict:
        return dict(
            htk_compat=self.htk_compat,
            sample_frequency=self.sample_rate,
            use_energy=self.use_energy,
            window_type=self.window_type,
            num_mel_bins=self.n_mels,
            dither=self.dither,
            frame_shift=self.frame_shift_ms,
            frame_length=self.frame_length_ms,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["call"] = "torchaudio.compliance.kaldi.fbank(waveform - waveform.mean(), **kwargs)"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FbankConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def hop_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    def n_frames(self, n_samples: int) -> int:
        """Frames Kaldi returns for n_samples (snip_edges=True)."""
        if n_samples < self.window_samples:
            return 0
        return 1 + (n_samples - self.window_samples) // self.hop_samples


def to_mono_float(audio: np.ndarray, source: str) -> np.ndarray:
    """(samples,) or (samples, channels) of any dtype -> (samples,) float32, channels averaged."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise BadClip("bad-shape", f"{source}: audio of shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / np.float32(np.iinfo(audio.dtype).max)
    return audio.astype(np.float32, copy=False)


def fbank(audio: np.ndarray, sample_rate: int, cfg: FbankConfig, source: str = "<array>",
          max_frames: int | None = None) -> torch.Tensor:
    """Mono audio at any rate -> (frames, n_mels) float32, AST's recipe.

    Resamples to cfg.sample_rate, removes the mean, runs Kaldi fbank. Raises BadClip for empty,
    non-finite, or too-short (< one window) audio; callers decide whether that is fatal.
    `max_frames`: only the first frames (a build keeps target_frames): the same values, bit for
    bit, without computing an hour-long file's spectrogram for them.
    """
    import torch

    from c2fdata.torchaudio_compat import kaldi_fbank, resample

    audio = to_mono_float(audio, source)
    if audio.size == 0:
        raise BadClip("empty", f"{source}: zero-length audio")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise BadClip("non-finite", f"{source}: {bad} NaN/inf samples")
    wave = torch.from_numpy(np.ascontiguousarray(audio))[None]  # (1, samples)
    if sample_rate != cfg.sample_rate:
        wave = resample(wave, int(sample_rate), cfg.sample_rate)
    if wave.shape[1] < cfg.window_samples:
        raise BadClip(
            "too-short",
            f"{source}: {wave.shape[1]} samples at {cfg.sample_rate} Hz, shorter than one "
            f"{cfg.frame_length_ms} ms window",
        )
    wave = wave - wave.mean()  # over the whole clip, as AST
    if max_frames is not None:  # frames are computed window by window: the first ones need no more samples
        wave = wave[:, :(max_frames - 1) * cfg.hop_samples + cfg.window_samples]
    feats = kaldi_fbank(wave, **cfg.kaldi_kwargs())  # (frames, n_mels)
    if not torch.isfinite(feats).all():  # finite samples so large that their power overflows
        peak = float(np.abs(audio).max())
        raise BadClip("non-finite", f"{source}: the features are not finite (peak sample {peak:.3g}; audio is "
                                    "expected in [-1, 1])")
    return feats


def pad_or_crop(feats: torch.Tensor, target_frames: int) -> tuple[torch.Tensor, int]:
    """(T, F) -> (target_frames, F) zero-padded at the end (as AST pads) or cropped; returns the
    number of real frames kept."""
    t = feats.shape[0]
    if t >= target_frames:
        return feats[:target_frames], target_frames
    out = feats.new_zeros((target_frames, feats.shape[1]))
    out[:t] = feats
    return out, t
