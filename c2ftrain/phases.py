"""How a coarse-to-fine run changes resolution: the one place a phase starts.

A phase (recipe.py) names a compression method and a factor C. Starting it means three things,
all done by `start_phase`:

1. the model: `resolution(cfg, phase)` is the phase -> resolution rule. Frame-Shift and Pooling
   shorten the input to T // C frames and keep the patch; the Patch method keeps the input and
   widens the time patch and stride by C. `AST.set_time_resolution` resamples the positional
   embedding (and PI-resizes the patch kernel for Patch) from the trained tables.
2. the optimiser: the resampled tensors are new parameters. Either the optimiser restarts
   (`reset_optimizer = true`), or the new tensors take the old ones' places in it and their Adam
   moments are resampled by the same map as the parameter (`swap_into_optimizer`).
3. the loader: `loader_phase(phase)` is what the loader serves; the Patch method changes the model,
   not the data, so its loader serves full resolution.

A mixed-resolution phase (`factors = [4, 2, 1]`) keeps the model at full resolution: the loader
serves full resolution, each batch is compressed by its own C (`batch_factor`, `compress_batch`)
and the model resamples its positional table on the fly for that batch.

The last phase of every run is at full resolution (C = 1), so the final model is an ordinary AST.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from c2fdata.compress import compress
from c2ftrain.flops import forward_flops, train_step_flops
from c2ftrain.model import AST, ASTConfig, Replaced
from c2ftrain.recipe import ModelSpec, Phase

__all__ = ["Resolution", "resolution", "full_resolution", "flops_per_sample", "factor_shares", "loader_phase", "batch_factor", "compress_batch",
           "swap_into_optimizer", "start_phase"]

# seed-sequence domains of the mixed-resolution draws (apart from the loader's own streams)
MIXED_FACTOR_STREAM, MIXED_OFFSET_STREAM = 101, 102


@dataclass(frozen=True)
class Resolution:
    """The model's time resolution in a phase: what it is fed and how it cuts it into tokens."""

    frames: int  # input frames per clip (T // C, or T for the Patch method)
    time_patch: int  # patch length along time, in input frames
    time_stride: int  # patch stride along time, in input frames
    tokens: int  # sequence length, prefix tokens included

    @classmethod
    def of(cls, cfg: ASTConfig, frames: int, time_patch: int | None = None,
           time_stride: int | None = None) -> "Resolution":
        time_patch = cfg.patch_size[1] if time_patch is None else int(time_patch)
        time_stride = cfg.patch_stride[1] if time_stride is None else int(time_stride)
        return cls(int(frames), time_patch, time_stride, cfg.num_tokens(frames, time_patch, time_stride))

    def train_flops_per_sample(self, cfg: ASTConfig) -> int:
        """Training FLOPs of one sample at this resolution (3 x forward, see flops.py)."""
        return train_step_flops(cfg, self.frames, self.time_patch, self.time_stride)

    def eval_flops_per_sample(self, cfg: ASTConfig) -> int:
        """Evaluation FLOPs of one sample at this resolution (a forward pass)."""
        return forward_flops(cfg, self.frames, self.time_patch, self.time_stride)

    def apply(self, model: AST, spec: ModelSpec) -> list[Replaced]:
        """Set `model` to this resolution; returns the parameters it replaced."""
        return model.set_time_resolution(self.frames, time_patch=self.time_patch, time_stride=self.time_stride,
                                         interpolation=spec.interpolation, antialias=spec.antialias)


def full_resolution(cfg: ASTConfig) -> Resolution:
    return Resolution.of(cfg, cfg.target_frames)


