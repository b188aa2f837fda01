import pytest
import torch
import torch.nn.functional as F

from c2ftrain.patch_embed import resize_patch_kernel


def resize(x, size, mode="bilinear", antialias=True):
    """The data-side resize, written here from torch directly: (N, C, h, w) -> (N, C, *size)."""
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def embed(x, w):
    """<x, w> for every patch and every output channel: (N, C, h, w), (D, C, h, w) -> (N, D)."""
    return torch.einsum("nchw,dchw->nd", x.double(), w.double())


@pytest.mark.parametrize("new_size", [(16, 32), (16, 48), (16, 64), (32, 32), (20, 24)])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_upsampling_keeps_embedding_exactly(new_size, mode):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 1, 16, 16, generator=g)
    x = torch.randn(64, 1, 16, 16, generator=g)  # arbitrary patches, not smooth ones
    w_new = resize_patch_kernel(w, new_size, interpolation=mode)
    assert w_new.shape == (24, 1, *new_size) and w_new.dtype == w.dtype
    before, after = embed(x, w), embed(resize(x, new_size, mode), w_new)
    scale = before.abs().max()
    assert (after - before).abs().max() / scale < 1e-4


def test_multichannel_kernel_and_dtype():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, 16, 16, generator=g)
    x = torch.randn(10, 3, 16, 16, generator=g)
    w_new = resize_patch_kernel(w, (16, 32))
    torch.testing.assert_close(embed(resize(x, (16, 32)), w_new), embed(x, w), rtol=1e-4, atol=1e-4)
    w16 = resize_patch_kernel(w.to(torch.bfloat16), (16, 32))
    assert w16.dtype == torch.bfloat16 and w16.shape == (8, 3, 16, 32)


def test_downsampling_is_the_least_squares_kernel():
    """Downsampling cannot be exact; the result must be the best possible: with B the resize
    matrix (built here from the resize of each basis patch), B^T w' - w is orthogonal to the
    range of B^T, i.e. B (B^T w' - w) = 0, and it beats the naively interpolated kernel."""
    g = torch.Generator().manual_seed(2)
    old, new = (16, 32), (16, 16)
    w = torch.randn(6, 1, *old, generator=g, dtype=torch.float64)
    w_new = resize_patch_kernel(w, new)
    n = old[0] * old[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *old)
    b = resize(basis, new).reshape(n, -1).T  # (n', n)
    residual = b.T @ w_new.reshape(6, -1).T - w.reshape(6, -1).T  # (n, 6)
    assert (b @ residual).abs().max() < 1e-8
    naive = resize(w, new) * (n / (new[0] * new[1]))  # interpolated, rescaled for patch area
    naive_residual = b.T @ naive.reshape(6, -1).T - w.reshape(6, -1).T
    assert residual.norm() < naive_residual.norm()


def test_same_size_is_identity_and_bad_input_refused():
    w = torch.randn(4, 1, 16, 16)
    assert resize_patch_kernel(w, (16, 16)) is w
    with pytest.raises(ValueError):
        resize_patch_kernel(w[0], (16, 32))
    with pytest.raises(ValueError):
        resize_patch_kernel(w, (16, 32), interpolation="nearest")


def test_gradient_flows_through_resize():
    w = torch.randn(4, 1, 16, 16, requires_grad=True)
    resize_patch_kernel(w, (16, 32)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
def test_pinv_transpose_matches_svd_pinv(shape):
    from c2ftrain.patch_embed import pinv_transpose

    g = torch.Generator().manual_seed(3)
    b = torch.randn(*shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pinv_transpose(b), torch.linalg.pinv(b.T))
    b[:, 0] = b[:, 1] if shape[0] > shape[1] else b[:, 0]  # rank-deficient: the SVD fallback
    b[0] = b[1] if shape[0] <= shape[1] else b[0]
    torch.testing.assert_close(pinv_transpose(b), torch.linalg.pinv(b.T))
