"""c2ftrain command line: `run` (coarse-to-fine + baseline + control -> report), `cv` (the same per
held-out fold, mean over folds), `plan`, `sweep`, `report` (run directories' seeds pooled),
`eval` (a checkpoint's metrics on a store split) and `predict` (its scores for audio files).

Thin: parse -> recipe -> one library call -> rich output."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from c2fdata.console import log_console
from c2fdata.datasets import missing_store
from c2fdata.lifetime import terminate_as_interrupt
from c2fdata.stacks import install_stack_dumps
from c2ftrain.distributed import launched_by_torchrun

console = log_console()


def fail(message: str) -> None:
    from rich.markup import escape

    # "[cv]" is text, not markup; unwrapped, so that a long path stays one piece to copy
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(2)


@click.group()
@click.option("-v", "--verbose", is_flag=True)
def main(verbose: bool) -> None:
    """Train audio spectrogram transformers coarse-to-fine.

    `kill -USR1 PID` prints where every thread of a running command is, and it goes on."""
    install_stack_dumps()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    if launched_by_torchrun() and os.environ.get("RANK", "0") != "0":  # rank 0 prints the run, once (errors: every rank)
        console.quiet = True


COUNTS = ("classes_skipped", "epochs")  # metrics that count: whole numbers, whatever their type


def metric_text(name: str, value) -> str:
    """A metric as printed: four decimals, or a whole number for a count."""
    return f"{value:.0f}" if name.rsplit("/", 1)[-1] in COUNTS else f"{value:.4f}"


def interrupt_on_terminate() -> None:
    """SIGTERM as Ctrl-C (the resume message), in a single process. Not under torchrun: a rank
    waiting in a collective on a rank that died runs no Python code to raise in, and must die
    of the signal at once, as torchrun expects when it stops the others."""
    if not launched_by_torchrun():
        terminate_as_interrupt()


def print_note(out: Console, noted: set, e: dict) -> None:
    """A run's "note" event, once: not again for each seed (or sweep cell) it concerns."""
    from rich.markup import escape

    if (e["run"], e["text"]) not in noted:
        noted.add((e["run"], e["text"]))
        out.print(f"  [yellow]note[/]: {escape(e['run'])}: {escape(e['text'])}", soft_wrap=True)


