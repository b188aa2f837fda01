import math

import pytest
import torch
import torch.nn.functional as F

from c2ftrain.model import (
    AST,
    ASTConfig,
    Attention,
    ast_config,
    num_parameters,
    patch_grid,
)

T = 256  # full resolution of the small test models


def small_cfg(stride=16, **kw):
    base = dict(target_frames=T, patch_stride=(stride, stride), embed_dim=32, depth=2,
                num_heads=2, num_classes=5)  # fmt: skip
    return ast_config("tiny", **{**base, **kw})


def small_model(stride=16, seed=0, **kw):
    torch.manual_seed(seed)
    return AST(small_cfg(stride, **kw)).eval()


# --- grids and config ------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1024, 512, 341, 256, 100, 16])
@pytest.mark.parametrize(
    "patch,stride", [((16, 16), (10, 10)), ((16, 16), (16, 16)), ((16, 32), (16, 20))]
)
def test_patch_grid_matches_a_real_conv(frames, patch, stride):
    if frames < patch[1]:
        with pytest.raises(ValueError):
            patch_grid(128, frames, patch, stride)
        return
    out = F.conv2d(torch.zeros(1, 1, 128, frames), torch.zeros(1, 1, *patch), stride=stride)
    assert patch_grid(128, frames, patch, stride) == tuple(out.shape[2:])


def test_ast_reference_grids():
    # The numbers AST's paper gives: 12 x 101 = 1212 tokens at 1024 frames, stride 10.
    assert ASTConfig().grid() == (12, 101)
    assert ASTConfig(patch_stride=(16, 16)).grid() == (8, 64)
    assert ASTConfig(patch_stride=(16, 16)).grid(512) == (8, 32)


@pytest.mark.parametrize(
    "bad",
    [dict(embed_dim=100, num_heads=3), dict(drop_rate=1.0), dict(target_frames=8),
     dict(patch_stride=(0, 16)), dict(num_classes=0), dict(patch_size=(16, 16, 1))],
)  # fmt: skip
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        ASTConfig(**bad)


def test_config_round_trips_and_takes_lists():
    cfg = ASTConfig(patch_size=[16, 16], patch_stride=[16, 16], target_frames=256)
    assert cfg.patch_stride == (16, 16)
    assert ASTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ASTConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="preset"):
        ast_config("huge")


def expected_parameters(d, depth, grid, num_classes, patch=(16, 16), mlp=4):
    """Counted by hand: patch conv, cls+dist, pos table, blocks, final norm, AST's head."""
    h = mlp * d
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d
    return (d * patch[0] * patch[1] + d) + 2 * d + (2 + grid[0] * grid[1]) * d + depth * block \
        + 2 * d + 2 * d + d * num_classes + num_classes  # fmt: skip


@pytest.mark.parametrize(
    "preset,kw,width,depth",
    [("tiny", dict(target_frames=256, patch_stride=(16, 16), num_classes=16), 192, 4),
     ("small", dict(), 384, 12), ("base", dict(), 768, 12)],
)  # fmt: skip
def test_preset_parameter_counts(preset, kw, width, depth):
    cfg = ast_config(preset, **kw)
    with torch.device("meta"):  # shapes only: no memory, no init time
        n = num_parameters(AST(cfg))
    assert n == expected_parameters(width, depth, cfg.grid(), cfg.num_classes)
    if preset == "tiny":  # the demo recipe's model
        assert 1.8e6 < n < 2.0e6
    if preset == "base":  # AST-base on AudioSet: ~87 M
        assert 86e6 < n < 88e6


# --- forward ---------------------------------------------------------------------------------


def test_attention_matches_a_hand_written_softmax():
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3, qkv_bias=True, attn_drop=0.0, proj_drop=0.0).eval()
    x = torch.randn(2, 7, 24)
    q, k, v = attn.qkv(x).split(24, dim=-1)  # (B, N, D) each
    heads = []
    for i in range(3):
        sl = slice(8 * i, 8 * (i + 1))
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8), dim=-1)
        heads.append(w @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, dim=-1)), atol=1e-5, rtol=1e-5)


