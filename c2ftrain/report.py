"""report.json, the closing table and report.png: the metric against cumulative FLOPs and wall
time, coarse-to-fine beside the baseline(s), phase boundaries marked; over seeds, means with
their spread and the paired differences that decide the claim.

report.json keeps the first seed's view under the plain keys (`c2f.metric`, `savings`, ...) and
adds, per run, `metric_per_seed`, `metric_mean`, `metric_std`, `eval_curve` (the metric at each
full-resolution evaluation, mean over seeds: what cross-validation averages over folds; with
eval.full_resolution_during_coarse = false a coarse phase has one, its last), and at the top `seeds` and
`paired`: for "c2f-baseline" and "c2f-equal_flops", the mean over seeds of the per-seed
difference and its 95% interval (Student's t over seeds), its median, and on how many seeds
coarse-to-fine is ahead and behind (the rest are level: a small eval split ties often). Savings
are averaged over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from c2ftrain.recipe import Recipe
from c2ftrain.stats import ci95, mean, median, std

# the runs of an experiment, in the order they train and are shown
RUNS = ("c2f", "baseline", "equal_flops")
PAIRS = (("c2f", "baseline"), ("c2f", "equal_flops"))


def _run_summary(runs: list) -> dict:
    """The first seed's figures under the plain keys, then the spread over seeds."""
    first = runs[0]
    values = [o.metric for o in runs]
    return {"metric": first.metric, "metrics": first.metrics, "flops": first.flops, "wall_s": first.wall_s,
            "metric_per_seed": values, "metric_mean": mean(values), "metric_std": std(values),
            "flops_mean": mean([o.flops for o in runs]), "wall_s_mean": mean([o.wall_s for o in runs]),
            "eval_curve": eval_curve(runs), "other_evaluations": other_evaluations(runs)}


def other_evaluations(runs: list) -> dict:
    """The headline metric of the run's other final evaluations (the weight average,
    "averaged/mAP"; the extra eval splits, "eval_seen/accuracy"), over seeds: {key: {mean, std,
    per_seed}} for the keys every seed has."""
    name, out = runs[0].metric_name, {}
    for k in runs[0].metrics:
        if k.endswith(f"/{name}") and all(k in o.metrics for o in runs):
            values = [float(o.metrics[k]) for o in runs]
            out[k] = {"mean": mean(values), "std": std(values), "per_seed": values}
    return out


def full_resolution_evals(outcome) -> list[dict]:
    """The run's evaluations at full resolution: all of them, unless coarse phases were only
    evaluated at their own resolution along the way (eval.full_resolution_during_coarse)."""
    return [h for h in outcome.history if "metrics" in h]


def eval_curve(runs: list) -> list[float]:
    """The headline metric at each full-resolution evaluation (as many as every seed has), mean
    over seeds."""
    hists = [full_resolution_evals(o) for o in runs]
    n = min(len(h) for h in hists)
    return [mean([h[i]["metrics"][o.metric_name] for o, h in zip(runs, hists)]) for i in range(n)]


def saving_text(saving: float, less: str = "less", more: str = "more") -> str:
    """A saving (1 - c2f / baseline) in words: "47% fewer", "20% more", or past double "3.4x as much"."""
    if saving >= 0:
        return f"{saving:.0%} {less}"
    return f"{1 - saving:.1f}x as much" if saving < -1 else f"{-saving:.0%} {more}"


def _saving(c2f, base, key: str) -> float:
    b = getattr(base, key)
    return 1 - getattr(c2f, key) / b if b else 0.0


def build_report(recipe: Recipe, per_seed: list[dict], seeds: list[int]) -> dict:
    """per_seed: for each seed, {"c2f": RunOutcome, "baseline": ..., "equal_flops": ...}."""
    c2f = per_seed[0]["c2f"]
    report = {
        "recipe": recipe.name,
        "store": str(recipe.store),
        "metric_name": c2f.metric_name,
        "seeds": list(seeds),
        "phases": [
            {"method": r.method, "factor": r.factor, "label": r.label, "frames": r.frames, "tokens": r.tokens,
             "epochs": r.epochs, "steps": r.steps, "flops": r.flops, "wall_s": r.wall_s,
             "data_loading_share": r.data_loading_share, "metric": r.metric}
            for r in c2f.records
        ],
    }
    for label in RUNS:
        if label in per_seed[0]:
            report[label] = _run_summary([s[label] for s in per_seed])
    if "baseline" in report:
        report["savings"] = {key: mean([_saving(s["c2f"], s["baseline"], attr) for s in per_seed])
                             for key, attr in (("flops", "flops"), ("wall", "wall_s"))}
        report["metric_delta"] = report["c2f"]["metric_mean"] - report["baseline"]["metric_mean"]
        report["paired"] = {}
        for a, b in PAIRS:
            if b in report:
                diffs = [s[a].metric - s[b].metric for s in per_seed]
                report["paired"][f"{a}-{b}"] = {"mean": mean(diffs), "std": std(diffs), "ci95": ci95(diffs),
                                                "median": median(diffs), "ahead": sum(x > 0 for x in diffs),
                                                "behind": sum(x < 0 for x in diffs),
                                                "per_seed": diffs}
    return report


