"""Pooling run directories: the seeds of several `c2ftrain run` directories of one experiment (the
same recipe and overrides, seeds apart) in one report, as if one run had trained them all. Seeds
are often split over machines or sessions (`run --seeds 2 --set seed=3` here, `--set seed=5`
there); the claim is then judged over all of them together.

Nothing is pooled that is not comparable or not finished:
- every directory's recipe must equal the first's except for the seed (the differing keys are
  named otherwise). The store is compared by its fingerprint (dataset, features, clip ids), which
  `c2ftrain run` records in config.json: the same store under another path on another machine
  pools, and a store rebuilt differently under the same path does not. Directories written
  before the fingerprint was recorded are compared by the store's path;
- a seed is taken from one directory only: finished in two is an error, and a copy that has not
  finished is passed over (and named) where another directory has the seed finished;
- a seed finished nowhere is an error, or with finished_only left out and named;
- a run (baseline, control) that some directory did not train is left out of the pooled report,
  and the report names the directories without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from c2ftrain.experiment import load_run_config, outcome_from_json, run_labels, seed_dir
from c2ftrain.recipe import Recipe, recipe_differences
from c2ftrain.report import RUNS, build_report, write_report
from c2ftrain.trainer import RunOutcome

# keys that do not decide what a run trains (the seed is what pooling varies)


class PoolError(ValueError):
    """Directories that cannot be pooled; the message names the directory and what to do."""


@dataclass
class Experiment:
    """One run directory as recorded: its recipe, the runs it trains, and per seed per run
    either the outcome or the outcome.json still missing."""
    run_dir: Path
    recipe: Recipe
    labels: tuple[str, ...]
    runs: dict[int, dict[str, RunOutcome | Path]] = field(default_factory=dict)
    store_fingerprint: str | None = None  # as config.json recorded it (None: written before it was)

    def finished(self, seed: int, labels: tuple[str, ...]) -> bool:
        return all(isinstance(self.runs[seed][lb], RunOutcome) for lb in labels)

    def missing(self, seed: int, labels: tuple[str, ...]) -> Path:
        return next(self.runs[seed][lb] for lb in labels if isinstance(self.runs[seed][lb], Path))


def load_experiment(run_dir: Path) -> Experiment:
    """A `c2ftrain run` directory's recipe and outcomes; PoolError for anything else."""
    run_dir = Path(run_dir)
    if (run_dir / "cv.json").is_file():
        raise PoolError(f"{run_dir} is a cross-validation directory: its report.json already pools its folds; "
                        f"to pool the seeds of two cross-validations, pool their fold-K directories, one fold at "
                        f"a time")
    if (run_dir / "sweep.json").is_file():
        raise PoolError(f"{run_dir} is a sweep directory: its summary.json already pools each cell's seeds")
    config = run_dir / "config.json"
    if not config.is_file():
        raise PoolError(f"{config} not found: {run_dir} is not a directory written by `c2ftrain run`")
    try:
        recorded = json.loads(config.read_text())
        shared, fingerprint = recorded.get("shared_runs"), recorded.get("store_fingerprint")
    except (ValueError, AttributeError) as err:
        raise PoolError(f"{config} cannot be read ({type(err).__name__}: {err}); it is not a config.json written "
                        f"by this version of `c2ftrain run`") from None
    try:
        recipe, seeds, baseline = load_run_config(run_dir)
    except ValueError as err:  # names the file already
        raise PoolError(str(err)) from None
    if shared is not None or (run_dir.parent.name == "cells" and (run_dir.parent.parent / "sweep.json").is_file()):
        # its baseline and control live in the sweep's shared/ folder, under keys of their own
        raise PoolError(f"{run_dir} is a cell of a sweep: the sweep's summary.json pools its seeds")
    exp = Experiment(run_dir, recipe, run_labels(recipe, baseline), store_fingerprint=fingerprint)
    for seed in seeds:
        runs = exp.runs[seed] = {}
        for label in exp.labels:
            path = seed_dir(run_dir, seeds, seed) / label / "outcome.json"
            if not path.is_file():
                runs[label] = path
                continue
            try:
                runs[label] = outcome_from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as err:
                raise PoolError(f"{path} is not a valid outcome ({type(err).__name__}: {err}); delete it and "
                                f"finish the run with `c2ftrain run --resume {run_dir}`") from None
    return exp


