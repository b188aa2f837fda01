"""The learning rate: linear warm-up, then cosine / constant / step decay, over a phase or the run.

A pure function of where the run is (global step, finished epochs), so a resumed run needs no
scheduler state to continue exactly, and `c2ftrain plan` can list a run's rates without training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from c2ftrain.recipe import OptimSpec, Phase


@dataclass(frozen=True)
class Span:
    """Where one phase sits in its run: its first step and epoch, and its length."""

    phase: Phase
    first_step: int  # global step at the phase start
    first_epoch: int  # run epochs finished before it
    steps: int  # optimiser steps in the phase
    epochs: int  # epochs in the phase (the last one may be partial for a phase given in steps)
    steps_per_epoch: int
    # the run's total steps as planned when this phase started, where an earlier phase ended
    # early and changed it (None: the run's total as it stands); see run_progress
    planned_total: int | None = None


@dataclass(frozen=True)
class EpochShape:
    """An epoch of a training loader: its optimiser steps and the samples they serve, all ranks
    together. In one process the last batch of an epoch is partial (drop_last is off: every clip
    is served), so a step is not always `batch` samples: FLOPs budgets count samples. A phase
    starts an epoch."""

    steps: int
    samples: int
    batch: int  # global

    def samples_in(self, steps: int) -> int:
        """Samples served by the first `steps` steps of a phase."""
        epochs, rest = divmod(steps, self.steps)
        return epochs * self.samples + min(rest * self.batch, self.samples)

    def steps_for(self, samples: float) -> int:
        """The step count (at least 1) whose samples come closest to `samples`."""
        epochs, rest = divmod(max(samples, 0.0), self.samples)
        k = min(int(rest // self.batch), self.steps)
        k = min((k, min(k + 1, self.steps)), key=lambda j: abs(min(j * self.batch, self.samples) - rest))
        return max(1, int(epochs) * self.steps + k)


def spans(phases: tuple[Phase, ...], steps_per_epoch: list[int]) -> list[Span]:
    """Each phase's place in the run, from its length and its loader's batches per epoch."""
    out, step, epoch = [], 0, 0
    for phase, per_epoch in zip(phases, steps_per_epoch):
        if per_epoch < 1:
            raise ValueError(f"phase {phase.label}: the train split has fewer clips than one batch")
        steps = phase.steps if phase.steps is not None else phase.epochs * per_epoch
        epochs = phase.epochs if phase.epochs is not None else math.ceil(phase.steps / per_epoch)
        out.append(Span(phase, step, epoch, steps, epochs, per_epoch))
        step, epoch = step + steps, epoch + epochs
    return out


def lr_at(optim: OptimSpec, run: list[Span], phase: int, global_step: int, finished_epochs: int) -> float:
    """Learning rate of step `global_step` (0-based) in phase `phase`, `finished_epochs` epochs
    of the run done. The scope (optim.lr_scope) decides what the schedule spans: one phase
    (peak, warm-up and decay restart with it) or the whole run."""
    if optim.lr_scope == "run":
        peak, warmup = optim.lr, optim.warmup_steps
        step, total, epochs_done = global_step, sum(s.steps for s in run), finished_epochs
        replanned = any(s.planned_total not in (None, total) for s in run[:phase + 1])
        if replanned and optim.schedule == "cosine" and step >= warmup:
            return cosine_lr(optim, peak, run_progress(run, phase, step, warmup))
    else:
        span = run[phase]
        p = span.phase
        peak = p.lr if p.lr is not None else optim.lr
        warmup = p.warmup_steps if p.warmup_steps is not None else optim.warmup_steps
        step, total, epochs_done = global_step - span.first_step, span.steps, finished_epochs - span.first_epoch
    return schedule_lr(optim, peak, warmup, step, total, epochs_done)


def schedule_lr(optim: OptimSpec, peak: float, warmup: int, step: int, total: int, epochs_done: int) -> float:
    """The rate at step `step` of a schedule of `total` steps, `epochs_done` epochs into it."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if optim.schedule == "constant":
        return peak
    if optim.schedule == "step":
        return peak * optim.step_decay ** milestones_passed(optim, epochs_done)
    span = max(total - warmup, 1)
    return cosine_lr(optim, peak, min(max(step - warmup, 0) / span, 1.0))


def cosine_lr(optim: OptimSpec, peak: float, progress: float) -> float:
    """The cosine decay from `peak` at progress 0 to peak * min_lr_ratio at 1."""
    floor = peak * optim.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def run_progress(run: list[Span], phase: int, step: int, warmup: int) -> float:
    """Where `step` (in phase `phase`) is in a run-wide decay: 0 at the end of warm-up, 1 at
    the run's last step. A phase that ends early (a plateau) changes the run's length, and with
    it, computed afresh, the decay would jump; instead each phase continues the decay from where
    the previous one left it, over the steps that remain as planned when it started (its span's
    planned_total). With no phase ended early this is (step - warmup) / (total - warmup)."""
    now = sum(s.steps for s in run)
    p, u0 = 0.0, 0
    for i in range(phase + 1):
        left = max((run[i].planned_total or now) - warmup, 1) - u0  # decay steps left, as planned then
        u = max((run[i + 1].first_step if i < phase else step) - warmup, 0)
        p = 1.0 if left <= 0 else min(p + (u - u0) / left * (1 - p), 1.0)
        u0 = u
    return p


def milestones_passed(optim: OptimSpec, epochs_done: int) -> int:
    """How many of AST's milestones range(start, inf, every) are <= the finished epochs."""
    if epochs_done < optim.step_decay_start:
        return 0
    return (epochs_done - optim.step_decay_start) // optim.step_decay_every + 1