def write_report(run_dir: Path, report: dict, per_seed: list[dict]) -> None:
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_report(run_dir / "report.png", report, per_seed)


STYLES = {"c2f": ("tab:blue", "coarse-to-fine"), "baseline": ("tab:gray", "baseline (full res.)"),
          "equal_flops": ("tab:orange", "full res., c2f's FLOPs")}


def _curves(runs: list, name: str, scale: float):
    """Per evaluation: mean cumulative FLOPs and wall time, mean / min / max metric over seeds."""
    hists = [full_resolution_evals(o) for o in runs]
    n = min(len(h) for h in hists)
    pick = lambda key, i: [h[i][key] for h in hists]  # noqa: E731
    flops = [mean(pick("cum_flops", i)) / 1e12 for i in range(n)]
    wall = [mean(pick("cum_wall_s", i)) / 60 for i in range(n)]
    ys = [[h[i]["metrics"][name] * scale for h in hists] for i in range(n)]
    return flops, wall, [mean(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def plot_report(path: Path, report: dict, per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = report["metric_name"]
    scale = 100 if name == "accuracy" else 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in per_seed[0]:
        color, text = STYLES.get(label, ("k", label))
        runs = [s[label] for s in per_seed]
        flops, wall, y, lo, hi = _curves(runs, name, scale)
        if len(runs) > 1:
            text += f" (mean of {len(runs)} seeds, band: min-max)"
        for ax, xs in zip(axes, (flops, wall)):
            ax.plot(xs, y, "o-", color=color, label=text, ms=3)
            if len(runs) > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        if label == "c2f":  # phase boundaries
            hist = full_resolution_evals(runs[0])
            for i, (h, nxt) in enumerate(zip(hist, hist[1:])):
                if nxt["phase"] != h["phase"] and i < len(flops):
                    axes[0].axvline(flops[i], color=color, ls=":", lw=1)
                    axes[1].axvline(wall[i], color=color, ls=":", lw=1)
    unit = " (%)" if name == "accuracy" else ""
    axes[0].set(xlabel="training TFLOPs (cumulative)", ylabel=f"eval {name}{unit}", title="metric vs compute")
    axes[1].set(xlabel="training wall time (min)", ylabel=f"eval {name}{unit}", title="metric vs time")
    phases = " -> ".join(p["label"] for p in report["phases"])
    fig.suptitle(f"{report['recipe']}: {phases} (dotted: phase change)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.6)  # where it hides the least of the curves and bands
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_table(report: dict):
    from rich.table import Table

    name = report["metric_name"]
    fmt = (lambda v: f"{100 * v:.1f}%") if name == "accuracy" else (lambda v: f"{v:.4f}")
    many = len(report.get("seeds", [])) > 1
    title = f"{report['recipe']}: coarse-to-fine vs full resolution"
    if many:
        title += f" ({len(report['seeds'])} seeds: mean ± std; phase rows: seed {report['seeds'][0]})"
    t = Table(title=title)
    for col in ("run", "phase", "tokens", "epochs", "TFLOPs", "wall s", "data share", name):
        t.add_column(col, justify="left" if col in ("run", "phase") else "right")
    for p in report["phases"]:
        t.add_row("c2f", p["label"], str(p["tokens"]), str(p["epochs"]), f"{p['flops'] / 1e12:.2f}",
                  f"{p['wall_s']:.0f}", f"{p['data_loading_share']:.0%}", fmt(p["metric"]) if p["metric"] is not None else "")
    for label in RUNS:
        if label in report:
            r = report[label]
            value = f"{fmt(r['metric_mean'])} ± {fmt(r['metric_std'])}" if many else fmt(r["metric"])
            t.add_row(f"[bold]{label}[/]", "total", "", "", f"{r['flops_mean'] / 1e12:.2f}",
                      f"{r['wall_s_mean']:.0f}", "", f"[bold]{value}[/]")
    return t


def paired_lines(report: dict) -> list[str]:
    """One line per paired comparison: mean difference over seeds and its 95% interval."""
    name = report["metric_name"]
    scale, unit = (100, " points") if name == "accuracy" else (1, "")
    out = []
    for key, p in report.get("paired", {}).items():
        lo, hi = p["ci95"]
        n = len(p["per_seed"])
        # median and "ahead" (reports written before they existed lack them): one or two seeds
        # can carry a mean, which these show
        more = ""
        if "median" in p:
            level = n - p["ahead"] - p["behind"]
            more = (f", median {p['median'] * scale:+.2f}, {key.split('-')[0]} ahead on {p['ahead']}, behind on "
                    f"{p['behind']}" + (f", level on {level}" if level else ""))
        out.append(f"{key}: {p['mean'] * scale:+.2f}{unit} (95% interval {lo * scale:+.2f} .. {hi * scale:+.2f}, "
                   f"{n} seeds{more})")
    return out
