"""phases.py: the phase -> resolution rule, the optimiser swap (moments resampled like the
parameter), starting a phase on model + optimiser + loader, mixed-resolution batches."""

import pytest
import torch

from c2fdata.compress import compress
from c2ftrain.model import AST, ast_config
from c2ftrain.phases import (Resolution, batch_factor, compress_batch, full_resolution, loader_phase, resolution,
                             start_phase, swap_into_optimizer)
from c2ftrain.recipe import ModelSpec, Phase

T = 64


def small_model(stride=16):
    torch.manual_seed(0)
    return AST(ast_config("tiny", embed_dim=32, depth=1, num_heads=2, target_frames=T,
                          patch_stride=(16, stride), num_classes=3))


@pytest.mark.parametrize("method, factor, frames, patch, stride", [
    ("none", 1, 64, 16, 16), ("fshift", 4, 16, 16, 16), ("pool-avg", 2, 32, 16, 16), ("pool-max", 4, 16, 16, 16),
    ("patch", 2, 64, 32, 32), ("patch", 4, 64, 64, 64),
])
def test_resolution_rule_and_tokens_match_the_model(method, factor, frames, patch, stride):
    model = small_model()
    res = resolution(model.cfg, Phase(method=method, factor=factor, epochs=1))
    assert (res.frames, res.time_patch, res.time_stride) == (frames, patch, stride)
    res.apply(model, ModelSpec())
    assert res.tokens == model.num_tokens == 2 + 8 * model.grid[1]
    assert model(torch.randn(2, frames, 128)).shape == (2, 3)


def test_full_and_mixed_phases_keep_full_resolution():
    cfg = small_model().cfg
    mixed = Phase(method="fshift", factor=4, epochs=1, factors=(4, 2, 1))
    assert resolution(cfg, mixed) == full_resolution(cfg) == Resolution.of(cfg, T)
    assert resolution(cfg, mixed, factor=2).frames == T // 2
    assert loader_phase(mixed) == ("none", 1)
    assert loader_phase(Phase(method="patch", factor=2, epochs=1)) == ("none", 1)
    assert loader_phase(Phase(method="pool-max", factor=2, epochs=1)) == ("pool-max", 2)


def test_flops_per_sample_fall_with_the_tokens():
    cfg = small_model().cfg
    full = full_resolution(cfg).train_flops_per_sample(cfg)
    coarse = resolution(cfg, Phase(method="fshift", factor=4, epochs=1)).train_flops_per_sample(cfg)
    assert 3.5 < full / coarse < 4.5  # ~4x fewer tokens; attention saves more, the head nothing


def _adam_after_steps(model, steps=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, model.frames, 128)).square().mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_kept_moments_are_resampled_like_the_parameter(interpolation):
    model = small_model()
    opt = _adam_after_steps(model)
    old = model.pos_embed
    old_state = {k: v.clone() for k, v in opt.state[old].items()}
    replaced = model.set_time_resolution(T // 4, interpolation=interpolation)
    swap_into_optimizer(opt, replaced)
    new_state = opt.state[model.pos_embed]
    assert old not in opt.state
    assert new_state["exp_avg"].shape == model.pos_embed.shape
    # the prefix rows (cls, dist) are not resampled: their moments carry over unchanged
    torch.testing.assert_close(new_state["exp_avg"][:, :2], old_state["exp_avg"][:, :2])
    torch.testing.assert_close(new_state["exp_avg_sq"][:, :2], old_state["exp_avg_sq"][:, :2])
    assert (new_state["exp_avg_sq"] >= 0).all()
    assert torch.equal(new_state["step"], old_state["step"])
    # a moment that is constant along time stays that constant after resampling
    const = torch.full_like(old_state["exp_avg"], 0.25)
    torch.testing.assert_close(replaced[0].resample(const), torch.full_like(new_state["exp_avg"], 0.25))
    # and the swapped parameter trains
    before = model.pos_embed.detach().clone()
    model(torch.randn(4, T // 4, 128)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, model.pos_embed.detach())


def test_patch_kernel_moments_follow_the_pi_resize():
    model = small_model()
    opt = _adam_after_steps(model)
    replaced = model.set_time_resolution(T, time_patch=32, time_stride=32)
    swap_into_optimizer(opt, replaced)
    kernel = model.patch_embed.proj.weight
    assert opt.state[kernel]["exp_avg"].shape == kernel.shape == (32, 1, 16, 32)
    assert (opt.state[kernel]["exp_avg_sq"] >= 0).all()


class RecordingLoader:
    def __init__(self):
        self.phases = []

    def set_phase(self, method, factor):
        self.phases.append((method, factor))


def test_start_phase_sets_model_optimizer_and_loader():
    model, loader = small_model(), RecordingLoader()
    made = []

    def new_opt():
        made.append(torch.optim.Adam(model.parameters(), lr=1e-3))
        return made[-1]

    coarse = Phase(method="pool-avg", factor=4, epochs=1)
    res, opt = start_phase(coarse, model, None, loader, new_opt, ModelSpec())
    assert res.frames == model.frames == T // 4 and loader.phases == [("pool-avg", 4)] and opt is made[0]
    full_kept = Phase(epochs=1, reset_optimizer=False)
    res, opt2 = start_phase(full_kept, model, opt, loader, new_opt, ModelSpec())
    assert opt2 is opt and len(made) == 1 and model.frames == T and loader.phases[-1] == ("none", 1)
    assert any(p is model.pos_embed for g in opt.param_groups for p in g["params"])
    patch_reset = Phase(method="patch", factor=2, epochs=1)
    res, opt3 = start_phase(patch_reset, model, opt2, loader, new_opt, ModelSpec())
    assert opt3 is made[1] and model.time_patch == 32 and loader.phases[-1] == ("none", 1)


def test_mixed_batches_draw_their_factor_deterministically():
    phase = Phase(method="pool-avg", factor=4, epochs=1, factors=(4, 2, 1), factor_weights=(2.0, 1.0, 1.0))
    draws = [batch_factor(phase, 0, 0, k) for k in range(400)]
    assert draws == [batch_factor(phase, 0, 0, k) for k in range(400)]
    assert set(draws) == {1, 2, 4} and 0.4 < draws.count(4) / 400 < 0.6
    assert draws != [batch_factor(phase, 1, 0, k) for k in range(400)]


@pytest.mark.parametrize("method", ["fshift", "pool-avg", "pool-max"])
def test_compressing_after_normalisation_equals_before(method):
    """The loader normalises (x - mean) / (2 std); mixed batches are compressed after that."""
    x = torch.randn(3, T, 128) * 4 - 6
    norm = lambda t: (t - (-6.0)) / (2 * 4.0)  # noqa: E731
    phase = Phase(method=method, factor=4, epochs=1, factors=(4, 1))
    got = compress_batch(norm(x), phase, 4, seed=0, epoch=0, batch=0, random_offset=False)
    torch.testing.assert_close(got, norm(compress(x, method, 4)), rtol=1e-5, atol=1e-5)
    assert compress_batch(x, phase, 1, 0, 0, 0, True) is x or torch.equal(compress_batch(x, phase, 1, 0, 0, 0, True), x)


def test_any_length_forward_resamples_the_table_differentiably():
    model = small_model()
    with pytest.raises(ValueError, match="set_time_resolution"):
        model(torch.randn(2, T // 2, 128))
    model(torch.randn(2, T // 2, 128), any_length=True).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad[:, 2:].abs().sum() > 0
