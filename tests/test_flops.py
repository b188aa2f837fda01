import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from c2ftrain.flops import (
    forward_flops,
    forward_flops_by_part,
    measured_flops,
    train_step_flops,
)
from c2ftrain.model import AST, ASTConfig, ast_config

T = 256
# (frames, time_patch, time_stride) per phase kind: full, Frame-Shift/Pooling T/C, Patch method.
RESOLUTIONS = [
    (T, None, None), (T // 2, None, None), (T // 3, None, None), (T // 4, None, None),
    (T, 32, "2s"), (T, 48, "3s"),
]  # fmt: skip


def small_cfg(stride, **kw):
    base = dict(target_frames=T, patch_stride=(stride, stride), embed_dim=32, depth=2,
                num_heads=2, num_classes=7)  # fmt: skip
    return ast_config("tiny", **{**base, **kw})


def at_resolution(cfg, frames, patch, stride):
    stride = None if stride is None else int(stride[0]) * cfg.patch_stride[1]
    torch.manual_seed(0)
    model = AST(cfg)
    model.set_time_resolution(frames, time_patch=patch, time_stride=stride)
    return model, stride


def counted(model, x, backward=False):
    """FlopCounterMode's own count. CPU's fused attention kernel has no formula there (it would
    count 0), so attention runs on the math backend, whose two bmm torch counts itself."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("stride", [10, 16])
@pytest.mark.parametrize("frames,patch,stride_mult", RESOLUTIONS)
def test_forward_equals_flop_counter(stride, frames, patch, stride_mult):
    cfg = small_cfg(stride)
    model, time_stride = at_resolution(cfg, frames, patch, stride_mult)
    x = torch.randn(3, frames, 128)
    assert cfg.num_tokens(frames, patch, time_stride) == model.num_tokens
    analytic = forward_flops(cfg, frames, patch, time_stride, batch=3)
    assert counted(model.eval(), x) == analytic
    assert measured_flops(model, x) == analytic


@pytest.mark.parametrize("frames,patch,stride_mult", [RESOLUTIONS[i] for i in (0, 3, 4)])
def test_train_step_convention(frames, patch, stride_mult):
    """Our train step is 3 x forward; FlopCounterMode sees exactly that minus the patch conv's
    input gradient, which nobody needs (the spectrogram is not a parameter)."""
    cfg = small_cfg(16, mlp_ratio=2.0, num_heads=4)
    model, time_stride = at_resolution(cfg, frames, patch, stride_mult)
    x = torch.randn(2, frames, 128)
    parts = forward_flops_by_part(cfg, frames, patch, time_stride, batch=2)
    step = train_step_flops(cfg, frames, patch, time_stride, batch=2)
    assert step == 3 * sum(parts.values())
    assert counted(model.train(), x, backward=True) == step - parts["patch_embed"]


def test_hand_computed_single_token_model():
    # 1 mel band x 16 frames, one 1x16 patch: 3 tokens, D = 4, MLP 8, 2 classes, 1 block.
    cfg = ASTConfig(n_mels=1, target_frames=16, patch_size=(1, 16), patch_stride=(1, 16),
                    embed_dim=4, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=2)  # fmt: skip
    n, d = 3, 4
    want = (2 * 1 * 16 * d  # patch conv, one patch
            + 2 * n * d * 3 * d  # qkv
            + 2 * 2 * n * n * d  # QK^T and AV
            + 2 * n * d * d  # proj
            + 2 * 2 * n * d * 8  # fc1 + fc2
            + 2 * d * 2)  # head, once per clip  # fmt: skip
    assert forward_flops(cfg, 16) == want
    assert forward_flops(cfg, 16, batch=5) == 5 * want


def test_ast_reference_token_counts_and_savings():
    cfg = ASTConfig()  # AST-base, AudioSet: 1024 frames, stride 10
    assert cfg.num_tokens(1024) == 2 + 12 * 101
    assert ASTConfig(patch_stride=(16, 16)).num_tokens(1024) == 2 + 8 * 64
    # Quartering the tokens saves more than three quarters of attention, less of the rest.
    full, coarse = forward_flops_by_part(cfg, 1024), forward_flops_by_part(cfg, 256)
    assert coarse["attention"] < full["attention"] / 4 * 1.01
    assert full["head"] == coarse["head"]
    # Linear layers scale with tokens, attention with their square: the ratio lies between.
    token_ratio = cfg.num_tokens(1024) / cfg.num_tokens(256)
    assert token_ratio < forward_flops(cfg, 1024) / forward_flops(cfg, 256) < token_ratio**2
