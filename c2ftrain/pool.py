"""Pooling experiment directories: the seeds of several `c2ftrain run` directories of one
experiment (the same recipe and overrides, seeds apart) in one report, as if one run had trained
them all. Seeds are often split over machines or sessions (`run --seeds 2 --set seed=3` here,
`--set seed=5` there); the claim is then judged over all of them together.

Nothing is pooled that is not comparable: every directory's recipe must equal the first's except
for the seed (the differing keys are named otherwise), a seed may come from one directory only,
and a seed whose runs have not all finished is an error (or, when asked, left out and named).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from c2ftrain.experiment import load_run_config, outcome_from_json
from c2ftrain.recipe import Recipe
from c2ftrain.report import build_report
from c2ftrain.trainer import RunOutcome

LABELS = ("c2f", "baseline", "equal_flops")
# keys that do not decide what a run trains (the seed is what pooling varies)
NOT_COMPARED = ("seed", "name", "description")


class PoolError(ValueError):
    """Directories that cannot be pooled; the message names the directory and what to do."""


@dataclass
class Experiment:
    """One run directory as recorded: its recipe, and per seed its finished outcomes."""
    run_dir: Path
    recipe: Recipe
    labels: tuple[str, ...]
    outcomes: dict[int, dict[str, RunOutcome]] = field(default_factory=dict)
    unfinished: dict[int, Path] = field(default_factory=dict)  # seed -> the first outcome.json missing


def load_experiment(run_dir: Path) -> Experiment:
    """A `c2ftrain run` directory's recipe and outcomes; PoolError for anything else."""
    run_dir = Path(run_dir)
    if (run_dir / "cv.json").is_file() or (run_dir / "sweep.json").is_file():
        kind = "cross-validation" if (run_dir / "cv.json").is_file() else "sweep"
        raise PoolError(f"{run_dir} is a {kind} directory; its own report.json already pools its runs "
                        f"(rerun the same command with more --seeds to add seeds)")
    if not (run_dir / "config.json").is_file():
        raise PoolError(f"{run_dir / 'config.json'} not found: {run_dir} is not a directory written by "
                        f"`c2ftrain run`")
    try:
        recipe, seeds, baseline = load_run_config(run_dir)
    except (ValueError, KeyError) as err:
        raise PoolError(f"{run_dir / 'config.json'} cannot be read ({err}); it is not a run directory "
                        f"written by this version of c2ftrain") from None
    labels = ("c2f",) + (("baseline",) + (("equal_flops",) if recipe.baseline.equal_flops else ()) if baseline else ())
    exp = Experiment(run_dir, recipe, labels)
    for seed in seeds:
        out = run_dir if len(seeds) == 1 else run_dir / f"seed-{seed}"
        outcomes = {}
        for label in labels:
            path = out / label / "outcome.json"
            if not path.is_file():
                exp.unfinished[seed] = path
                break
            try:
                outcomes[label] = outcome_from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError) as err:
                raise PoolError(f"{path} is not a valid outcome ({type(err).__name__}: {err}); delete it and "
                                f"finish the run with `c2ftrain run --resume {run_dir}`") from None
        else:
            exp.outcomes[seed] = outcomes
    return exp


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(a: Recipe, b: Recipe) -> list[str]:
    """`key: A vs B` for every setting (the seed, name and description apart) where b differs from a."""
    fa, fb = (_flat({k: v for k, v in r.to_dict().items() if k not in NOT_COMPARED}) for r in (a, b))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


@dataclass
class Pooled:
    recipe: Recipe                       # the first directory's (the seed apart, all are equal)
    seeds: list[int]                     # ascending
    per_seed: list[dict[str, RunOutcome]]
    sources: dict[int, Path]             # seed -> the directory it came from
    left_out: dict[int, Path]            # unfinished seeds left out -> the outcome.json missing
    dropped_labels: tuple[str, ...]      # runs that not every directory has (e.g. one was --no-baseline)

    def report(self) -> dict:
        report = build_report(self.recipe, self.per_seed, self.seeds)
        report["sources"] = {str(s): str(p) for s, p in sorted(self.sources.items())}
        if self.left_out:
            report["left_out"] = {str(s): str(p) for s, p in sorted(self.left_out.items())}
        return report


def pool(run_dirs: list[Path], finished_only: bool = False) -> Pooled:
    """The seeds of run_dirs in one set (see the module docstring); PoolError when they cannot be."""
    if not run_dirs:
        raise PoolError("no run directory given")
    exps = [load_experiment(d) for d in run_dirs]
    first = exps[0]
    for exp in exps[1:]:
        diff = recipe_differences(first.recipe, exp.recipe)
        if diff:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise PoolError(f"{exp.run_dir} is not the same experiment as {first.run_dir} ({shown}); pool only "
                            f"directories of one recipe with the same overrides, seeds apart")
    sources: dict[int, Path] = {}
    per_seed: dict[int, dict[str, RunOutcome]] = {}
    left_out: dict[int, Path] = {}
    for exp in exps:
        for seed in sorted({*exp.outcomes, *exp.unfinished}):
            if seed in sources or seed in left_out:
                other = sources.get(seed) or left_out[seed]
                raise PoolError(f"seed {seed} is in both {other} and {exp.run_dir}: each seed may be pooled "
                                f"once; leave one of the directories out")
            if seed in exp.unfinished:
                if not finished_only:
                    raise PoolError(f"seed {seed} in {exp.run_dir} has not finished ({exp.unfinished[seed]} is "
                                    f"missing): finish it with `c2ftrain run --resume {exp.run_dir}`, or pass "
                                    f"--finished-only to leave it out")
                left_out[seed] = exp.unfinished[seed]
                continue
            sources[seed] = exp.run_dir
            per_seed[seed] = exp.outcomes[seed]
    if not per_seed:
        raise PoolError(f"no finished seed in {', '.join(map(str, run_dirs))}")
    labels = tuple(lb for lb in LABELS if all(lb in e.labels for e in exps))
    dropped = tuple(lb for lb in LABELS if lb not in labels and any(lb in e.labels for e in exps))
    seeds = sorted(per_seed)
    return Pooled(first.recipe, seeds, [{lb: per_seed[s][lb] for lb in labels} for s in seeds], sources,
                  left_out, dropped)
