"""`c2ftrain sweep`: one recipe, a grid of `--set` overrides, several seeds; one directory.

A grid file (TOML) lists cells in either or both of two forms:

    [grid]                                   # every combination of these values
    "phases.1.method" = ["fshift", "pool-avg"]
    "optim.lr_scope" = ["phase", "run"]

    [[cells]]                                # cells spelled out one by one
    name = "three-phase"                     # optional; default: the overrides themselves
    set = { "phases.1.epochs" = 3 }

Each cell is an experiment (coarse-to-fine, baseline, equal-FLOPs control, for every seed) in
OUT/cells/NAME; baselines and controls that several cells share are trained once, in OUT/shared.
Everything is resumable: re-running the same command after a kill continues where it stopped.
OUT/summary.json and the table hold, per cell, mean and spread of each run and the paired deltas.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from c2ftrain.recipe import RecipeError, load_recipe
from c2ftrain.report import RUNS, saving_text
from c2ftrain.run_lock import hold_run_dir


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict = field(default_factory=dict)
    origin: str = "--set"  # where the overrides were written, for errors ("grid.toml [grid]")


def cell_name(overrides: dict) -> str:
    """A name from the overrides: phases.1.method=fshift,optim.lr_scope=run."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "recipe"


MAX_DIR_NAME = 255  # bytes a file name may have on common file systems


def cell_dir(name: str) -> str:
    """A directory name for a cell: its name with anything unusual in a path replaced, and a
    long one (a grid over whole phase lists) cut, with a hash of the whole name to keep it
    apart from others cut alike."""
    safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)
    if len(safe) <= MAX_DIR_NAME:
        return safe
    return f"{safe[:MAX_DIR_NAME - 17]}-{hashlib.sha1(name.encode()).hexdigest()[:16]}"


def load_grid(path: Path) -> list[Cell]:
    """The cells of a grid file (see the module docstring); RecipeError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"grid file {path} not found")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: invalid TOML: {err}") from None
    unknown = set(d) - {"grid", "cells"}
    if unknown:
        raise RecipeError(f"{path}: unknown tables {sorted(unknown)}; a grid file has [grid] and/or [[cells]]")
    cells = []
    grid = d.get("grid", {})
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise RecipeError(f"{path}: [grid] {key} must be a non-empty list of values, got {values!r}")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            overrides = dict(zip(keys, combo))
            cells.append(Cell(cell_name(overrides), overrides, f"{path} [grid]"))
    for i, c in enumerate(d.get("cells", [])):
        if not isinstance(c, dict) or set(c) - {"name", "set"}:
            raise RecipeError(f"{path}: [[cells]] {i + 1} takes `name` and `set` only, got {c!r}")
        if not isinstance(c.get("set", {}), dict):
            raise RecipeError(f"{path}: [[cells]] {i + 1}: set must be a table of overrides, e.g. "
                              f"set = {{ \"optim.lr\" = 5e-4 }}, got {c['set']!r}")
        overrides = dict(c.get("set", {}))
        if str(c.get("name", "")).strip() in (".", ".."):  # a directory name that is not a directory of its own
            raise RecipeError(f"{path}: [[cells]] {i + 1}: name {c['name']!r} is not a directory name; choose another")
        cells.append(Cell(str(c.get("name") or cell_name(overrides)), overrides, f"{path} [[cells]] {i + 1}: set"))
    if not cells:
        raise RecipeError(f"{path}: no cells; give a [grid] table or [[cells]] entries")
    names = [cell_dir(c.name) for c in cells]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: cell names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return cells


def run_sweep(recipe: str | Path, cells: list[Cell], out: Path, n_seeds: int, *, base_overrides: dict | None = None,
              on_cell: Callable[[int, Cell], None] | None = None, on_event: Callable[[dict], None] | None = None,
              device: str | None = None) -> dict:
    """Every cell's experiment (resumable) -> the summary, also written to OUT/summary.json."""
    from c2ftrain.experiment import run_experiment, seed_list

    out = Path(out)
    for c in cells:  # a cell's whole value (phases=[...]) would silently undo a sweep-wide --set inside it
        lost = [(b, k) for b in base_overrides or {} for k in c.overrides
                if b.startswith(k + ".") and not isinstance(c.overrides[k], dict)]  # a table merges (apply_override)
        if lost:
            b, k = lost[0]
            raise RecipeError(f"--set {b} would be lost in cell {c.name!r}, whose {k} replaces it: put the setting "
                              "in the cell's value, or leave it out")
    recipes = []
    for c in cells:  # all valid, and each fits its store, before the first cell trains for hours
        try:
            rec = load_recipe(recipe, {**(base_overrides or {}), **c.overrides},
                              origins=dict.fromkeys(c.overrides, c.origin))
            _check_against_store(rec)
        except RecipeError as err:
            raise RecipeError(f"cell {c.name!r}: {err}") from None
        recipes.append(rec)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 holds and writes (as run_experiment)
    with hold_run_dir(out, "c2ftrain sweep") if main else contextlib.nullcontext():  # one process at a time
        _check_same_sweep(out, n_seeds, base_overrides or {})
        if main:
            (out / "sweep.json").write_text(json.dumps(
                {"recipe": str(recipe), "seeds": n_seeds, "base_overrides": base_overrides or {},
                 "cells": [{"name": c.name, "overrides": c.overrides} for c in cells]}, indent=2, default=str))
        rows = []
        for i, (cell, rec) in enumerate(zip(cells, recipes)):
            if on_cell:
                on_cell(i, cell)
            report = run_experiment(rec, out / "cells" / cell_dir(cell.name), seeds=seed_list(rec, n_seeds),
                                    resume=True, on_event=on_event, device=device, shared_runs=out / "shared")
            rows.append(summary_row(cell, report))
        summary = {"recipe": str(recipe), "seeds": n_seeds, "metric_name": rows[0]["metric_name"], "cells": rows}
        if main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _check_against_store(rec) -> None:
    """What each run checks when it starts (experiment.check_recipe_against_store), for every cell
    before the first trains; a missing store is the run's to report."""
    from c2fdata.storage import as_location
    from c2ftrain.experiment import check_recipe_against_store

    if as_location(rec.store).exists():
        check_recipe_against_store(rec)