def test_forward_transposes_like_ast_and_averages_prefix_tokens():
    model = small_model()
    x = torch.randn(2, T, 128)
    # Reference path written out: AST's (B, 1, F, T) image, freq-major tokens, mean of prefixes.
    img = x.transpose(1, 2)[:, None]
    tok = F.conv2d(img, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=16)
    fg, tg = tok.shape[2:]
    tok = torch.stack([tok[:, :, f, t] for f in range(fg) for t in range(tg)], dim=1)
    prefix = torch.cat([model.cls_token, model.dist_token], 1).expand(2, -1, -1)
    h = torch.cat([prefix, tok], 1) + model.pos_embed
    for block in model.blocks:
        h = block(h)
    h = model.norm(h)
    ref = model.head(model.head_norm((h[:, 0] + h[:, 1]) / 2))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [10, 16])
@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_forward_shapes_compressed_input(stride, c):
    model = small_model(stride)
    frames = T // c
    model.set_time_resolution(frames)
    tg = (frames - 16) // stride + 1
    assert model.grid == ((128 - 16) // stride + 1, tg)
    assert model.pos_embed.shape == (1, model.num_tokens, 32)
    assert model.forward_features(torch.randn(3, frames, 128)).shape == (3, model.num_tokens, 32)
    assert model(torch.randn(3, frames, 128)).shape == (3, 5)


@pytest.mark.parametrize("stride", [10, 16])
@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_forward_shapes_patch_method(stride, c):
    model = small_model(stride)
    model.set_time_resolution(T, time_patch=16 * c, time_stride=stride * c)
    assert model.patch_embed.proj.weight.shape == (32, 1, 16, 16 * c)
    assert model.grid[1] == (T - 16 * c) // (stride * c) + 1
    # Full-resolution input, about as many tokens as the T/C-frame input would give.
    assert abs(model.grid[1] - small_model(stride).cfg.grid(T // c)[1]) <= 1
    assert model(torch.randn(3, T, 128)).shape == (3, 5)


def test_wrong_input_length_is_refused():
    model = small_model()
    model.set_time_resolution(T // 2)
    with pytest.raises(ValueError, match="set_time_resolution"):
        model(torch.randn(1, T, 128))


def test_train_mode_with_dropout_runs_and_is_random():
    model = small_model(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).train()
    x = torch.randn(2, T, 128)
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


# --- set_time_resolution ---------------------------------------------------------------------


def set_grid_table(model, fill):
    """Write fill(f, t, d) -> (Fg, Tg, D) into the pos table's grid part; return a copy."""
    fg, tg = model.grid
    f = torch.arange(fg, dtype=torch.float32)[:, None, None]
    t = torch.arange(tg, dtype=torch.float32)[None, :, None]
    d = torch.arange(model.cfg.embed_dim, dtype=torch.float32)[None, None, :]
    with torch.no_grad():
        model.pos_embed[:, 2:] = fill(f, t, d).reshape(1, fg * tg, -1)
    return model.pos_embed.detach().clone()


def linear_in_time(f, t, d):
    return 0.1 * (d - 16) * t + f * torch.sin(d)  # a slope per channel, an offset per row


def smooth(f, t, d):  # half a period over the time axis, rows differ
    return torch.cos(math.pi * (t + 0.5) / t.shape[1] + d) + 0.1 * f * torch.sin(d)


def go_coarse(model, method, c, **kw):
    if method == "compress":  # Frame-Shift / Pooling: the loader serves T/C frames
        return model.set_time_resolution(T // c, **kw)
    return model.set_time_resolution(T, time_patch=16 * c, time_stride=16 * c, **kw)


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("method", ["compress", "patch"])
def test_round_trip_to_full_is_exact_for_linear_tables(c, method):
    """Bilinear, no antialias: coarse token j sits at fine coordinate C*j + (C-1)/2, so down and
    back up reproduces a table linear in time exactly, except that the outer (C-1)/2 tokens on
    each side clamp to the nearest coarse centre."""
    model = small_model(16)
    original = set_grid_table(model, linear_in_time)
    go_coarse(model, method, c, antialias=False)
    assert model.grid == (8, 16 // c)
    model.set_time_resolution(T, antialias=False)
    assert model.resolution_state() == dict(frames=T, time_patch=16, time_stride=16)
    torch.testing.assert_close(model.pos_embed[:, :2], original[:, :2], rtol=0, atol=0)
    fg, tg = model.grid
    half = (c - 1) / 2
    t_seen = torch.arange(tg, dtype=torch.float32).clamp(half, tg - 1 - half)
    f = torch.arange(fg, dtype=torch.float32)[:, None, None]
    d = torch.arange(32, dtype=torch.float32)[None, None, :]
    want = linear_in_time(f, t_seen[None, :, None], d).reshape(1, fg * tg, -1)
    torch.testing.assert_close(model.pos_embed[:, 2:], want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("method", ["compress", "patch"])
def test_round_trip_to_full_keeps_smooth_tables_close(c, method):
    model = small_model(16)
    original = set_grid_table(model, smooth)
    go_coarse(model, method, c)  # default: bilinear with antialias
    model.set_time_resolution(T)
    assert model.pos_embed.shape == original.shape
    assert (model.pos_embed - original).abs().mean() < 0.1
    # A mix-up of the freq/time order would be far off: the check above can fail.
    fg, tg = model.grid
    swapped = original[:, 2:].reshape(fg, tg, -1).transpose(0, 1).reshape(1, fg * tg, -1)
    assert (swapped - original[:, 2:]).abs().mean() > 0.5


def test_unchanged_resolution_replaces_nothing():
    model = small_model()
    pos, weight = model.pos_embed, model.patch_embed.proj.weight
    assert model.set_time_resolution(T) == []
    assert model.pos_embed is pos and model.patch_embed.proj.weight is weight


def test_returned_pairs_and_optimizer_swap():
    model = small_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    old_pos, old_weight = model.pos_embed, model.patch_embed.proj.weight
    pairs = model.set_time_resolution(T, time_patch=32, time_stride=32)
    assert {id(o) for o, _, _ in pairs} == {id(old_pos), id(old_weight)}
    assert {id(n) for _, n, _ in pairs} == {id(model.pos_embed), id(model.patch_embed.proj.weight)}
    assert all(n.requires_grad and n.shape != o.shape for o, n, _ in pairs)
    model_params = {id(p) for p in model.parameters()}
    assert all(id(o) not in model_params and id(n) in model_params for o, n, _ in pairs)

    # Without the swap the new tensors get gradients but the optimizer never moves them.
    def step():
        before = model.pos_embed.detach().clone()
        opt.zero_grad()
        model(torch.randn(4, T, 128)).square().mean().backward()
        opt.step()
        return (model.pos_embed - before).abs().max().item()

    assert step() == 0.0
    swap = {id(o): n for o, n, _ in pairs}
    for group in opt.param_groups:
        group["params"] = [swap.get(id(p), p) for p in group["params"]]
    assert step() > 0.0


@pytest.mark.parametrize("stride", [10, 16])
def test_state_dict_restores_after_set_time_resolution(stride):
    a = small_model(stride, seed=1)
    a.set_time_resolution(T, time_patch=48, time_stride=3 * stride)
    a.set_time_resolution(T // 2)  # back to the base patch, but compressed input
    state, resolution = a.state_dict(), a.resolution_state()
    b = small_model(stride, seed=2)
    with pytest.raises(ValueError, match="set_time_resolution"):
        b.load_state_dict(state)
    b.set_time_resolution(**resolution)
    b.load_state_dict(state)
    x = torch.randn(2, T // 2, 128)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_patch_method_equals_frame_compression_on_resized_patches():
    """End to end: PI-resized kernel + strides + freq-major order. A full-resolution input whose
    every 16x32 patch is the bilinear resize of a 16x16 patch of a T/2-frame input gives the
    same logits through the Patch-method model as that T/2 input through the compressed one."""
    full = small_model(16)
    coarse = small_model(16)
    full.set_time_resolution(T, time_patch=32, time_stride=32, antialias=False)
    coarse.set_time_resolution(T // 2, antialias=False)
    torch.testing.assert_close(full.pos_embed, coarse.pos_embed)
    x = torch.randn(2, T // 2, 128)  # (B, T/2, F)
    img = x.transpose(1, 2)  # (B, F, T/2)
    patches = img.unfold(1, 16, 16).unfold(2, 16, 16)  # (B, 8, 8, 16, 16): freq x time blocks
    up = F.interpolate(patches.reshape(-1, 1, 16, 16), size=(16, 32), mode="bilinear",
                       align_corners=False, antialias=False)  # fmt: skip
    up = up.reshape(2, 8, 8, 16, 32).permute(0, 1, 3, 2, 4).reshape(2, 128, T)  # (B, F, T)
    torch.testing.assert_close(full(up.transpose(1, 2)), coarse(x), atol=1e-4, rtol=1e-4)


def test_new_parameters_receive_gradients():
    model = small_model().train()
    model.set_time_resolution(T, time_patch=32, time_stride=32)
    model(torch.randn(2, T, 128)).sum().backward()
    assert model.pos_embed.grad is not None and model.patch_embed.proj.weight.grad is not None


# Starting weights (ImageNet DeiT, AST AudioSet checkpoints): tests/test_init_weights.py
