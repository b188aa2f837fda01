"""report.json, the closing table and report.png: the metric against cumulative FLOPs and wall
time, coarse-to-fine beside the baseline(s), phase boundaries marked."""

from __future__ import annotations

import json
from pathlib import Path

from c2ftrain.recipe import Recipe


def _run_summary(o) -> dict:
    return {"metric": o.metric, "metrics": o.metrics, "flops": o.flops, "wall_s": o.wall_s}


def build_report(recipe: Recipe, outcomes: dict) -> dict:
    c2f = outcomes["c2f"]
    report = {
        "recipe": recipe.name,
        "store": str(recipe.store),
        "metric_name": c2f.metric_name,
        "phases": [
            {"method": r.method, "factor": r.factor, "label": r.label, "frames": r.frames, "tokens": r.tokens,
             "epochs": r.epochs, "steps": r.steps, "flops": r.flops, "wall_s": r.wall_s,
             "data_loading_share": r.data_loading_share, "metric": r.metric}
            for r in c2f.records
        ],
        "c2f": _run_summary(c2f),
    }
    base = outcomes.get("baseline")
    if base is not None:
        report["baseline"] = _run_summary(base)
        report["savings"] = {
            "flops": 1 - c2f.flops / base.flops if base.flops else 0.0,
            "wall": 1 - c2f.wall_s / base.wall_s if base.wall_s else 0.0,
        }
        report["metric_delta"] = c2f.metric - base.metric
    if "equal_flops" in outcomes:
        report["equal_flops"] = _run_summary(outcomes["equal_flops"])
    return report


def write_report(run_dir: Path, report: dict, outcomes: dict) -> None:
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_report(run_dir / "report.png", report, outcomes)


def plot_report(path: Path, report: dict, outcomes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = report["metric_name"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"c2f": ("tab:blue", "coarse-to-fine"), "baseline": ("tab:gray", "baseline (full res.)"),
              "equal_flops": ("tab:orange", "full res., c2f's FLOPs")}
    for label, o in outcomes.items():
        color, text = styles.get(label, ("k", label))
        xs_f = [h["cum_flops"] / 1e12 for h in o.history]
        xs_t = [h["cum_wall_s"] / 60 for h in o.history]
        ys = [h["metrics"][name] * (100 if name == "accuracy" else 1) for h in o.history]
        axes[0].plot(xs_f, ys, "o-", color=color, label=text, ms=3)
        axes[1].plot(xs_t, ys, "o-", color=color, label=text, ms=3)
        if label == "c2f":  # phase boundaries
            for i, (h, nxt) in enumerate(zip(o.history, o.history[1:])):
                if nxt["phase"] != h["phase"]:
                    axes[0].axvline(h["cum_flops"] / 1e12, color=color, ls=":", lw=1)
                    axes[1].axvline(h["cum_wall_s"] / 60, color=color, ls=":", lw=1)
    unit = " (%)" if name == "accuracy" else ""
    axes[0].set(xlabel="training TFLOPs (cumulative)", ylabel=f"eval {name}{unit}", title="metric vs compute")
    axes[1].set(xlabel="training wall time (min)", ylabel=f"eval {name}{unit}", title="metric vs time")
    phases = " -> ".join(p["label"] for p in report["phases"])
    fig.suptitle(f"{report['recipe']}: {phases} (dotted: phase change)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_table(report: dict):
    from rich.table import Table

    name = report["metric_name"]
    fmt = (lambda v: f"{100 * v:.1f}%") if name == "accuracy" else (lambda v: f"{v:.4f}")
    t = Table(title=f"{report['recipe']}: coarse-to-fine vs full resolution")
    for col in ("run", "phase", "tokens", "epochs", "TFLOPs", "wall s", "data share", name):
        t.add_column(col, justify="left" if col in ("run", "phase") else "right")
    for p in report["phases"]:
        t.add_row("c2f", p["label"], str(p["tokens"]), str(p["epochs"]), f"{p['flops'] / 1e12:.2f}",
                  f"{p['wall_s']:.0f}", f"{p['data_loading_share']:.0%}", fmt(p["metric"]) if p["metric"] is not None else "")
    for label in ("c2f", "baseline", "equal_flops"):
        if label in report:
            r = report[label]
            t.add_row(f"[bold]{label}[/]", "total", "", "", f"{r['flops'] / 1e12:.2f}", f"{r['wall_s']:.0f}", "",
                      f"[bold]{fmt(r['metric'])}[/]")
    return t
