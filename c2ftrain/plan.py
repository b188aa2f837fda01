"""`c2ftrain plan`: what an experiment will cost, without training it.

For coarse-to-fine, the baseline and the equal-FLOPs control: every epoch's phase, resolution,
tokens, learning rate at the epoch's first step and training FLOPs, the totals, the saving, and
(unless told not to) an estimated training time on this machine from a few measured train steps
per resolution. The numbers come from the trainer's own pieces (phases.resolution,
schedule.spans / lr_at, the loader's batches per epoch), so the plan is what `run` will do.
A mixed-resolution phase is planned at its expected FLOPs (weights over its factors); a phase
that may end at a plateau, at its longest.

Evaluation is planned apart (forward passes over the eval split, never in the training FLOPs
that the comparisons use): after the epochs that the trainer evaluates, at full resolution and,
in a coarse phase, at the phase's resolution too; at the end, the extra eval splits and the
weight average. Where the eval split is as large as the training split, the full-resolution
passes of coarse phases can cost more than their training; with
`eval.full_resolution_during_coarse = false` only each coarse phase's last one is planned (and
run). A phase that may end at a plateau is planned at its longest, so its evaluations are an
upper bound and those of the budget phase after it a lower one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from c2fdata.reader import StoreReader
from c2ftrain.model import AST
from c2ftrain.phases import (
    Resolution,
    factor_shares,
    flops_per_sample,
    full_resolution,
    resolution,
)
from c2ftrain.recipe import Phase, Recipe
from c2ftrain.schedule import Span, lr_at
from c2ftrain.trainer import PhaseTrainer, make_optimizer, train_step

MEASURE_STEPS = 3  # timed train steps per resolution (after one untimed warm-up step)


def epoch_rows(recipe: Recipe, trainer: PhaseTrainer, run_spans: list[Span]) -> list[dict]:
    cfg, rows = trainer.cfg, []
    n_eval = len(trainer.eval_reader)
    full_eval = n_eval * full_resolution(cfg).eval_flops_per_sample(cfg)
    for i, span in enumerate(run_spans):
        phase, res = span.phase, resolution(cfg, span.phase)
        shape = trainer.epoch_shape(phase)
        per_sample = flops_per_sample(cfg, phase)
        for e in range(span.epochs):
            first = span.first_step + e * span.steps_per_epoch
            steps = min(span.steps_per_epoch, span.steps - e * span.steps_per_epoch)
            last = e + 1 == span.epochs
            evaluated = recipe.eval.evaluates(e + 1, last)
            full = evaluated and recipe.eval.at_full_resolution(phase, last)
            own = evaluated and phase.coarse
            rows.append({
                "epoch": span.first_epoch + e + 1, "phase": i, "method": phase.method, "factor": phase.factor,
                "label": phase.label, "frames": res.frames, "tokens": res.tokens, "steps": steps,
                "lr": lr_at(recipe.optim, run_spans, i, first, span.first_epoch + e),
                "flops": round(per_sample * shape.samples_in(steps)),  # an epoch's last batch may be partial
                "eval_flops": round(full * full_eval + own * n_eval * res.eval_flops_per_sample(cfg)),
                # what skipping the full-resolution pass here would save (eval.full_resolution_during_coarse)
                "coarse_full_eval_flops": round(full * full_eval) if phase.coarse and not last else 0,
            })
    return rows


def final_eval_flops(recipe: Recipe, trainer: PhaseTrainer, rows: list[dict]) -> int:
    """The evaluations after the last epoch, at full resolution: the extra eval splits, and the
    weight average where the run reaches an epoch of eval.average_epochs."""
    per_sample = full_resolution(trainer.cfg).eval_flops_per_sample(trainer.cfg)
    clips = sum(len(StoreReader(recipe.store, s)) for s in recipe.data.extra_eval_splits)
    span = recipe.eval.average_epochs
    if span and any(span[0] <= r["epoch"] <= span[1] for r in rows):
        clips += len(trainer.eval_reader)
    return round(clips * per_sample)


def seconds_per_step(trainer: PhaseTrainer, res: Resolution, batch: int) -> float:
    """Median wall time of a real train step at `res` on synthetic input, on the trainer's device."""
    model = AST(trainer.cfg).to(trainer.device)
    res.apply(model, trainer.recipe.model)
    opt = make_optimizer(trainer.recipe, model, trainer.recipe.optim.lr)
    x = torch.randn(batch, res.frames, trainer.cfg.n_mels, device=trainer.device)
    k = trainer.cfg.num_classes
    y = (torch.rand(batch, k, device=trainer.device) < 0.05).float() if trainer.multi_label else \
        torch.randint(0, k, (batch,), device=trainer.device)
    times = []
    for i in range(MEASURE_STEPS + 1):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(model, opt, x, y, trainer.multi_label, trainer.recipe.optim.clip_grad_norm)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays allocation and first-touch costs
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def plan_experiment(recipe: Recipe, *, measure: bool = True, device: str | None = None) -> dict:
    """The plan of `c2ftrain run RECIPE` (see the module docstring) as a JSON-ready dict."""
    from c2ftrain.experiment import check_recipe_against_store, comparison_notes

    check_recipe_against_store(recipe)
    out: dict = {"recipe": recipe.name, "runs": {}, "notes": comparison_notes(recipe)}
    step_cost: dict[tuple, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("c2f", recipe.phases), ("baseline", recipe.baseline_phases)]
        for label, phases in runs:
            out["runs"][label] = _plan_run(recipe, phases, Path(tmp), label, measure, device, step_cost)
        if recipe.baseline.equal_flops:
            trainer = PhaseTrainer(recipe, recipe.baseline_phases, Path(tmp), "plan", device=device)
            steps = trainer.steps_for_flops(out["runs"]["c2f"]["flops"])
            trainer.close()
            out["runs"]["equal_flops"] = _plan_run(recipe, (Phase(steps=steps),), Path(tmp), "equal_flops", measure,
                                                   device, step_cost)
    c2f, base = out["runs"]["c2f"], out["runs"]["baseline"]
    out["savings"] = {"flops": 1 - c2f["flops"] / base["flops"]}
    if measure:
        out["savings"]["est_wall"] = 1 - c2f["est_s"] / base["est_s"]
        out["device"] = str(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return out


def _plan_run(recipe, phases, tmp: Path, label: str, measure: bool, device, step_cost: dict) -> dict:
    trainer = PhaseTrainer(recipe, tuple(phases), tmp / label, label, device=device)
    try:
        run_spans = trainer.spans()
        rows = epoch_rows(recipe, trainer, run_spans)
        run = {"epochs": rows, "steps": sum(s.steps for s in run_spans), "flops": sum(r["flops"] for r in rows),
               "final_eval_flops": final_eval_flops(recipe, trainer, rows),
               "coarse_full_eval_flops": sum(r["coarse_full_eval_flops"] for r in rows)}
        run["eval_flops"] = sum(r["eval_flops"] for r in rows) + run["final_eval_flops"]
        run["notes"] = trainer.run_notes()
        if measure:
            est = 0.0
            for span in run_spans:
                batch = span.phase.batch_size or recipe.data.batch_size
                for c, share in factor_shares(span.phase):  # a mixed phase: the mean over its factors, weighted
                    res = resolution(trainer.cfg, span.phase, c)
                    key = (res, batch)
                    if key not in step_cost:
                        step_cost[key] = seconds_per_step(trainer, res, batch)
                    est += span.steps * share * step_cost[key]
            run["est_s"] = est
        return run
    finally:
        trainer.close()
