"""Learning rate within a phase: linear warm-up, then cosine / constant / step decay.

A pure function of the step, so a resumed run needs no scheduler state to continue exactly.
"""

from __future__ import annotations

import math

from c2ftrain.recipe import OptimSpec


def lr_at(step: int, total_steps: int, peak: float, warmup: int, optim: OptimSpec, steps_per_epoch: int) -> float:
    """Learning rate for step `step` (0-based) of a phase of `total_steps` steps."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if optim.schedule == "constant":
        return peak
    if optim.schedule == "step":
        # AST: constant, then multiplied by step_decay each epoch from step_decay_from_epoch (1-based)
        epoch = step // max(steps_per_epoch, 1) + 1
        return peak * optim.step_decay ** max(0, epoch - optim.step_decay_from_epoch + 1)
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = peak * optim.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