def _check_same_sweep(out: Path, n_seeds: int, base_overrides: dict) -> None:
    """A sweep directory goes on as it was started: the same --set (its finished runs were trained
    with them) and a seed layout its runs are in (one seed: cells/X/c2f; several: cells/X/seed-S/c2f).
    Cells may be added."""
    was = out / "sweep.json"
    if not was.is_file():
        return
    before = json.loads(was.read_text())
    now = json.loads(json.dumps(base_overrides, default=str))
    if before.get("base_overrides", {}) != now:
        raise RecipeError(f"{out} was swept with --set {before.get('base_overrides', {})}; this run gives {now}. "
                          "Its finished runs were trained with the first: give the same, or another --out")
    if (before.get("seeds", 1) == 1) != (n_seeds == 1):
        raise RecipeError(f"{out} was swept with --seeds {before.get('seeds')}; one seed keeps each run in "
                          f"cells/NAME/c2f, several in cells/NAME/seed-S/c2f, so --seeds {n_seeds} would train the "
                          "finished seed again. Keep the one-seed/several-seed choice, or use another --out")


def summary_row(cell: Cell, report: dict) -> dict:
    row = {"cell": cell.name, "overrides": cell.overrides, "metric_name": report["metric_name"],
           "seeds": report["seeds"], "phases": [p["label"] for p in report["phases"]]}
    for run in RUNS:
        if run in report:
            r = report[run]
            row[run] = {"mean": r["metric_mean"], "std": r["metric_std"], "per_seed": r["metric_per_seed"]}
    row["paired"] = report.get("paired", {})
    row["savings"] = report.get("savings", {})
    return row


def summary_table(summary: dict):
    from rich.table import Table

    name = summary["metric_name"]
    scale = 100 if name == "accuracy" else 1
    fmt = (lambda m, s: f"{m * scale:.2f} ± {s * scale:.2f}")
    t = Table(title=f"sweep of {summary['recipe']}: {name}, mean ± std over {summary['seeds']} seeds; "
                    "paired deltas: mean [95% interval]")
    for c in ("cell", "c2f", "baseline", "equal-FLOPs", "c2f - baseline", "c2f - equal-FLOPs", "c2f FLOPs",
              "c2f wall time"):
        t.add_column(c, justify="left" if c == "cell" else "right")
    for r in summary["cells"]:
        def delta(key):
            p = r["paired"].get(key)
            if not p:
                return ""
            if len(p["per_seed"]) < 2:  # one seed: a difference, no interval
                return f"{p['mean'] * scale:+.2f} (1 seed)"
            lo, hi = p["ci95"]
            return f"{p['mean'] * scale:+.2f} [{lo * scale:+.2f}, {hi * scale:+.2f}]"

        t.add_row(r["cell"], *(fmt(r[k]["mean"], r[k]["std"]) if k in r else "" for k in RUNS),
                  delta("c2f-baseline"), delta("c2f-equal_flops"),
                  *(saving_text(r["savings"][k], "fewer" if k == "flops" else "less") if k in r["savings"] else ""
                    for k in ("flops", "wall")))
    return t
