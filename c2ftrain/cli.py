"""c2ftrain command line: `run` (coarse-to-fine + baseline -> report) and `eval`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console

console = Console()


def fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    sys.exit(2)


@click.group()
@click.option("-v", "--verbose", is_flag=True)
def main(verbose: bool) -> None:
    """Train audio spectrogram transformers coarse-to-fine."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)


def _printer(state: dict):
    def on_event(e: dict) -> None:
        if e["event"] == "start":
            console.rule(f"[bold]{e['run']}[/]: {' -> '.join(e['phases'])}")
        elif e["event"] == "eval":
            m = ", ".join(f"{k} {v:.4f}" for k, v in e["metrics"].items() if "/" not in k)
            if "metrics_at_phase_resolution" in e:
                m += " [dim](at phase resolution: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in e["metrics_at_phase_resolution"].items()) + ")[/]"
            console.print(f"  {e['run']:<11} phase {e['phase'] + 1} ({e['phase_label']:<12}) epoch {e['epoch']:>2} "
                          f"step {e['step']:>5}  {m}  [dim]{e['cum_flops'] / 1e12:.2f} TFLOPs, {e['cum_wall_s']:.0f} s[/]")
        elif e["event"] == "step" and state.get("verbose"):
            console.print(f"    step {e['step']} loss {e['loss']:.4f} lr {e['lr']:.2e}", style="dim")
    return on_event


@main.command()
@click.argument("recipe", required=False, default="demo")
@click.option("--out", "run_dir", type=click.Path(path_type=Path), help="Run directory (default runs/NAME-TIME).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--no-baseline", is_flag=True, help="Train coarse-to-fine only.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe key, e.g. --set optim.lr=5e-4 (TOML value).")
@click.option("--steps-log", is_flag=True, help="Print the loss every 20 steps.")
def run(recipe, run_dir, resume_dir, no_baseline, overrides, steps_log):
    """Train RECIPE (a shipped name or a .toml path; default: demo) coarse-to-fine and its baseline."""
    import tomllib

    from c2ftrain.recipe import RecipeError, load_recipe
    from c2ftrain.report import report_table
    from c2ftrain.run import default_run_dir, load_run_recipe, run_recipe

    try:
        if resume_dir:
            rec = load_run_recipe(resume_dir)
            run_dir = resume_dir
        else:
            parsed = {}
            for o in overrides:
                key, _, value = o.partition("=")
                try:
                    parsed[key] = tomllib.loads(f"v = {value}")["v"]
                except tomllib.TOMLDecodeError:
                    parsed[key] = value
            rec = load_recipe(recipe, parsed)
            run_dir = run_dir or default_run_dir(rec)
    except (RecipeError, FileNotFoundError) as err:
        fail(str(err))
    from c2fdata.store import StoreFormatError

    if not Path(rec.store).exists():
        fail(f"store {rec.store} not found; build it first, e.g. `c2fdata build --dataset instruments`")
    console.print(f"recipe [bold]{rec.name}[/]: {rec.description}")
    console.print(f"run directory {run_dir}")
    try:
        report = run_recipe(rec, run_dir, resume=bool(resume_dir), baseline=not no_baseline,
                            on_event=_printer({"verbose": steps_log}))
    except (RecipeError, StoreFormatError, ValueError) as err:
        fail(str(err))
    console.print(report_table(report))
    if "savings" in report:
        s = report["savings"]
        name = report["metric_name"]
        scale, unit = (100, " points") if name == "accuracy" else (1, "")
        console.print(
            f"coarse-to-fine: {name} {report['c2f']['metric'] * scale:.2f} vs baseline "
            f"{report['baseline']['metric'] * scale:.2f} ({report['metric_delta'] * scale:+.2f}{unit}), "
            f"[bold]{_less(s['flops'], 'fewer', 'more')} training FLOPs, "
            f"{_less(s['wall'], 'less', 'more')} training time[/]"
        )
        if "equal_flops" in report:
            console.print(f"full resolution for the same FLOPs as coarse-to-fine: "
                          f"{name} {report['equal_flops']['metric'] * scale:.2f}")
    console.print(f"report: {Path(run_dir) / 'report.json'}, {Path(run_dir) / 'report.png'}")


def _less(saving: float, less: str, more: str) -> str:
    return f"{saving:.0%} {less}" if saving >= 0 else f"{-saving:.0%} {more}"


@main.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="eval", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(checkpoint, store, split, batch_size, as_json):
    """Evaluate a checkpoint (final.pt or checkpoints/last.pt) at full resolution on a store split."""
    from c2ftrain.evaluate import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(checkpoint, store, split, batch_size)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            console.print(f"{k:>10}: {v:.4f}")


if __name__ == "__main__":
    main()
