"""Resample an AST's learned absolute positional embedding to another (freq, time) token grid.

Token order (the model's patch flattening, see `c2ftrain.model.PatchEmbed`): the patch conv gives
`(B, D, Fg, Tg)` and `.flatten(2)` makes it **freq-major**: token `f * Tg + t` is frequency row
`f`, time column `t`. The positional table is laid out the same way after its prefix tokens:
`(1, num_prefix_tokens + Fg * Tg, D)`.

Sampling positions follow `align_corners=False`: each token is a cell centre. With patch ==
stride this is exactly right for a time compression by C: coarse token j covers the fine tokens
C*j .. C*j + C - 1, whose centre is fine coordinate C*j + (C - 1) / 2, which is where
`align_corners=False` samples. (With overlapping patches it is right up to a fraction of a
token.) Upsampling clamps at the edges: the outermost half-cells repeat the border value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic")


def resample_pos_embed(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 2,
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """(1, P + Fg*Tg, D) on `old_grid` -> (1, P + Fg'*Tg', D) on `new_grid`; prefix rows untouched.

    Grids are (freq rows, time columns) and always explicit: audio grids are not square, so the
    old grid cannot be guessed from the token count. `antialias` only acts when a dimension
    shrinks (bilinear); for bicubic torch uses the PIL kernel (a = -0.5) when it is on.
    Interpolation runs in float32 and the result is cast back to the input dtype.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    old_fg, old_tg = (int(n) for n in old_grid)
    new_fg, new_tg = (int(n) for n in new_grid)
    if min(old_fg, old_tg, new_fg, new_tg) < 1:
        raise ValueError(f"grids must be positive, got old {old_grid}, new {new_grid}")
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"posemb must be (1, tokens, D), got {tuple(posemb.shape)}")
    if posemb.shape[1] != num_prefix_tokens + old_fg * old_tg:
        raise ValueError(
            f"posemb has {posemb.shape[1]} tokens, but old grid {old_fg}x{old_tg} plus "
            f"{num_prefix_tokens} prefix tokens makes {num_prefix_tokens + old_fg * old_tg}"
        )
    if (new_fg, new_tg) == (old_fg, old_tg):
        return posemb

    dtype = posemb.dtype
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_fg, old_tg, dim).permute(0, 3, 1, 2)  # (1, D, Fg, Tg)
    grid = F.interpolate(
        grid, size=(new_fg, new_tg), mode=interpolation, align_corners=False, antialias=antialias
    )  # (1, D, Fg', Tg')
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_fg * new_tg, dim).to(dtype)  # freq-major
    return torch.cat([prefix, grid], dim=1)
