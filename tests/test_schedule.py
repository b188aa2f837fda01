"""The learning rate against torch's own schedulers, and the two scopes (phase, run)."""

import math

import pytest
import torch

from c2ftrain.recipe import OptimSpec, Phase
from c2ftrain.schedule import lr_at, schedule_lr, spans


@pytest.mark.parametrize("start, every, gamma, epochs", [
    (10, 5, 0.5, 25),  # AST balanced AudioSet
    (2, 1, 0.5, 5),  # AST full AudioSet
    (5, 1, 0.85, 25),  # AST ESC-50
])
def test_step_schedule_equals_torch_multisteplr(start, every, gamma, epochs):
    """AST: MultiStepLR(milestones=range(start, 1000, every), gamma), scheduler.step() after each epoch."""
    optim = OptimSpec(schedule="step", step_decay_start=start, step_decay_every=every, step_decay=gamma)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(range(start, 1000, every)), gamma=gamma)
    for epoch in range(epochs):  # epoch = finished epochs before this one
        assert schedule_lr(optim, 1.0, 0, 0, 0, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()


def test_ast_balanced_epochs_1_to_25():
    optim = OptimSpec(schedule="step", step_decay_start=10, step_decay_every=5, step_decay=0.5)
    lrs = [schedule_lr(optim, 8.0, 0, 0, 0, e - 1) for e in range(1, 26)]  # 1-based epochs
    assert lrs == [8.0] * 10 + [4.0] * 5 + [2.0] * 5 + [1.0] * 5


def test_warmup_is_linear_then_the_schedule():
    optim = OptimSpec(schedule="constant", warmup_steps=4)
    assert [schedule_lr(optim, 1.0, 4, s, 100, 0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_equals_torch_cosine_annealing_after_warmup():
    optim = OptimSpec(schedule="cosine", min_lr_ratio=0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.2)
    for step in range(51):
        assert schedule_lr(optim, 2.0, 0, step, 50, 0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()


PHASES = (Phase(method="pool-avg", factor=4, epochs=5), Phase(method="none", factor=1, epochs=3))


def test_spans_place_each_phase():
    run = spans(PHASES, [50, 50])
    assert [(s.first_step, s.first_epoch, s.steps, s.epochs) for s in run] == [(0, 0, 250, 5), (250, 5, 150, 3)]
    stepped = spans((Phase(method="fshift", factor=2, steps=120), Phase(steps=10)), [50, 50])
    assert [(s.epochs, s.first_epoch) for s in stepped] == [(3, 0), (1, 3)]
    with pytest.raises(ValueError, match="fewer clips than one batch"):
        spans(PHASES, [0, 50])


def test_phase_scope_restarts_and_run_scope_matches_the_baseline():
    run = spans(PHASES, [50, 50])
    baseline = spans((Phase(epochs=8),), [50])
    phase_scope = OptimSpec(schedule="cosine", warmup_steps=20, lr_scope="phase")
    run_scope = OptimSpec(schedule="cosine", warmup_steps=20, lr_scope="run")
    # phase scope: a fresh warm-up at the second phase's first step
    assert lr_at(phase_scope, run, 1, 250, 5) == pytest.approx(phase_scope.lr / 20)
    # run scope: one warm-up, then the same rate as a one-phase baseline at every step
    for step in range(0, 400, 7):
        epoch = step // 50
        phase = 0 if step < 250 else 1
        assert lr_at(run_scope, run, phase, step, epoch) == lr_at(run_scope, baseline, 0, step, epoch)
    assert lr_at(run_scope, run, 1, 250, 5) < run_scope.lr


def test_step_schedule_in_run_scope_counts_run_epochs():
    optim = OptimSpec(schedule="step", lr_scope="run", step_decay_start=2, step_decay_every=1, lr=1.0)
    run = spans(PHASES, [10, 10])
    assert [lr_at(optim, run, 0 if e < 5 else 1, e * 10, e) for e in range(8)] == \
        [1.0, 1.0] + [0.5 ** k for k in range(1, 7)]
    phase = OptimSpec(schedule="step", lr_scope="phase", step_decay_start=2, step_decay_every=1, lr=1.0)
    assert lr_at(phase, run, 1, 50, 5) == 1.0  # restarted: the second phase begins undecayed
    assert math.isclose(lr_at(phase, run, 1, 70, 7), 0.5)


def test_epoch_shape_counts_the_partial_last_batch():
    from c2ftrain.schedule import EpochShape

    shape = EpochShape(steps=3, samples=64, batch=24)  # 24 + 24 + 16
    assert [shape.samples_in(k) for k in range(8)] == [0, 24, 48, 64, 88, 112, 128, 152]
    assert shape.steps_for(64) == 3 and shape.steps_for(60) == 3 and shape.steps_for(55) == 2
    assert shape.steps_for(128) == 6 and shape.steps_for(150) == 7 and shape.steps_for(0) == 1
    assert shape.steps_for(-5) == 1
    whole = EpochShape(steps=50, samples=3200, batch=64)  # the demo's: every batch full
    assert all(whole.steps_for(k * 64) == k for k in range(1, 200))


def test_a_run_wide_decay_continues_where_a_phase_ended_early():
    """A coarse phase planned at 12 steps ends at a plateau after 4, and the run's total falls
    from 13 to 7 steps: the decay goes on from 4/13 (where it was) over the 3 steps left,
    instead of jumping to 4/7."""
    from c2ftrain.recipe import OptimSpec, Phase
    from c2ftrain.schedule import Span, cosine_lr, lr_at, run_progress

    coarse, full = Phase(method="pool-avg", factor=4, epochs=6), Phase(steps=3)
    run = [Span(coarse, 0, 0, 4, 2, 2, planned_total=13), Span(full, 4, 2, 3, 2, 2, planned_total=7)]
    assert [run_progress(run, 0, s, 0) for s in range(4)] == pytest.approx([0, 1 / 13, 2 / 13, 3 / 13])
    assert [run_progress(run, 1, s, 0) for s in (4, 5, 6, 7)] == pytest.approx(
        [4 / 13, 4 / 13 + 1 / 3 * 9 / 13, 4 / 13 + 2 / 3 * 9 / 13, 1.0])
    optim = OptimSpec(lr=1e-3, lr_scope="run", warmup_steps=0)
    assert lr_at(optim, run, 1, 4, 2) == pytest.approx(cosine_lr(optim, 1e-3, 4 / 13))
    # with warm-up: progress counts from its end, and nothing ended early is the plain formula
    plain = [Span(coarse, 0, 0, 12, 6, 2), Span(full, 12, 6, 3, 2, 2)]
    warm = OptimSpec(lr=1e-3, lr_scope="run", warmup_steps=2)
    for step in range(2, 15):
        assert run_progress(plain, 0 if step < 12 else 1, step, 2) == pytest.approx((step - 2) / 13)
        assert lr_at(warm, plain, 0 if step < 12 else 1, step, 0) == cosine_lr(warm, 1e-3, (step - 2) / 13)
