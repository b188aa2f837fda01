import numpy as np
import pytest
import torch
import torch.nn.functional as F

from c2ftrain.pos_embed import resample_pos_embed

D = 8
PREFIX = 2


def table(fg, tg, fill=None, dtype=torch.float32, seed=0):
    """(1, PREFIX + fg*tg, D) with a freq-major grid part given by fill(f, t) -> (D,)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randn(1, PREFIX, D, generator=g)
    if fill is None:
        grid = torch.randn(fg, tg, D, generator=g)
    else:
        grid = torch.stack([torch.stack([fill(f, t) for t in range(tg)]) for f in range(fg)])
    return torch.cat([prefix, grid.reshape(1, fg * tg, D)], dim=1).to(dtype)


def test_same_grid_is_identity():
    pe = table(12, 101)
    out = resample_pos_embed(pe, (12, 101), (12, 101))
    assert out is pe


@pytest.mark.parametrize("new_tg", [50, 25, 33, 202])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_constant_stays_constant_and_prefix_untouched(new_tg, interpolation):
    value = torch.linspace(-1, 1, D)
    pe = table(12, 101, fill=lambda f, t: value)
    out = resample_pos_embed(pe, (12, new_tg), (12, 101), PREFIX, interpolation)
    assert out.shape == (1, PREFIX + 12 * new_tg, D)
    torch.testing.assert_close(out[:, :PREFIX], pe[:, :PREFIX], rtol=0, atol=0)
    torch.testing.assert_close(out[0, PREFIX:], value.expand(12 * new_tg, D), rtol=0, atol=1e-5)


def linear_reference(old_tg, new_tg, offset, slope):
    """numpy: offset + slope * src(j) with src(j) = (j + 0.5) * old/new - 0.5 clamped to the old
    grid (cell centres, align_corners=False) -> (new_tg, D)."""
    j = np.arange(new_tg)
    src = np.clip((j + 0.5) * old_tg / new_tg - 0.5, 0, old_tg - 1)
    return offset + src[:, None] * slope[None, :]


@pytest.mark.parametrize("old_tg,new_tg", [(64, 32), (64, 16), (101, 50), (101, 33), (16, 64)])
def test_linear_in_time_stays_linear(old_tg, new_tg):
    fg = 8
    slope = torch.arange(1.0, D + 1)  # a different slope per channel
    offset = torch.arange(fg, dtype=torch.float32) * 100  # rows differ: catches a freq/time mix-up
    pe = table(fg, old_tg, fill=lambda f, t: offset[f] + slope * t)
    out = resample_pos_embed(pe, (fg, new_tg), (fg, old_tg), antialias=False)
    grid = out[0, PREFIX:].reshape(fg, new_tg, D).double().numpy()
    for f in range(fg):
        want = linear_reference(old_tg, new_tg, offset[f].item(), slope.double().numpy())
        np.testing.assert_allclose(grid[f], want, rtol=0, atol=1e-3)


def test_freq_rows_untouched_by_time_resampling():
    pe = table(12, 101)
    out = resample_pos_embed(pe, (12, 40), (12, 101))
    # Row f of the output must come from row f of the input only: change one row, see one row.
    pe2 = pe.clone()
    pe2[0, PREFIX + 5 * 101 : PREFIX + 6 * 101] += 1.0
    out2 = resample_pos_embed(pe2, (12, 40), (12, 101))
    changed = (out2 - out).abs().amax(dim=-1)[0, PREFIX:].reshape(12, 40).amax(dim=1)
    assert torch.nonzero(changed > 1e-6).flatten().tolist() == [5]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("old,new", [
    ((12, 101), (12, 50)), ((14, 14), (12, 101)), ((8, 16), (8, 4))
])
def test_matches_manual_interpolate(interpolation, antialias, old, new):
    pe = table(*old)
    out = resample_pos_embed(pe, new, old, PREFIX, interpolation, antialias)
    # Independent reference: walk the grid token by token into an image, interpolate, read back.
    img = torch.empty(1, D, *old)
    for f in range(old[0]):
        for t in range(old[1]):
            img[0, :, f, t] = pe[0, PREFIX + f * old[1] + t]
    ref = F.interpolate(img, size=new, mode=interpolation, align_corners=False, antialias=antialias)
    for f in range(new[0]):
        for t in range(new[1]):
            torch.testing.assert_close(out[0, PREFIX + f * new[1] + t], ref[0, :, f, t])
    torch.testing.assert_close(out[:, :PREFIX], pe[:, :PREFIX])


def test_dtype_kept_and_computed_in_float32():
    pe = table(8, 16, dtype=torch.bfloat16)
    out = resample_pos_embed(pe, (8, 8), (8, 16))
    assert out.dtype == torch.bfloat16
    ref = resample_pos_embed(pe.float(), (8, 8), (8, 16)).to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_rejects_wrong_old_grid_and_interpolation():
    pe = table(12, 101)
    with pytest.raises(ValueError, match="tokens"):
        resample_pos_embed(pe, (12, 50), (101, 11))  # wrong token count
    with pytest.raises(ValueError, match="interpolation"):
        resample_pos_embed(pe, (12, 50), (12, 101), interpolation="nearest")