def _printer(state: dict):
    """The console's view of a training: a line per run and evaluation, and between evaluations a
    (transient) bar of the epoch's batches with the loss, every LOG_EVERY_STEPS steps. Call
    `.stop()` on the result when training ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # stderr stays stderr (rich would send it to stdout while the bar shows); one bar, rank 0's
    bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console, transient=True,
                   redirect_stdout=False, redirect_stderr=False, disable=os.environ.get("RANK", "0") != "0")
    task, noted = None, set()

    def epoch_bar(e: dict) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("", total=None, loss="")
        bar.update(task, description=e.get("description") or
                   f"{e['run']} phase {e['phase'] + 1} ({e['phase_label']}) epoch {e['epoch'] + 1}",
                   completed=e["batch"], total=e["batches"], loss="" if e["loss"] is None else f"loss {e['loss']:.3f}")

    def on_event(e: dict) -> None:
        if e["event"] == "step":
            epoch_bar(e)
        elif e["event"] == "eval_batch":
            epoch_bar({**e, "description": f"{e['run']} evaluating ({e['what']})", "loss": None})
        if e["event"] == "start":
            console.rule(f"[bold]{e['run']}[/] (seed {e['seed']}): {' -> '.join(e['phases'])}")
        elif e["event"] == "eval":
            # a coarse phase's evaluation may be at its own resolution only
            m = ", ".join(f"{k} {metric_text(k, v)}" for k, v in e.get("metrics", {}).items()
                          if "/" not in k and k != "classes_skipped")  # the same count at every evaluation
            if "metrics_at_phase_resolution" in e:
                own = "at phase resolution: " + ", ".join(
                    f"{k} {metric_text(k, v)}" for k, v in e["metrics_at_phase_resolution"].items()
                    if k != "classes_skipped")
                m = f"{m} [dim]({own})[/]" if m else f"[dim]{own}[/]"
            console.print(f"  {e['run']:<11} phase {e['phase'] + 1} ({e['phase_label']:<12}) epoch {e['epoch']:>2} "
                          f"step {e['step']:>5}  {m}  [dim]{e['cum_flops'] / 1e12:.2f} TFLOPs, {e['cum_wall_s']:.0f} s[/]")
        elif e["event"] == "resumed":
            console.print(f"  {e['run']}: resumed from {e['checkpoint']} at step {e['step']} (phase {e['phase'] + 1}, "
                          f"epoch {e['epoch'] + 1}, batch {e['batch']})")
        elif e["event"] == "init" and e["format"] != "scratch":
            console.print(f"  {e['run']}: starting weights {e['init']} ({e['format']}): "
                          f"{e['loaded']} tensors loaded, {e['fresh']} initialised fresh")
        elif e["event"] == "note":
            print_note(console, noted, e)
        elif e["event"] == "step" and state.get("verbose"):
            console.print(f"    step {e['step']} loss {e['loss']:.4f} lr {e['lr']:.2e}", style="dim")

    on_event.stop = bar.stop
    return on_event


def store_exists(store: str) -> bool:
    """Whether a store (a local folder or an s3:// URL) is there; StorageError (a ValueError)
    for a URL that cannot be used."""
    from c2fdata.storage import as_location

    return as_location(store).exists()


def existing_store(store: str | None, option: str = "--store") -> str | None:
    """A store given on the command line (a local folder or an s3:// URL), checked to be there:
    click.Path would refuse every URL."""
    from c2fdata.storage import as_location

    if store is None:
        return None
    try:
        where = as_location(store)
        found = where.exists()
        if not found and where.fs is not None:
            where.check_bucket(option)  # a missing bucket is named as such
    except ValueError as err:  # StorageError: a URL that cannot be used (no s3fs, no bucket, credentials)
        fail(f"{option} {store}: {err}")
    if not found:
        fail(f"{option} {store}: no store there (a folder written by `c2fdata build`, or an s3:// URL)")
    return store


# a command's parameters that decide what it trains, as the user spells them
RUN_OPTIONS = {"recipe": "RECIPE", "run_dir": "--out", "no_baseline": "--no-baseline", "n_seeds": "--seeds",
               "n_folds": "--folds", "overrides": "--set"}


def check_run_dir(command: str, resume_dir: Path | None, run_dir: Path | None, record: str,
                  allowed: tuple[str, ...] = ()) -> None:
    """`--resume DIR` goes on as the run was started, so options that would change it are refused
    (not silently ignored), but those in `allowed` (cv's --folds, which may add folds); a new run
    never overwrites a directory that holds trained work (a checkpoint or a finished run; a start
    that failed before its first checkpoint may be redone). Rank 0 decides: under torchrun, the
    others may start after it has written the directory."""
    ctx = click.get_current_context()
    if os.environ.get("RANK", "0") != "0":
        return
    if resume_dir:
        given = [flag for name, flag in RUN_OPTIONS.items() if name in ctx.params and name not in allowed
                 and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            fail(f"--resume {resume_dir} goes on with the recipe, seeds and runs it was started with "
                 f"({resume_dir / record}); leave out {', '.join(given)}, or start a new run with them")
    elif run_dir is not None and (Path(run_dir) / record).is_file() and trained_work(Path(run_dir)):
        fail(f"{run_dir} already holds a run ({trained_work(Path(run_dir))}); continue it with "
             f"`c2ftrain {command} --resume {run_dir}`, or choose another --out (finished runs are never overwritten)")


def trained_work(run_dir: Path) -> Path | None:
    """A checkpoint or finished run under run_dir, if any."""
    return next((p for pattern in ("**/outcome.json", "**/checkpoints/last.pt") for p in run_dir.glob(pattern)), None)


def parse_overrides(overrides: tuple[str, ...]) -> dict:
    """`--set KEY=VALUE` pairs; VALUE is read as TOML (numbers, booleans, quoted strings, lists)
    and taken as a bare string when it is not TOML."""
    import tomllib

    parsed = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep or not key:
            fail(f"--set {o!r}: expected KEY=VALUE, e.g. --set optim.lr=5e-4 or --set phases.1.factor=2")
        try:
            parsed[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key] = value
    return parsed


def skipped_classes_line(report: dict) -> str:
    """The classes a multi-label evaluation left out (no positive clip in the split), said once
    under the table, not at every evaluation; "" for a single-label run or where none was."""
    n = report["c2f"]["metrics"].get("classes_skipped")
    return "" if not n else f"{n:.0f} classes have no positive clip in the evaluation split and are left out of mAP and AUC"


def print_outcome(report: dict) -> None:
    """The closing lines of an experiment: the table, the claim in one sentence, the paired deltas."""
    from c2ftrain.report import paired_lines, report_table, saving_text

    console.print(report_table(report))
    name = report["metric_name"]
    scale, unit = (100, " points") if name == "accuracy" else (1, "")
    many = len(report["seeds"]) > 1
    value = "metric_mean" if many else "metric"
    seeds = f" (mean of {len(report['seeds'])} seeds)" if many else ""
    if skipped := skipped_classes_line(report):
        console.print(skipped)
    for label in ("c2f", "baseline", "equal_flops"):  # the weight average, the extra eval splits
        others = report.get(label, {}).get("other_evaluations", {})
        if others:
            console.print(f"{label}, other final evaluations{seeds}: " + ", ".join(
                f"{k} {o['mean'] * scale:.2f}" + (f" ± {o['std'] * scale:.2f}" if many else "") for k, o in others.items()))
    if "savings" not in report:
        return
    s = report["savings"]
    console.print(
        f"coarse-to-fine: {name} {report['c2f'][value] * scale:.2f} vs baseline "
        f"{report['baseline'][value] * scale:.2f} ({report['metric_delta'] * scale:+.2f}{unit}){seeds}, "
        f"[bold]{saving_text(s['flops'], 'fewer')} training FLOPs, {saving_text(s['wall'])} training time[/]"
    )
    if "equal_flops" in report:
        console.print(f"full resolution for the same FLOPs as coarse-to-fine: "
                      f"{name} {report['equal_flops'][value] * scale:.2f}")
    if many:
        for line in paired_lines(report):
            console.print(f"  {line}")


@main.command()
@click.argument("recipe", required=False, default="demo")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), help="Run directory (default runs/NAME-TIME).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--no-baseline", is_flag=True, help="Train coarse-to-fine only.")
@click.option("--seeds", "n_seeds", type=int, default=1, show_default=True,
              help="Run everything for N seeds (the recipe's seed, +1, ...): means, spread, paired deltas.")
@click.option("--set", "overrides", multiple=True,
              help="Override a recipe key, e.g. --set optim.lr=5e-4 or --set phases.1.factor=2 (TOML value).")
@click.option("--steps-log", is_flag=True, help="Print the loss every 20 steps.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train (auto: CUDA where it is available).")
def run(recipe, run_dir, resume_dir, no_baseline, n_seeds, overrides, steps_log, device):
    """Train RECIPE (a shipped name or a .toml path; default: demo) coarse-to-fine and its baseline."""
    from c2fdata.store import StoreFormatError
    from c2ftrain.experiment import (
        default_run_dir,
        load_run_config,
        run_experiment,
        seed_list,
    )
    from c2ftrain.init_weights import InitError
    from c2ftrain.recipe import RecipeError, load_recipe

    check_run_dir("run", resume_dir, run_dir, "config.json")
    try:
        if resume_dir:
            rec, seeds, with_baseline = load_run_config(resume_dir)
            no_baseline = not with_baseline  # as the run was started
            run_dir = resume_dir
        else:
            rec = load_recipe(recipe, parse_overrides(overrides))
            seeds = seed_list(rec, n_seeds)
            run_dir = run_dir or default_run_dir(rec)
        if not store_exists(rec.store):
            fail(missing_store(rec.store))
    except (RecipeError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(f"recipe [bold]{rec.name}[/]" + (f": {rec.description}" if rec.description else ""))
    console.print(f"run directory {run_dir}" + (f", seeds {seeds}" if len(seeds) > 1 else ""))
    from c2ftrain.distributed import close_distributed

    printer = _printer({"verbose": steps_log})
    interrupt_on_terminate()  # `kill` or a scheduler's stop: the message below, as for Ctrl-C
    try:
        report = run_experiment(rec, run_dir, seeds=seeds, resume=bool(resume_dir), baseline=not no_baseline,
                                on_event=printer, device=_device(device))
    except (RecipeError, StoreFormatError, InitError, ValueError) as err:
        printer.stop()
        fail(str(err))
    except KeyboardInterrupt:
        printer.stop()
        if not (Path(run_dir) / "config.json").is_file():
            fail("interrupted before the run started: nothing was trained; start it again")
        fail(f"interrupted; finished runs and checkpoints are kept: continue with `c2ftrain run --resume {run_dir}`")
    finally:
        printer.stop()
        close_distributed()
    print_outcome(report)
    console.print(f"report: {Path(run_dir) / 'report.json'}, {Path(run_dir) / 'report.png'}")


@main.command()
@click.argument("recipe", required=False, default="esc50")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), help="Directory (default runs/NAME-cv-TIME).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the cross-validation in this directory (finished folds are kept).")
@click.option("--folds", "n_folds", type=int, help="Run folds 1..N only (default: all of the recipe's [cv] folds); "
              "with --resume, N may add folds to those the cross-validation was started with.")
@click.option("--seeds", "n_seeds", type=int, default=1, show_default=True, help="Seeds per fold.")
@click.option("--no-baseline", is_flag=True, help="Train coarse-to-fine only.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe key (as for `run`), e.g. "
              "--set cv.store=/data/esc50 (a store built with --fold 0).")
@click.option("--steps-log", is_flag=True, help="Print the loss every 20 steps.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def cv(recipe, run_dir, resume_dir, n_folds, n_seeds, no_baseline, overrides, steps_log, device):
    """Cross-validate RECIPE (default: esc50): `run` once per held-out fold (the recipe's [cv]
    table: fold splits of one store, or one store per fold), then per fold and the mean over folds for coarse-to-fine, the
    baseline and the equal-FLOPs control. Resumable with --resume DIR."""
    import time

    from c2fdata.store import StoreFormatError
    from c2ftrain.cv import cv_table, fold_list, load_cv_config, run_cv
    from c2ftrain.distributed import close_distributed
    from c2ftrain.experiment import seed_list
    from c2ftrain.init_weights import InitError
    from c2ftrain.recipe import RecipeError, load_recipe

    check_run_dir("cv", resume_dir, run_dir, "cv.json", allowed=("n_folds",))
    try:
        if resume_dir:
            rec, folds, seeds, with_baseline = load_cv_config(resume_dir)
            no_baseline, run_dir = not with_baseline, resume_dir
            if n_folds is not None:  # more folds of the same experiment: each fold's runs stand alone
                if n_folds < len(folds):
                    fail(f"--resume {resume_dir} was started with folds {folds}: --folds can add folds "
                         f"({len(folds)}..{rec.cv.folds}), not drop finished ones")
                folds = fold_list(rec, n_folds)
        else:
            rec = load_recipe(recipe, parse_overrides(overrides))
            folds, seeds = fold_list(rec, n_folds), seed_list(rec, n_seeds)
            run_dir = run_dir or Path("runs") / f"{rec.name}-cv-{time.strftime('%Y%m%d-%H%M%S')}"
    except (RecipeError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(f"recipe [bold]{rec.name}[/]" + (f": {rec.description}" if rec.description else ""))
    console.print(f"cross-validation over folds {folds} into {run_dir}" + (f", seeds {seeds}" if len(seeds) > 1 else ""))

    def on_fold(fold: int) -> None:
        where = rec.cv.store_of(fold) + (f", split {rec.cv.split_of(fold)}" if rec.cv.fold_splits else "")
        console.rule(f"[bold]fold {fold}[/] held out ({where})")

    printer = _printer({"verbose": steps_log})
    interrupt_on_terminate()
    try:
        report = run_cv(rec, run_dir, folds=folds, seeds=seeds, resume=bool(resume_dir), baseline=not no_baseline,
                        on_event=printer, on_fold=on_fold, device=_device(device))
    except (RecipeError, StoreFormatError, InitError, ValueError, FileNotFoundError) as err:
        printer.stop()
        fail(str(err))
    except KeyboardInterrupt:
        printer.stop()
        if not (Path(run_dir) / "cv.json").is_file():
            fail("interrupted before the cross-validation started: nothing was trained; start it again")
        fail(f"interrupted; finished folds and checkpoints are kept: continue with `c2ftrain cv --resume {run_dir}`")
    finally:
        printer.stop()
        close_distributed()
    console.print(cv_table(report))
    console.print(f"report: {Path(run_dir) / 'report.json'} (each fold's own: fold-K/report.json)")


@main.command()
@click.argument("recipe", required=False, default="demo")
@click.option("--set", "overrides", multiple=True, help="Override a recipe key (as for `run`).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--no-measure", is_flag=True, help="Skip the few timed train steps (no time estimate).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def plan(recipe, overrides, as_json, no_measure, device):
    """Without training: every epoch's phase, resolution, learning rate, training FLOPs and
    evaluation FLOPs for coarse-to-fine, the baseline and the equal-FLOPs control, the saving,
    and an estimated training time on this machine (from a few measured steps)."""
    from rich.markup import escape
    from rich.table import Table

    from c2fdata.store import StoreFormatError
    from c2ftrain.init_weights import InitError
    from c2ftrain.plan import MEASURE_STEPS, plan_experiment
    from c2ftrain.recipe import RecipeError, load_recipe

    try:
        rec = load_recipe(recipe, parse_overrides(overrides))
        if not store_exists(rec.store):
            fail(f"{missing_store(rec.store)} (the plan reads its clip counts)")
        if not no_measure:  # AST base on a CPU: minutes of timed steps, which should not look like a hang
            log_console(stderr=True).print(f"timing {MEASURE_STEPS + 1} train steps per resolution and batch size "
                                           "(--no-measure skips it: no time estimate)...")
        result = plan_experiment(rec, measure=not no_measure, device=_device(device))
    except (RecipeError, StoreFormatError, InitError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for note in [*result["notes"], *(f"{label}: {n}" for label, run in result["runs"].items() for n in run["notes"])]:
        console.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)
    for label, run in result["runs"].items():
        t = Table(title=f"{label}: {run['steps']} steps, {run['flops'] / 1e12:.2f} TFLOPs"
                        + (f", about {run['est_s'] / 60:.1f} min training" if "est_s" in run else "")
                        + f"; evaluation {run['eval_flops'] / 1e12:.2f} TFLOPs"
                        + (f" ({run['final_eval_flops'] / 1e12:.2f} of them after the last epoch)"
                           if run["final_eval_flops"] else ""))
        for c in ("epoch", "phase", "frames", "tokens", "steps", "lr at start", "TFLOPs", "eval TFLOPs"):
            t.add_column(c, justify="right")
        for e in run["epochs"]:
            t.add_row(str(e["epoch"]), e["label"], str(e["frames"]), str(e["tokens"]), str(e["steps"]),
                      f"{e['lr']:.2e}", f"{e['flops'] / 1e12:.2f}", f"{e['eval_flops'] / 1e12:.2f}")
        console.print(t)
    from c2ftrain.report import saving_text

    s = result["savings"]
    line = f"coarse-to-fine: {saving_text(s['flops'], 'fewer')} training FLOPs than the baseline"
    if "est_wall" in s:
        line += (f", about {saving_text(s['est_wall'])} training time on {result['device']} (estimated from "
                 "a few timed steps per resolution: rough where steps take milliseconds)")
    console.print(line)
    c2f = result["runs"]["c2f"]
    if c2f["coarse_full_eval_flops"] > 0.1 * c2f["flops"]:
        upto = "up to " if any(p.until == "plateau" for p in rec.phases) else ""
        console.print(f"[yellow]evaluating the coarse phases at full resolution too costs {upto}"
                      f"{c2f['coarse_full_eval_flops'] / 1e12:.2f} TFLOPs, {c2f['coarse_full_eval_flops'] / c2f['flops']:.0%} "
                      f"of coarse-to-fine's training: --set eval.full_resolution_during_coarse=false keeps only "
                      f"each coarse phase's last one[/]")


@main.command()
@click.argument("recipe")
@click.option("--grid", "grid_path", required=True, type=click.Path(path_type=Path),
              help="TOML file: a [grid] of override values and/or [[cells]] (see c2ftrain/sweep.py).")
@click.option("--seeds", "n_seeds", type=int, default=3, show_default=True, help="Seeds per cell.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Sweep directory (default runs/sweep-NAME-TIME).")
@click.option("--set", "overrides", multiple=True, help="Override applied to every cell (as for `run`).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def sweep(recipe, grid_path, n_seeds, out_dir, overrides, as_json):
    """Run RECIPE for every cell of a grid of overrides and N seeds; resumable (run it again to
    continue); prints mean ± std per run and paired deltas per cell."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from c2fdata.store import StoreFormatError
    from c2ftrain.init_weights import InitError
    from c2ftrain.recipe import RecipeError
    from c2ftrain.sweep import load_grid, run_sweep, summary_table

    try:
        cells = load_grid(grid_path)
        if n_seeds < 1:
            raise RecipeError(f"--seeds must be >= 1, got {n_seeds}")
    except RecipeError as err:
        fail(str(err))
    out_dir = out_dir or Path("runs") / f"sweep-{Path(str(recipe)).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    # with --json, stdout holds the summary alone: progress and run lines go to stderr
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True) if as_json else console, transient=as_json)
    with progress:
        task = progress.add_task("cells", total=len(cells))

        def on_cell(i, cell):
            progress.update(task, completed=i, description=f"cell {cell.name}")

        noted = set()

        def on_event(e):
            if e["event"] == "start":
                progress.console.print(f"  [dim]{e['run']} seed {e['seed']}: {' -> '.join(e['phases'])}[/]")
            elif e["event"] == "note":
                print_note(progress.console, noted, e)

        interrupt_on_terminate()
        try:
            summary = run_sweep(recipe, cells, out_dir, n_seeds, base_overrides=parse_overrides(overrides),
                                on_cell=on_cell, on_event=on_event)
        except (RecipeError, StoreFormatError, InitError, ValueError, FileNotFoundError, KeyboardInterrupt) as err:
            # the bar goes before the error is printed, not left drawn (at "0/N cells") under it
            progress.live.transient = True
            progress.stop()
            fail(str(err) if not isinstance(err, KeyboardInterrupt) else
                 f"interrupted; finished runs and checkpoints are kept: run the same command with --out {out_dir} "
                 "to continue")
        progress.update(task, completed=len(cells), description="cells")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        console.print(summary_table(summary))
        console.print(f"summary: {out_dir / 'summary.json'}")


def _device(choice: str) -> str | None:
    """None lets the library pick (CUDA where available); asking for CUDA without it is an error."""
    if choice == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda, but CUDA is not available here (torch "
                 f"{torch.__version__}); use --device cpu or install a CUDA build of torch")
    return None if choice == "auto" else choice


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the pooled report.json and report.png here (not into one of RUN_DIRS).")
@click.option("--finished-only", is_flag=True,
              help="Leave out (and name) seeds whose runs have not all finished, instead of stopping.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_cmd(run_dirs, out_dir, finished_only, as_json):
    """The report of finished run directories: one directory's again, or the seeds of several
    directories of one experiment pooled (e.g. `run --seeds 2 --set seed=3` on one machine and
    `--set seed=5` on another), with the paired differences over all of them."""
    from rich.markup import escape

    from c2ftrain.pool import PoolError, pool

    if out_dir and any(out_dir.resolve() == Path(d).resolve() for d in run_dirs):
        fail(f"--out {out_dir} is one of the directories pooled: its own report.json would be replaced; "
             f"give another directory")
    try:
        pooled = pool(list(run_dirs), finished_only=finished_only)
    except PoolError as err:
        fail(str(err))
    report = pooled.write(out_dir) if out_dir else pooled.report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for seed, missing in sorted(pooled.left_out.items()):
        console.print(f"[yellow]seed {seed} left out: not finished ({escape(str(missing))} is missing)[/]")
    for seed, dirs in sorted(pooled.passed_over.items()):
        console.print(f"[yellow]seed {seed}: taken from {escape(str(pooled.sources[seed]))}; not finished in "
                      f"{escape(', '.join(map(str, dirs)))}[/]")
    for label, dirs in pooled.runs_left_out.items():
        console.print(f"[yellow]{label} left out: not trained in {escape(', '.join(map(str, dirs)))} "
                      f"(run with --no-baseline)[/]")
    console.print(f"recipe [bold]{escape(pooled.recipe.name)}[/], seeds {pooled.seeds} from {len(run_dirs)} "
                  f"director{'y' if len(run_dirs) == 1 else 'ies'}")
    print_outcome(report)
    if out_dir:
        console.print(f"report: {out_dir / 'report.json'}, {out_dir / 'report.png'}")


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--store", help="the store to evaluate on, a folder or an s3:// URL (default: the one the checkpoint "
                              "was trained on)")
@click.option("--split", help="the split to evaluate (default: the run's evaluation split, else eval)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.option("--scores", "scores_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every clip's scores to FILE (.npz: ids, scores, targets, classes), for metrics of "
                   "your own.")
@click.option("--windows", is_flag=True,
              help="Score every clip over windows of the model's clip length that cover all its stored frames, their "
                   "scores averaged (as predict scores files), not over its first window alone as training runs "
                   "evaluate: whole utterances, up to the store's clip length.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def eval_cmd(checkpoint, store, split, batch_size, as_json, scores_path, windows, device):
    """Evaluate a checkpoint (final.pt or checkpoints/last.pt, or a run directory: its
    coarse-to-fine final.pt) at full resolution on a store split."""
    from rich.markup import escape

    from c2ftrain.evaluate import EVALUATED, evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(checkpoint, existing_store(store), split, batch_size, device=_device(device),
                                      scores_path=scores_path, windowed=windows)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        scored = f", {metrics['windows']} windows" if windows else ""
        console.print(f"{escape(metrics['checkpoint'])} on {escape(metrics['store'])}, split "
                      f"{escape(metrics['split'])} ({metrics['clips']} clips{scored}, full resolution)", soft_wrap=True)
        for k, v in metrics.items():
            if k not in EVALUATED:
                console.print(f"{k:>10}: {metric_text(k, v)}")
        if scores_path:
            console.print(f"scores of every clip: {escape(str(scores_path))}")
    for note in metrics["notes"]:  # on stderr, as the warning below
        log_console(stderr=True).print(f"[yellow]note[/yellow]: {escape(note)}", soft_wrap=True)
    if metrics["skipped_clips"]:  # on stderr: --json keeps stdout one JSON object
        log_console(stderr=True).print(
            f"[yellow]warning[/yellow]: {metrics['skipped_clips']} clip(s) failed their checksum and were left out of "
            f"these metrics (each named above); `c2fdata verify` on the store says how to rebuild them")



@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="classes shown per file")
@click.option("--store", help="the training store, a folder or an s3:// URL: for a checkpoint saved before checkpoints recorded their inputs "
                   "(default: the store it names); with a newer one, checked against what it recorded")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line and file")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def predict(checkpoint, audio, top_k, store, as_json, device):
    """Score audio files (or every audio file under a folder) with a trained checkpoint (or a run
    directory: its coarse-to-fine final.pt): its best classes per file. Files longer than the
    model's clips are scored in windows, averaged."""
    from rich.markup import escape
    from rich.progress import Progress
    from rich.table import Table

    from c2ftrain.evaluate import find_checkpoint
    from c2ftrain.predict import predict_files

    store = existing_store(store)
    try:
        checkpoint = find_checkpoint(checkpoint)  # a run directory: the checkpoint read, named as such
    except ValueError as err:
        fail(str(err))
    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as bar:
        task = bar.add_task("scoring", total=None)
        try:
            results, inputs = predict_files(checkpoint, list(audio), store=store, device=_device(device),
                                            progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (ValueError, FileNotFoundError) as err:
            fail(str(err))
    vocab = inputs.vocabulary
    if as_json:
        for r in results:
            row = {"path": r.path, "seconds": r.seconds, "windows": r.windows, "error": r.error}
            row["top"] = r.top(vocab, top_k) if not r.error else []
            click.echo(json.dumps(row))
    else:
        kind = "sigmoid, multi-label" if inputs.multi_label else "softmax"
        t = Table(title=f"{checkpoint}: best {min(top_k, len(vocab))} of {len(vocab)} classes per file ({kind} "
                        f"scores, averaged over {inputs.target_frames}-frame windows)")
        for c in ("file", "seconds", "windows", "classes"):  # paths folded, never cut: they are to be found
            t.add_column(c, justify="left" if c in ("file", "classes") else "right",
                         overflow="fold" if c in ("file", "classes") else "ellipsis")
        for r in results:
            # a line per class: class names may hold commas ("Bird vocalization, bird call, bird song")
            classes = (f"[red]{escape(r.error)}[/]" if r.error else
                       escape("\n".join(f"{c['score']:.3f} {c['name']}" for c in r.top(vocab, top_k))))
            t.add_row(escape(r.path), f"{r.seconds:.2f}", str(r.windows), classes)
        console.print(t)
    bad = [r for r in results if r.error]
    if bad:
        Console(stderr=True).print(f"[bold red]{len(bad)} of {len(results)} files could not be scored[/] "
                                   "(each one's reason is in its row" + (", field error)" if as_json else ")"))
        sys.exit(1)


if __name__ == "__main__":
    main()
