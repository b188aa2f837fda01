"""Resize a patch-embedding kernel so that the embedding survives a change of patch size.

FlexiViT's pseudo-inverse resize (PI-resize), written from the math. Let `resize` be a linear
image resize from (ph, pw) to (ph', pw'); in vectorised form vec(resize(x)) = B vec(x), with
B of shape (ph'*pw', ph*pw). We want a kernel w' such that for every patch x

    <resize(x), w'> = <x, w>    i.e.    x^T B^T w' = x^T w    for all x    i.e.    B^T w' = w.

When upsampling (ph'*pw' >= ph*pw) B has full column rank, B^T w' = w is under-determined and
w' = pinv(B^T) w is its minimum-norm exact solution. When downsampling there is no exact
solution and pinv gives the least-squares one (B^T w' is w projected onto the range of B^T).
B is built by resizing the ph*pw basis patches with the very resize the data path would use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic")


def resize_matrix(
    old_size: tuple[int, int],
    new_size: tuple[int, int],
    interpolation: str = "bilinear",
    antialias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """B with vec(resize(x)) = B vec(x): (ph'*pw', ph*pw), row-major vec of each patch."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    n_old = old_size[0] * old_size[1]
    basis = torch.eye(n_old, dtype=dtype).reshape(n_old, 1, *old_size)  # (ph*pw, 1, ph, pw)
    cols = F.interpolate(
        basis, size=tuple(new_size), mode=interpolation, align_corners=False, antialias=antialias
    )  # (ph*pw, 1, ph', pw'): column i of B is resize(e_i)
    return cols.reshape(n_old, -1).T  # (ph'*pw', ph*pw)


def resize_patch_kernel(
    weight: torch.Tensor,
    new_size: tuple[int, int],
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """(D, C, ph, pw) -> (D, C, ph', pw') with <resize(x), w'> ~= <x, w> for every patch x.

    Exact when upsampling, least squares when downsampling. The pseudo-inverse is taken in
    float64 (B is at most a few thousand entries a side) and the result cast back.
    """
    if weight.ndim != 4:
        raise ValueError(f"weight must be (D, C, ph, pw), got {tuple(weight.shape)}")
    new_size = (int(new_size[0]), int(new_size[1]))
    if min(new_size) < 1:
        raise ValueError(f"new_size must be positive, got {new_size}")
    old_size = (weight.shape[2], weight.shape[3])
    if new_size == old_size:
        return weight

    b = resize_matrix(old_size, new_size, interpolation, antialias)  # (n', n)
    d, c = weight.shape[:2]
    flat = weight.to(torch.float64).reshape(d * c, -1)  # (D*C, n); differentiable, no detach
    new = flat @ pinv_transpose(b).T.to(weight.device)  # (D*C, n'): each row is pinv(B^T) w
    return new.reshape(d, c, *new_size).to(weight.dtype)


def pinv_transpose(b: torch.Tensor) -> torch.Tensor:
    """pinv(B^T) for B (n', n), through the smaller Gram matrix when B has full rank:
    B (B^T B)^-1 if B is tall (upsampling), (B B^T)^-1 B if wide (downsampling).

    Why not torch.linalg.pinv: an SVD of the whole (n', n) matrix takes seconds on a small,
    busy CPU (MKL threads contending), a Cholesky solve of the <= (ph*pw)^2 Gram matrix does
    not. If B is rank-deficient (a degenerate resize) the solve fails the check that the result
    is a one-sided inverse of B^T, and the SVD is used after all.
    """
    tall = b.shape[0] >= b.shape[1]
    gram = b.T @ b if tall else b @ b.T  # (min(n, n'),) squared, symmetric
    chol, info = torch.linalg.cholesky_ex(gram)
    if info.item() == 0:
        eye = torch.eye(gram.shape[0], dtype=b.dtype)
        if tall:
            p = b @ torch.cholesky_solve(eye, chol)  # (n', n)
            check = b.T @ p  # (n, n): I when B^T has full row rank
        else:
            p = torch.cholesky_solve(b, chol)  # (n', n)
            check = p @ b.T  # (n', n'): I when B^T has full column rank
        if torch.allclose(check, eye, rtol=0, atol=1e-8):
            return p
    return torch.linalg.pinv(b.T)
