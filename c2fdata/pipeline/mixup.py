"""Mixup as AST's dataset does it: a partner drawn from the whole split, mixed before anything else.

AST (`src/dataloader.py`) mixes, per clip and with probability `mixup`, the clip's waveform with
that of a clip drawn uniformly from the whole training set (possibly itself), lambda ~
Beta(10, 10), cut or padded to the clip's length; then it computes the fbank, pads, masks and
normalises. The store holds the fbank, so c2f mixes the stored log-mel values, in the reader
(`BatchSource.read`), before crop, compression, normalisation and SpecAugment, which keeps AST's
order and makes both backends serve the same mixed clips. Two ways to mix log-mel values a, b:

- "features": l * a + (1 - l) * b, the mix of the log-mel values themselves;
- "power": log(l e^a + (1 - l) e^b), the mix of the mel power spectra, closer to mixing waveforms
  (whose power spectra add, up to the cross terms).

Frames: the mix covers the clip's own frames [0, frames_a), the partner aligned at its first
frame (AST aligns the two waveforms at their first sample); past frames_a the clip keeps its
stored padding (log-mel 0, what AST pads the mixed fbank with). Past its own end the partner is
silence in the power domain (no power: the clip's a + log l there) and its stored padding,
log-mel 0, in the features domain.

Targets mix with the same lambda, l * y_a + (1 - l) * y_b, over (K,) one-hot or multi-hot rows.
Every draw is a function of (seed, epoch, position in the epoch), in its own seed-sequence domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MixParams", "draw_mixup", "mix_features", "mix_labels", "one_hot"]

MIXUP_DOMAIN = 2  # seed-sequence domain of the mixup draws (sampling.py uses 0 and 1)


@dataclass
class MixParams:
    """Per sample of a batch: whether it is mixed, the partner (a clip index of the split) and
    lambda, the clip's own weight (1.0 where it is not mixed)."""

    mixed: np.ndarray  # (B,) bool
    partner: np.ndarray  # (B,) int64
    lam: np.ndarray  # (B,) float64


def draw_mixup(seed: int, epoch: int, positions: np.ndarray, n_clips: int, prob: float,
               alpha: float) -> MixParams:
    """The mixup draws of the samples at `positions` of `epoch`: three per sample, always in the
    same order (use, partner, lambda), whatever prob is."""
    mixed, partner, lam = [], [], []
    for p in positions:
        rng = np.random.default_rng([int(seed), MIXUP_DOMAIN, int(epoch), int(p)])
        use = rng.random() < prob
        mate = int(rng.integers(n_clips))  # uniform over the whole split, itself included (AST's)
        weight = float(rng.beta(alpha, alpha))
        mixed.append(use)
        partner.append(mate)
        lam.append(weight if use else 1.0)
    return MixParams(np.asarray(mixed, bool), np.asarray(partner, np.int64), np.asarray(lam, np.float64))


def mix_features(a: np.ndarray, frames_a: int, b: np.ndarray, frames_b: int, lam: float,
                 domain: str) -> np.ndarray:
    """Stored (T, F) log-mel clips a (the clip) and b (its partner) -> (T, F) float32, mixed over
    a's frames (see the module docstring for the frame rule)."""
    out = np.asarray(a, np.float32).copy()
    n = min(int(frames_a), out.shape[0])
    x = out[:n]
    y = np.zeros_like(x)
    m = min(n, int(frames_b), b.shape[0])
    y[:m] = b[:m]  # the partner cut or padded to the clip's length, aligned at the start
    l = np.float32(lam)
    if domain == "features":
        out[:n] = l * x + (np.float32(1) - l) * y
    elif domain == "power":
        # a weight that rounds to 0 in float32 (tiny mixup_alpha) would make log(l) -inf below
        l = max(l, np.finfo(np.float32).tiny)
        mixed = np.logaddexp(x + np.log(l), y + np.log(np.float32(1) - l))  # log(l e^x + (1 - l) e^y)
        mixed[m:] = x[m:] + np.log(l)  # past the partner's end: silence, no power of its own
        out[:n] = mixed
    else:
        raise ValueError(f"unknown mixup domain {domain!r}; choose features or power")
    return out


def one_hot(label: np.ndarray, n_classes: int) -> np.ndarray:
    """A label as stored ((K,) multi-hot, or a class index) -> (K,) float32."""
    label = np.asarray(label)
    if label.ndim == 1:
        return label.astype(np.float32)
    out = np.zeros(n_classes, np.float32)
    out[int(label)] = 1.0
    return out


def mix_labels(ya: np.ndarray, yb: np.ndarray, lam: float, n_classes: int) -> np.ndarray:
    """l * y_a + (1 - l) * y_b as (K,) float32 (AST's targets)."""
    l = np.float32(lam)
    return l * one_hot(ya, n_classes) + (np.float32(1) - l) * one_hot(yb, n_classes)