def resolution(cfg: ASTConfig, phase: Phase, factor: int | None = None) -> Resolution:
    """The phase -> resolution rule (see the module docstring). A mixed-resolution phase keeps
    the model at full resolution (its table is resampled per batch); `factor` gives the
    resolution of one of its batches."""
    if factor is not None:
        phase = dataclasses.replace(phase, factor=factor, factors=(), factor_weights=())
    elif phase.mixed:
        return full_resolution(cfg)
    if phase.method == "patch":
        return Resolution.of(cfg, cfg.target_frames, cfg.patch_size[1] * phase.factor,
                             cfg.patch_stride[1] * phase.factor)
    return Resolution.of(cfg, cfg.target_frames // phase.factor)


def factor_shares(phase: Phase) -> list[tuple[int | None, float]]:
    """(factor, share of the phase's batches): [(None, 1.0)] for a phase of one resolution (its
    own factor), each of a mixed phase's factors with its normalised weight otherwise."""
    if not phase.mixed:
        return [(None, 1.0)]
    weights = phase.factor_weights or (1.0,) * len(phase.factors)
    return [(c, w / sum(weights)) for c, w in zip(phase.factors, weights)]


def flops_per_sample(cfg: ASTConfig, phase: Phase) -> float:
    """Training FLOPs of one sample in `phase`; the expectation over factors for a mixed phase."""
    return sum(share * resolution(cfg, phase, c).train_flops_per_sample(cfg) for c, share in factor_shares(phase))


def loader_phase(phase: Phase) -> tuple[str, int]:
    """(method, factor) the loader serves in `phase`: the Patch method keeps full-resolution input."""
    if phase.method == "patch" or phase.factor == 1 or phase.mixed:
        return "none", 1  # mixed: the trainer compresses each batch by its own C
    return phase.method, phase.factor


def batch_factor(phase: Phase, seed: int, epoch: int, batch: int) -> int:
    """The C of one batch of a mixed-resolution phase: a function of (seed, run epoch, batch),
    so that a resumed run draws the same."""
    weights = np.asarray(phase.factor_weights or [1.0] * len(phase.factors), np.float64)
    rng = np.random.default_rng([seed, MIXED_FACTOR_STREAM, epoch, batch])
    return int(rng.choice(np.asarray(phase.factors), p=weights / weights.sum()))


def compress_batch(x: torch.Tensor, phase: Phase, factor: int, seed: int, epoch: int, batch: int,
                   random_offset: bool) -> torch.Tensor:
    """(B, T, F) full-resolution, normalised batch -> (B, T // C, F) by the phase's method. The
    loader's normalisation is affine with a positive scale, so it commutes with selection, mean
    and max: compressing after it equals compressing before. Frame-Shift draws one offset per batch."""
    offset = 0
    if random_offset and phase.method == "fshift" and factor > 1:
        offset = int(np.random.default_rng([seed, MIXED_OFFSET_STREAM, epoch, batch]).integers(factor))
    if factor == 1:
        return x
    # pooling sums in float32 (a float16/bfloat16 hand-over would lose bits), then casts back
    return compress(x.float(), phase.method, factor, offset).to(x.dtype)


def swap_into_optimizer(optimizer: torch.optim.Optimizer, replaced: list[Replaced]) -> None:
    """Put each new parameter where the old one was in the optimiser's groups, and carry its
    state over through the same map that made the parameter (Adam's moments of a resampled
    position table are resampled like the table). Second moments stay >= 0: bicubic and the
    patch kernel's pseudo-inverse can undershoot."""
    for r in replaced:
        for group in optimizer.param_groups:
            group["params"] = [r.new if p is r.old else p for p in group["params"]]
        old_state = optimizer.state.pop(r.old, None)
        if not old_state:
            continue
        new_state = {}
        with torch.no_grad():
            for key, value in old_state.items():
                if torch.is_tensor(value) and value.shape == r.old.shape:
                    value = r.resample(value).to(value.dtype)
                    if key.endswith("_sq"):  # exp_avg_sq, max_exp_avg_sq
                        value = value.clamp_(min=0)
                new_state[key] = value  # e.g. Adam's step count: unchanged
        optimizer.state[r.new] = new_state


def start_phase(phase: Phase, model: AST, optimizer: torch.optim.Optimizer | None, loader,
                new_optimizer: Callable[[], torch.optim.Optimizer], spec: ModelSpec,
                ) -> tuple[Resolution, torch.optim.Optimizer]:
    """Model, optimiser and loader to `phase`; returns its resolution and the optimiser to use
    (a fresh one from `new_optimizer` at the first phase or when the phase resets it)."""
    res = resolution(model.cfg, phase)
    replaced = res.apply(model, spec)
    if optimizer is None or phase.reset_optimizer:
        optimizer = new_optimizer()
    else:
        swap_into_optimizer(optimizer, replaced)
    loader.set_phase(*loader_phase(phase))
    return res, optimizer
