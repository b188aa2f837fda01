"""Audio Spectrogram Transformer (AST) as a plain ViT, with a switchable time resolution.

Input is the loader's `(B, T, F)` log-mel batch; inside it becomes the `(B, 1, F, T)` image AST
patchifies. Tokens are flattened **freq-major** (token `f * Tg + t`), after two prefix tokens
(cls, distillation); the output is the mean of the two prefix tokens, as in AST.

Module names follow timm's ViT (`patch_embed.proj`, `blocks.i.attn.qkv`, `norm`, ...) so that a
DeiT/ViT checkpoint maps onto it key by key (`c2ftrain.init_weights`).

A coarse-to-fine run changes the time resolution between phases with `set_time_resolution`:
the positional embedding is resampled to the new token grid and, for the Patch method, the
patch kernel is PI-resized. Both become new `nn.Parameter`s; the method returns the
(old, new) pairs so the trainer can swap them into its optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from c2ftrain.patch_embed import resize_patch_kernel
from c2ftrain.pos_embed import resample_pos_embed

NUM_PREFIX_TOKENS = 2  # cls + distillation

PRESETS: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3),  # CPU demo, ~1.9 M parameters
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),  # the paper's AST (DeiT-B)
}


def patch_grid(
    n_mels: int, frames: int, patch: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """Token grid (Fg, Tg) of a conv patchifier without padding over a (n_mels, frames) input."""
    if n_mels < patch[0] or frames < patch[1]:
        raise ValueError(
            f"input (freq {n_mels}, time {frames}) is smaller than the patch {tuple(patch)}"
        )
    return (n_mels - patch[0]) // stride[0] + 1, (frames - patch[1]) // stride[1] + 1


@dataclass
class ASTConfig:
    n_mels: int = 128  # frequency bins of the input (F)
    target_frames: int = 1024  # full-resolution input length (T); coarse phases use fewer
    patch_size: tuple[int, int] = (16, 16)  # (freq bins, time frames)
    patch_stride: tuple[int, int] = (10, 10)  # AST: 10 (overlapping, 12x101 at 1024) or 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after the pos-embed, attention projection and MLP
    attn_drop_rate: float = 0.0  # dropout on the attention weights
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this at the last block
    num_classes: int = 527

    def __post_init__(self):
        # Lists come back from TOML/JSON; keep tuples so configs compare and hash alike.
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.patch_stride = tuple(int(s) for s in self.patch_stride)
        if len(self.patch_size) != 2 or len(self.patch_stride) != 2:
            raise ValueError(
                f"patch_size and patch_stride are (freq, time) pairs, got {self.patch_size}, "
                f"{self.patch_stride}"
            )
        positive = dict(
            n_mels=self.n_mels, target_frames=self.target_frames, embed_dim=self.embed_dim,
            depth=self.depth, num_heads=self.num_heads, num_classes=self.num_classes,
            mlp_ratio=self.mlp_ratio, patch=min(self.patch_size), stride=min(self.patch_stride),
        )  # fmt: skip
        bad = {k: v for k, v in positive.items() if not v > 0}
        if bad:
            raise ValueError(f"ASTConfig: these must be positive: {bad}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        self.grid()  # the full-resolution input must hold at least one patch

    def grid(
        self, frames: int | None = None, time_patch: int | None = None,
        time_stride: int | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """(Fg, Tg) at `frames` (default target_frames) and a time patch/stride (default ours)."""
        frames = self.target_frames if frames is None else int(frames)
        time_patch = self.patch_size[1] if time_patch is None else int(time_patch)
        time_stride = self.patch_stride[1] if time_stride is None else int(time_stride)
        if time_patch < 1 or time_stride < 1:
            raise ValueError(f"time patch/stride must be positive, got {time_patch}, {time_stride}")
        patch, stride = (self.patch_size[0], time_patch), (self.patch_stride[0], time_stride)
        return patch_grid(self.n_mels, frames, patch, stride)

    def num_tokens(
        self, frames: int | None = None, time_patch: int | None = None,
        time_stride: int | None = None,
    ) -> int:  # fmt: skip
        """Sequence length the transformer sees: the prefix tokens + Fg * Tg patches."""
        fg, tg = self.grid(frames, time_patch, time_stride)
        return NUM_PREFIX_TOKENS + fg * tg

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ASTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ASTConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def ast_config(preset: str, **overrides) -> ASTConfig:
    """A preset's width/depth/heads with any field overridden, e.g.
    `ast_config("tiny", target_frames=256, patch_stride=(16, 16), num_classes=16)`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return ASTConfig(**{**PRESETS[preset], **overrides})


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class PatchEmbed(nn.Module):
    """(B, 1, F, T) -> (B, Fg*Tg, D), freq-major. Kernel and stride may change between phases."""

    def __init__(self, patch: tuple[int, int], stride: tuple[int, int], embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, Fg, Tg)
        return x.flatten(2).transpose(1, 2)  # (B, Fg*Tg, D): token f*Tg + t


class Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, H, N, Dh)
        x = x.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cfg: ASTConfig, drop_path_rate: float):
        super().__init__()
        dim = cfg.embed_dim
        # eps 1e-6 as timm's ViT/DeiT, so that their checkpoints behave as trained
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, cfg.mlp_hidden, cfg.drop_rate)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class AST(nn.Module):
    """AST over `(B, T, F)` -> logits `(B, num_classes)`. Starts at full resolution
    (`cfg.target_frames`, the config's patch and stride)."""

    def __init__(self, cfg: ASTConfig):
        super().__init__()
        self.cfg = cfg
        # The current time resolution; changed only by set_time_resolution.
        self.frames = cfg.target_frames
        self.time_patch = cfg.patch_size[1]
        self.time_stride = cfg.patch_stride[1]
        dim = cfg.embed_dim
        fg, tg = self.grid

        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.patch_stride, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PREFIX_TOKENS + fg * tg, dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_norm = nn.LayerNorm(dim)  # AST's mlp_head = LayerNorm -> Linear
        self.head = nn.Linear(dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self):
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def grid(self) -> tuple[int, int]:
        """Current token grid (Fg, Tg)."""
        return self.cfg.grid(self.frames, self.time_patch, self.time_stride)

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens(self.frames, self.time_patch, self.time_stride)

    def resolution_state(self) -> dict:
        """What to pass to `set_time_resolution` before `load_state_dict` of a checkpoint saved
        at this resolution (the weights themselves come from the state dict)."""
        return dict(frames=self.frames, time_patch=self.time_patch, time_stride=self.time_stride)

    def set_time_resolution(
        self,
        frames: int,
        *,
        time_patch: int | None = None,
        time_stride: int | None = None,
        interpolation: str = "bilinear",
        antialias: bool = True,
    ) -> list[Replaced]:
        """Switch to inputs of `frames` frames, patchified with (time_patch, time_stride).

        The arguments describe the whole target state (None = the config's time patch/stride),
        so the call is idempotent and `set_time_resolution(**resolution_state())` reproduces it.
        - Frame-Shift / Pooling phases: `set_time_resolution(T // C)`; the pos-embed is
          resampled along time from the current grid to the new one.
        - Patch phases: `set_time_resolution(T, time_patch=16*C, time_stride=s*C)`; the patch
          kernel is PI-resized and the pos-embed resampled; the loader keeps full resolution.
        Resampling starts from the current (trained) tables, not the initial ones.

        Returns what it replaced, as `Replaced(old, new, resample)`: swap `new` into the
        optimizer where `old` was, otherwise the new tensor silently stops training; `resample`
        maps any tensor shaped like `old` (its Adam moments) the way the parameter was mapped.
        """
        time_patch = self.cfg.patch_size[1] if time_patch is None else int(time_patch)
        time_stride = self.cfg.patch_stride[1] if time_stride is None else int(time_stride)
        old_grid = self.grid
        new_grid = self.cfg.grid(frames, time_patch, time_stride)  # validates
        proj = self.patch_embed.proj
        replaced = []
        with torch.no_grad():
            if time_patch != self.time_patch:
                kernel = (self.cfg.patch_size[0], time_patch)

                def resize(t: torch.Tensor, kernel=kernel) -> torch.Tensor:
                    return resize_patch_kernel(t, kernel, interpolation, antialias)

                replaced.append(_replace_parameter(proj, "weight", resize))
                proj.kernel_size = kernel
            proj.stride = (self.cfg.patch_stride[0], time_stride)
            if new_grid != old_grid:

                def resample(t: torch.Tensor) -> torch.Tensor:
                    return resample_pos_embed(
                        t, new_grid, old_grid, NUM_PREFIX_TOKENS, interpolation, antialias
                    )

                replaced.append(_replace_parameter(self, "pos_embed", resample))
        self.frames, self.time_patch, self.time_stride = int(frames), time_patch, time_stride
        return replaced

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # A resolution mismatch would surface as a bare size error; say what to do instead.
        shaped = dict(pos_embed=self.pos_embed)
        shaped["patch_embed.proj.weight"] = self.patch_embed.proj.weight
        for key, ours in shaped.items():
            theirs = state_dict.get(key)
            if strict and theirs is not None and theirs.shape != ours.shape:
                raise ValueError(
                    f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(ours.shape)} at "
                    f"{self.resolution_state()}; call model.set_time_resolution(**<the "
                    f"checkpoint's resolution_state()>) before load_state_dict"
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward_features(self, x: torch.Tensor, any_length: bool = False) -> torch.Tensor:
        b, t, f = x.shape
        pos = self.pos_embed
        if (t, f) != (self.frames, self.cfg.n_mels):
            if not any_length or f != self.cfg.n_mels:
                raise ValueError(
                    f"input (B, T, F) = {tuple(x.shape)}, but the model is set for T = {self.frames}, "
                    f"F = {self.cfg.n_mels}; call set_time_resolution for another T"
                )
            # FlexiViT-style: the table stays at the set resolution and is resampled, differentiably,
            # to this input's grid, so that gradients of every length train one table.
            new_grid = self.cfg.grid(t, self.time_patch, self.time_stride)
            pos = resample_pos_embed(pos, new_grid, self.grid, NUM_PREFIX_TOKENS)
        x = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T), as AST
        x = self.patch_embed(x)  # (B, Fg*Tg, D)
        # each token expanded, then joined: the other way round their gradients get strides that
        # differ from the parameters' (in the size-1 batch dim), which DDP warns about every run
        prefix = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1)], dim=1)  # (B, 2, D)
        x = self.pos_drop(torch.cat([prefix, x], dim=1) + pos)  # (B, 2 + Fg*Tg, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = (x[:, 0] + x[:, 1]) / 2  # (B, D): AST averages the cls and distillation tokens
        return self.head(self.head_norm(x))  # (B, num_classes)

    def forward(self, x: torch.Tensor, any_length: bool = False) -> torch.Tensor:
        """x: (B, T, F) at the set resolution; with `any_length`, any T of at least one patch
        (the positional table is resampled on the fly: mixed-resolution phases)."""
        return self.forward_head(self.forward_features(x, any_length))


class Replaced(NamedTuple):
    """A parameter that a resolution change replaced by a resampled one."""

    old: nn.Parameter
    new: nn.Parameter
    resample: Callable[[torch.Tensor], torch.Tensor]  # old-shaped tensor -> new shape, same map


def _replace_parameter(module: nn.Module, name: str, resample) -> Replaced:
    old = getattr(module, name)
    new = nn.Parameter(resample(old).detach().clone(), requires_grad=old.requires_grad)
    setattr(module, name, new)
    return Replaced(old, new, resample)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
