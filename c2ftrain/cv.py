"""Cross-validation: the experiment once per held-out fold, and the mean over folds.

AST's ESC-50 protocol trains five runs, each holding out one fold, and reports the mean accuracy.
`run_cv` runs `run_experiment` (coarse-to-fine, baseline, equal-FLOPs control, every seed) once
per fold, on that fold's recipe (`fold_recipe`: the recipe's [cv] table lays the folds out as
splits of one store or as one store per fold), and reports per fold and run the metric, and
over folds its mean and spread:

- "mean": the final models' metric, mean over folds (what a held-out score should be);
- "at_best_evaluation": AST's number (its `get_esc_result.py`): the metric curve (one value per
  full-resolution evaluation, report.eval_curve) averaged over folds, its best evaluation, and
  the folds' metrics there. The evaluation is chosen on the held-out folds themselves, so this
  number leans optimistic.

Layout: RUN_DIR/cv.json (recipe, folds, seeds, baseline), RUN_DIR/fold-K/ (an experiment
directory, as `c2ftrain run` makes), RUN_DIR/report.json. Resumable: with resume, finished
runs of every fold are read back (their outcome.json) and the run in progress continues from its
last checkpoint, so a killed cross-validation keeps every finished fold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from c2ftrain.recipe import Recipe, RecipeError, recipe_from_dict
from c2ftrain.report import RUNS
from c2ftrain.run_lock import hold_run_dir
from c2ftrain.stats import mean, std


def fold_list(recipe: Recipe, n_folds: int | None = None) -> list[int]:
    """Folds 1..n (default: all of the recipe's)."""
    if not recipe.cv.folds:
        raise RecipeError(f"recipe {recipe.name!r} has no [cv] table; add one, e.g. [cv] folds = 5, "
                          "split = \"fold{fold}\" (fold splits of the recipe's store, `c2fdata build --dataset "
                          "esc50 --fold 0`)")
    n = recipe.cv.folds if n_folds is None else n_folds
    if not 1 <= n <= recipe.cv.folds:
        raise RecipeError(f"--folds must be 1..{recipe.cv.folds} (the recipe's folds), got {n}")
    return list(range(1, n + 1))


def fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    """The recipe of one fold: with fold splits, train on the other folds' splits and evaluate
    on this fold's; with one store per fold, that store (it holds the fold out itself)."""
    cv, data = recipe.cv, recipe.data
    if cv.fold_splits:
        others = tuple(cv.split_of(k) for k in range(1, cv.folds + 1) if k != fold)
        data = dataclasses.replace(data, train_split=others, eval_split=cv.split_of(fold))
    return dataclasses.replace(recipe, store=cv.store_of(fold), data=data, name=f"{recipe.name}-fold{fold}")


def check_folds(recipe: Recipe, folds: list[int]) -> None:
    """Every fold's store, and with fold splits every fold's split, exists before anything
    trains: else an error naming what is missing and the command that builds it."""
    if recipe.cv.fold_splits:
        check_fold_splits(recipe)
    else:
        check_fold_stores(recipe, folds)


def check_fold_stores(recipe: Recipe, folds: list[int]) -> None:
    """Every fold run has its store."""
    from c2fdata.datasets import build_command
    from c2fdata.storage import as_location

    missing = [(k, recipe.cv.store_of(k)) for k in folds if not as_location(recipe.cv.store_of(k)).exists()]
    if missing:
        raise FileNotFoundError("fold stores not found: " + ", ".join(f"{s} (fold {k})" for k, s in missing)
                                + "; build each, e.g. `" + build_command(recipe.cv.store.replace("{fold}", "K"), "esc50", "K") + "`")


def check_fold_splits(recipe: Recipe) -> None:
    """Every fold's split, not only those run: each fold trains on all the others."""
    from c2fdata.datasets import build_command
    from c2fdata.storage import as_location
    from c2fdata.store import open_store

    store = recipe.cv.store
    build = f"`{build_command(store, 'esc50', 0)}` (every fold its own split)"
    if not as_location(store).exists():
        raise FileNotFoundError(f"store {store} not found (cv.split = {recipe.cv.split!r}); build it with {build}")
    have = set(open_store(store).attrs["splits"])
    missing = [recipe.cv.split_of(k) for k in range(1, recipe.cv.folds + 1) if recipe.cv.split_of(k) not in have]
    if missing:
        raise RecipeError(
            f"store {store} has no split {', '.join(missing)} (cv.split = {recipe.cv.split!r}; its splits: "
            f"{', '.join(sorted(have))}); build it with {build}, or, for stores built with --fold K "
            "(one per held-out fold), set cv.store = \"...-fold{fold}\" instead of cv.split")


def run_cv(recipe: Recipe, run_dir: Path, *, folds: list[int], seeds: list[int] | None = None,
           resume: bool = False, baseline: bool = True, on_event: Callable[[dict], None] | None = None,
           on_fold: Callable[[int], None] | None = None, device: str | None = None) -> dict:
    """Every fold's experiment into run_dir/fold-K (see the module docstring) -> the report,
    also written to run_dir/report.json."""
    from c2ftrain.experiment import run_experiment

    check_folds(recipe, folds)
    run_dir = Path(run_dir)
    seeds = seeds or [recipe.seed]
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 writes (as run_experiment)
    with hold_run_dir(run_dir, "c2ftrain cv") if main else contextlib.nullcontext():  # one process at a time
        if main:
            (run_dir / "cv.json").write_text(json.dumps({"recipe": recipe.to_dict(), "folds": folds, "seeds": seeds,
                                                         "baseline": baseline}, indent=2))
        reports = {}
        for fold in folds:
            if on_fold:
                on_fold(fold)
            reports[fold] = run_experiment(fold_recipe(recipe, fold), run_dir / f"fold-{fold}", seeds=seeds,
                                           resume=resume, baseline=baseline, on_event=on_event, device=device)
        report = cv_report(recipe, reports)
        if main:
            (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def cv_report(recipe: Recipe, reports: dict[int, dict]) -> dict:
    """Per fold and run the metric (mean over seeds), and over folds: the mean and spread of the
    final models' metric, and AST's best-evaluation figure."""
    folds = sorted(reports)
    first = reports[folds[0]]
    out = {"recipe": recipe.name, "metric_name": first["metric_name"], "folds": folds, "seeds": first["seeds"],
           "per_fold": [], "runs": {}}
    for k in folds:
        r = reports[k]
        entry = {"fold": k, "store": r["store"], "report": f"fold-{k}/report.json"}
        entry.update({run: r[run]["metric_mean"] for run in RUNS if run in r})
        if "savings" in r:
            entry["savings"] = r["savings"]
        out["per_fold"].append(entry)
    for run in RUNS:
        if run not in first:
            continue
        values = [reports[k][run]["metric_mean"] for k in folds]
        out["runs"][run] = {"per_fold": values, "mean": mean(values), "std": std(values),
                            "at_best_evaluation": best_evaluation([reports[k][run]["eval_curve"] for k in folds])}
    if "baseline" in first:
        out["savings"] = {key: mean([reports[k]["savings"][key] for k in folds]) for key in ("flops", "wall")}
        out["metric_delta"] = out["runs"]["c2f"]["mean"] - out["runs"]["baseline"]["mean"]
    return out


def best_evaluation(curves: list[list[float]]) -> dict:
    """AST's summary of a cross-validation: the per-evaluation metric averaged over folds, its
    best evaluation (its number among the full-resolution evaluations, from 1, as the table
    prints it), and each fold's metric there."""
    n = min(len(c) for c in curves)
    if n == 0:
        return {}
    averaged = [mean([c[i] for c in curves]) for i in range(n)]
    best = max(range(n), key=averaged.__getitem__)  # the first of equal ones
    return {"evaluation": best + 1, "mean": averaged[best], "per_fold": [c[best] for c in curves]}


def load_cv_config(run_dir: Path) -> tuple[Recipe, list[int], list[int], bool]:
    """The recipe, folds, seeds and whether baselines were asked for, as `c2ftrain cv` started
    run_dir (for --resume)."""
    path = Path(run_dir) / "cv.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `cv --resume` needs a directory made by `c2ftrain cv`")
    d = json.loads(path.read_text())
    return recipe_from_dict(d["recipe"]), d["folds"], d["seeds"], d["baseline"]


def cv_table(report: dict):
    """Per fold and run the metric, then the mean ± std over folds and AST's best-evaluation mean."""
    from rich.table import Table

    name = report["metric_name"]
    fmt = (lambda v: f"{100 * v:.2f}%") if name == "accuracy" else (lambda v: f"{v:.4f}")
    runs = [r for r in RUNS if r in report["runs"]]
    seeds = f", mean of {len(report['seeds'])} seeds per fold" if len(report["seeds"]) > 1 else ""
    t = Table(title=f"{report['recipe']}: {len(report['folds'])}-fold cross-validation, {name}{seeds}")
    t.add_column("fold")
    for run in runs:
        t.add_column(run, justify="right")
    if "savings" in report:
        t.add_column("FLOPs saved", justify="right")
    for entry in report["per_fold"]:
        saved = [f"{entry['savings']['flops']:.0%}"] if "savings" in entry else []
        t.add_row(str(entry["fold"]), *(fmt(entry[r]) for r in runs), *saved)
    saved = [f"{report['savings']['flops']:.0%}"] if "savings" in report else []
    t.add_row("[bold]mean ± std[/]", *(f"[bold]{fmt(report['runs'][r]['mean'])} ± {fmt(report['runs'][r]['std'])}[/]"
                                      for r in runs), *saved)
    best = [report["runs"][r]["at_best_evaluation"] for r in runs]
    t.add_row("[dim]AST's: the best evaluation of the mean[/]",
              *(f"[dim]{fmt(b['mean'])} (eval {b['evaluation']})[/]" if b else "" for b in best),
              *([""] if saved else []))
    return t