def experiment_differences(a: Experiment, b: Experiment) -> list[str]:
    """recipe_differences, with the store compared by fingerprint where both recorded one."""
    diff = recipe_differences(a.recipe, b.recipe)
    fa, fb = a.store_fingerprint, b.store_fingerprint
    if fa is None or fb is None:
        return diff
    diff = [d for d in diff if not d.startswith("store: ")]
    if fa != fb:
        diff.insert(0, f"store fingerprint: {fa[:12]} ({a.recipe.store}) vs {fb[:12]} ({b.recipe.store})")
    return diff


@dataclass
class Pooled:
    recipe: Recipe                       # the first directory's (the seed apart, all are equal)
    seeds: list[int]                     # ascending
    per_seed: list[dict[str, RunOutcome]]
    sources: dict[int, Path]             # seed -> the directory it came from
    left_out: dict[int, Path]            # seeds finished nowhere, left out -> an outcome.json missing
    passed_over: dict[int, list[Path]]   # seed -> directories whose copy had not finished (used elsewhere)
    runs_left_out: dict[str, list[Path]]  # a run some directories did not train -> those directories

    def report(self) -> dict:
        report = build_report(self.recipe, self.per_seed, self.seeds)
        report["sources"] = {str(s): str(p) for s, p in sorted(self.sources.items())}
        if self.left_out:
            report["left_out"] = {str(s): str(p) for s, p in sorted(self.left_out.items())}
        if self.passed_over:
            report["passed_over"] = {str(s): [str(p) for p in ps] for s, ps in sorted(self.passed_over.items())}
        if self.runs_left_out:
            report["runs_left_out"] = {lb: [str(p) for p in ps] for lb, ps in self.runs_left_out.items()}
        return report

    def write(self, out_dir: Path) -> dict:
        """report.json and report.png in out_dir -> the report."""
        report = self.report()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_report(Path(out_dir), report, self.per_seed)
        return report


def pool(run_dirs: list[Path], finished_only: bool = False) -> Pooled:
    """The seeds of run_dirs in one set (see the module docstring); PoolError when they cannot be."""
    if not run_dirs:
        raise PoolError("no run directory given")
    seen: dict[Path, Path] = {}
    for d in map(Path, run_dirs):
        if d.resolve() in seen:
            raise PoolError(f"{d} is given twice (as {seen[d.resolve()]} too); give each directory once")
        seen[d.resolve()] = d
    exps = [load_experiment(d) for d in run_dirs]
    first = exps[0]
    for exp in exps[1:]:
        diff = experiment_differences(first, exp)
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise PoolError(f"{exp.run_dir} is not the same experiment as {first.run_dir} ({shown}); pool only "
                            f"directories of one recipe with the same overrides on one store (under any path), "
                            f"seeds apart")
    labels = tuple(lb for lb in RUNS if all(lb in e.labels for e in exps))
    runs_left_out = {lb: [e.run_dir for e in exps if lb not in e.labels]
                     for lb in RUNS if lb not in labels and any(lb in e.labels for e in exps)}
    sources: dict[int, Path] = {}
    per_seed: dict[int, dict[str, RunOutcome]] = {}
    unfinished: dict[int, list[Experiment]] = {}
    for exp in exps:
        for seed in exp.runs:
            if not exp.finished(seed, labels):
                unfinished.setdefault(seed, []).append(exp)
            elif seed in sources:
                raise PoolError(f"seed {seed} has finished in both {sources[seed]} and {exp.run_dir}: each seed "
                                f"may be pooled once; leave one of the directories out")
            else:
                sources[seed] = exp.run_dir
                per_seed[seed] = {lb: exp.runs[seed][lb] for lb in labels}
    left_out: dict[int, Path] = {}
    passed_over: dict[int, list[Path]] = {}
    for seed, exps_unfinished in sorted(unfinished.items()):
        if seed in sources:
            passed_over[seed] = [e.run_dir for e in exps_unfinished]
            continue
        exp = exps_unfinished[0]
        if not finished_only:
            raise PoolError(f"seed {seed} in {exp.run_dir} has not finished ({exp.missing(seed, labels)} is "
                            f"missing): finish it with `c2ftrain run --resume {exp.run_dir}`, or pass "
                            f"--finished-only to leave it out")
        left_out[seed] = exp.missing(seed, labels)
    if not per_seed:
        raise PoolError(f"no seed has finished in {', '.join(map(str, run_dirs))}")
    seeds = sorted(per_seed)
    return Pooled(first.recipe, seeds, [per_seed[s] for s in seeds], sources, left_out, passed_over, runs_left_out)
