"""Temporal compression of a 10 ms fbank at load time: the torch reference (see docs/METHOD.md).

Every other path (the DALI graph, the torch loader) is tested against these functions. They work
on `(T, F)` and `(B, T, F)` (time is always axis -2) for any integer factor C >= 1.

Tail rule, one for all methods: `compress(x, method, C)` returns exactly `T // C` frames.
- Pooling groups frames `[k*C, (k+1)*C)` for `k < T // C`; a tail of `T % C` frames that does not
  fill a group is dropped (never padded: a padded group would mix real frames with zeros).
- Frame-Shift keeps frames `offset + k*C` for `k < T // C`. `frame_shift` alone returns every
  selected frame, `ceil((T - offset) / C)` of them, which is what Kaldi returns for a hop of
  10*C ms on the same audio (offset 0; checked to max abs diff 0.0 for C = 2, 3, 4, 8, and an
  offset of k frames equals that hop on the audio started 10*k ms later; tests/test_compress.py).
  `compress` crops that to `T // C` (it is never shorter, for any offset in [0, C)) so that a
  phase has one length whatever the random offset.
A phase's length is therefore `compressed_frames(target_frames, method, C) == target_frames // C`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the frame arithmetic below is imported where torch is not
    import torch

__all__ = ["METHODS", "frame_shift", "pool", "compress", "compressed_frames", "check_phase"]

METHODS = ("none", "fshift", "pool-avg", "pool-max")


def check_phase(method: str, factor: int, offset: int = 0) -> None:
    """ValueError unless (method, factor, offset) is a valid compression."""
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"compression factor must be an integer >= 1, got {factor!r}")
    if method == "none" and factor != 1:
        raise ValueError(f"method 'none' takes factor 1, got {factor}; use 'fshift' or 'pool-avg'/'pool-max'")
    if not 0 <= offset < factor:
        raise ValueError(f"offset must be in [0, {factor}) for factor {factor}, got {offset}")
    if offset and method != "fshift":
        raise ValueError(f"a start offset applies to 'fshift' only, not {method!r}")


def compressed_frames(target_frames: int, method: str, factor: int) -> int:
    """Frames of a phase: `target_frames // factor`; ValueError when that is 0 (or invalid)."""
    check_phase(method, factor)
    if target_frames < 1:
        raise ValueError(f"target_frames must be >= 1, got {target_frames}")
    frames = target_frames // factor
    if frames == 0:
        raise ValueError(
            f"compressing {target_frames} frames by C={factor} ({method}) leaves 0 frames; "
            f"use a factor <= {target_frames} or a longer target length"
        )
    return frames


def _check_input(x: torch.Tensor) -> None:
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (T, F) or (B, T, F), got shape {tuple(x.shape)}")


def frame_shift(x: torch.Tensor, factor: int, offset: int = 0) -> torch.Tensor:
    """Every `factor`-th frame from `offset`: (..., T, F) -> (..., ceil((T - offset) / C), F).

    Equals Kaldi fbank with frame_shift = 10*C ms on the same audio when x is the 10 ms fbank
    and offset is 0. Returns a view.
    """
    _check_input(x)
    check_phase("fshift", factor, offset)
    return x[..., offset::factor, :]


def pool(x: torch.Tensor, factor: int, mode: str = "avg") -> torch.Tensor:
    """Average or max over non-overlapping groups of C frames: (..., T, F) -> (..., T // C, F).

    The tail of T % C frames is dropped. "avg" wants float32 input (float16 sums lose bits).
    """
    _check_input(x)
    if mode not in ("avg", "max"):
        raise ValueError(f"pool mode must be 'avg' or 'max', got {mode!r}")
    check_phase("pool-" + mode, factor)
    groups = x.shape[-2] // factor
    grouped = x[..., : groups * factor, :].unflatten(-2, (groups, factor))  # (..., T/C, C, F)
    if mode == "max":
        return grouped.amax(dim=-2)
    # The mean as sum * (1/C) in x's dtype: how DALI's reductions.mean computes it, so that the
    # two paths agree bit for bit (torch's mean divides; the two differ by at most one ulp).
    return grouped.sum(dim=-2) * (1.0 / factor)


def compress(x: torch.Tensor, method: str, factor: int, offset: int = 0) -> torch.Tensor:
    """(..., T, F) -> (..., T // C, F) by `method` (see the module's tail rule)."""
    _check_input(x)
    check_phase(method, factor, offset)
    if method == "none":
        return x
    if method == "fshift":
        return frame_shift(x, factor, offset)[..., : x.shape[-2] // factor, :]
    return pool(x, factor, method.removeprefix("pool-"))
