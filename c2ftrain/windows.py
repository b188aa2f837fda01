"""Scoring a recording longer than the model's clips: consecutive windows of the model's length
that cover it, the last one ending at its end, each scored, the scores averaged (the usual way to
tag a recording longer than the clips a tagger was trained on). `c2ftrain predict` scores audio
files so; `c2ftrain eval --windows` scores a store's clips so, over all their stored frames."""

from __future__ import annotations

import torch

from c2fdata.features import pad_or_crop


def window_starts(frames: int, window: int) -> list[int]:
    """First frames of the windows that cover `frames`: consecutive, the last one ending at the
    end (overlapping its neighbour where the length is not a multiple); [0] for a short clip."""
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, window))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def windows(feats: torch.Tensor, window: int) -> torch.Tensor:
    """(T, F) -> (n, window, F): the windows covering T frames; a clip shorter than one window is
    zero-padded at the end, as the store pads."""
    return torch.stack([pad_or_crop(feats[s:s + window], window)[0] for s in window_starts(len(feats), window)])
