"""Analytic FLOPs of an AST step at a given time resolution: what a coarse phase saves.

Convention (the one of `torch.utils.flop_counter.FlopCounterMode` and of most papers):
- a multiply-accumulate is 2 FLOPs; only matrix products are counted: the patch-embedding conv,
  every linear layer (qkv, attention projection, MLP fc1/fc2, classifier), and attention's two
  batched products Q K^T and A V. Biases, LayerNorm, GELU, softmax, the attention scale,
  dropout, additions and the cls/dist average are not counted (they are O(N*D), the rest
  O(N*D^2) or O(N^2*D)).
- the classifier runs once per clip (on the averaged prefix tokens), not per token.
- a training step = 3 x forward (backward ~ 2 x forward: a gradient for the input and one for
  the weights of each product). Measured backward is a little less: the patch conv needs no
  gradient for its input (the spectrogram), so FlopCounterMode sees 3 x forward - patch_embed.
  The optimizer update is not counted.

`measured_flops` counts a real model with FlopCounterMode. On CPU, torch's fused attention
kernel (`_scaled_dot_product_flash_attention_for_cpu`) has no formula in FlopCounterMode and
would count as 0, so it is measured with the math backend, whose two bmm are counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from c2ftrain.model import NUM_PREFIX_TOKENS, ASTConfig


def forward_flops_by_part(
    cfg: ASTConfig,
    frames: int,
    time_patch: int | None = None,
    time_stride: int | None = None,
    batch: int = 1,
) -> dict[str, int]:
    """Forward FLOPs split into patch_embed, qkv, attention (QK^T + AV), proj, mlp, head."""
    fg, tg = cfg.grid(frames, time_patch, time_stride)
    time_patch = cfg.patch_size[1] if time_patch is None else time_patch
    n, d, h = NUM_PREFIX_TOKENS + fg * tg, cfg.embed_dim, cfg.mlp_hidden
    per_clip = dict(
        patch_embed=2 * fg * tg * d * cfg.patch_size[0] * time_patch,  # 1 input channel
        qkv=cfg.depth * 2 * n * d * 3 * d,
        attention=cfg.depth * 2 * (2 * n * n * d),  # Q K^T and A V, all heads together
        proj=cfg.depth * 2 * n * d * d,
        mlp=cfg.depth * 2 * (2 * n * d * h),  # fc1 and fc2
        head=2 * d * cfg.num_classes,
    )
    return {part: batch * f for part, f in per_clip.items()}


def forward_flops(
    cfg: ASTConfig,
    frames: int,
    time_patch: int | None = None,
    time_stride: int | None = None,
    batch: int = 1,
) -> int:
    return sum(forward_flops_by_part(cfg, frames, time_patch, time_stride, batch).values())


def train_step_flops(
    cfg: ASTConfig,
    frames: int,
    time_patch: int | None = None,
    time_stride: int | None = None,
    batch: int = 1,
) -> int:
    """3 x forward: the convention used for every cumulative-FLOPs curve in the reports."""
    return 3 * forward_flops(cfg, frames, time_patch, time_stride, batch)


def measured_flops(model: nn.Module, x: torch.Tensor, backward: bool = False) -> int:
    """FLOPs FlopCounterMode sees for model(x) (plus .sum().backward() if `backward`)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()
