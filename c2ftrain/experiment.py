"""`c2ftrain run`: coarse-to-fine, its full-resolution baseline (and the equal-FLOPs control),
one run directory, one report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from c2ftrain.distributed import Dist, init_distributed
from c2ftrain.flops import train_step_flops
from c2ftrain.recipe import Phase, Recipe, recipe_from_dict
from c2ftrain.report import build_report, write_report
from c2ftrain.trainer import PhaseTrainer, RunOutcome, model_config

def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def equal_flops_phases(recipe: Recipe, c2f: RunOutcome) -> tuple[Phase, ...]:
    """Full resolution for as many samples as fit in the FLOPs coarse-to-fine spent."""
    from c2fdata.reader import StoreReader

    reader = StoreReader(recipe.store, recipe.data.eval_split)
    cfg = model_config(recipe, reader)
    per_sample = train_step_flops(cfg, cfg.target_frames, batch=1)
    samples = c2f.flops / per_sample
    steps = max(1, round(samples / recipe.data.batch_size))
    return (Phase(method="none", factor=1, steps=steps),)


def run_recipe(recipe: Recipe, run_dir: Path, *, resume: bool = False, baseline: bool = True,
               on_event: Callable[[dict], None] | None = None, device: str | None = None) -> dict:
    """Train every run of the recipe into run_dir (skipping finished ones on resume) -> report."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = init_distributed(dev)
    run_dir = Path(run_dir)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"recipe": recipe.to_dict()}, indent=2))
    outcomes: dict[str, RunOutcome] = {}
    plan = [("c2f", recipe.phases)]
    if baseline:
        plan.append(("baseline", recipe.baseline_phases))
    for label, phases in plan:
        outcomes[label] = _one_run(recipe, phases, run_dir / label, label, d, dev, resume, on_event)
    if baseline and recipe.baseline.equal_flops:
        phases = equal_flops_phases(recipe, outcomes["c2f"])
        outcomes["equal_flops"] = _one_run(recipe, phases, run_dir / "equal_flops", "equal_flops", d, dev, resume, on_event)
    report = build_report(recipe, outcomes)
    if d.is_main:
        write_report(run_dir, report, outcomes)
    return report


def _one_run(recipe, phases, out: Path, label: str, d: Dist, device: str, resume: bool, on_event) -> RunOutcome:
    done = out / "outcome.json"
    if resume and done.is_file():
        return outcome_from_json(json.loads(done.read_text()))
    trainer = PhaseTrainer(recipe, tuple(phases), out, label, dist=d, device=device, on_event=on_event)
    if on_event:
        on_event({"event": "start", "run": label, "phases": [p.label for p in phases]})
    outcome = trainer.run(resume=resume)
    if d.is_main:
        done.write_text(json.dumps(outcome_to_json(outcome), indent=2))
    return outcome


def outcome_to_json(o: RunOutcome) -> dict:
    return {"label": o.label, "metric_name": o.metric_name, "metric": o.metric, "metrics": o.metrics,
            "records": [asdict(r) for r in o.records], "history": o.history}


def outcome_from_json(d: dict) -> RunOutcome:
    from c2ftrain.trainer import PhaseRecord

    return RunOutcome(d["label"], d["metric_name"], d["metric"], d["metrics"],
                      [PhaseRecord(**r) for r in d["records"]], d["history"])


def load_run_recipe(run_dir: Path) -> Recipe:
    cfg = Path(run_dir) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: --resume needs a run directory made by `c2ftrain run`")
    d = json.loads(cfg.read_text())["recipe"]
    return recipe_from_dict(d)
