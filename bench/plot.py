"""`bench throughput --plot`: one picture of how each phase's time saving splits.

Left: samples/s of the loader alone, the model alone and both together, per phase (log scale:
the loader is often an order of magnitude faster than the model). Right: each one's speed-up
against the full-resolution phase, with the FLOPs ratio as the ideal; the data-loading share of
step time is written over each phase.
"""

from __future__ import annotations

from pathlib import Path

KINDS = (("loader", "loader alone"), ("model", "model alone"), ("end_to_end", "end to end"))


def plot_throughput(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["phases"]
    names = [f"{r['phase']}: {r['label']}" for r in rows]
    x = np.arange(len(rows))
    width = 0.26
    fig, (left, right) = plt.subplots(1, 2, figsize=(5 + 2.2 * len(rows), 4.2))
    for i, (key, label) in enumerate(KINDS):
        rates = [r[f"{key}_samples_per_s"] for r in rows]
        left.bar(x + (i - 1) * width, rates, width, label=label)
        ups = [r["speedup"][key] for r in rows]
        right.bar(x + (i - 1) * width, ups, width, label=label)
    left.set_yscale("log")
    left.set_ylabel("samples/s")
    left.set_title("throughput per phase")
    right.scatter(x, [r["speedup"]["flops"] for r in rows], marker="_", s=900, color="black", zorder=3,
                  label="FLOPs ratio (ideal)")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_ylabel(f"speed-up vs phase {result['reference_phase']} (C = 1)")
    right.set_title("where the saving goes")
    top = max(max(r["speedup"][k] for k, _ in KINDS) for r in rows)
    top = max(top, max(r["speedup"]["flops"] for r in rows))
    for xi, r in zip(x, rows):
        right.text(xi, top * 1.06, f"data share {r['data_loading_share']:.0%}", ha="center", fontsize=8)
    right.set_ylim(0, top * 1.18)
    for ax in (left, right):
        ax.set_xticks(x, names)
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    m = result["machine"]
    fig.suptitle(f"{result['recipe']} on {m['cpu']} ({m['cores']} cores, GPU {m['gpu'] or 'none'}), "
                 f"{result['loader']['backend']} loader, device {result['device']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
