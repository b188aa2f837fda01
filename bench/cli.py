"""`bench`: where the time goes. Commands print rich tables and can write JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bench.machine import describe

console = Console()


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']}, "
            f"DALI {m['dali'] or 'n/a'}")


def write_json(path: Path | None, payload: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {path}")


@click.group()
def main() -> None:
    """Benchmarks of c2f's stores, loaders and training steps (warm-up excluded, medians of repeats)."""


@main.command()
@click.option("--clips", default=200, show_default=True, help="10-s clips to build.")
@click.option("--read-clips", default=2000, show_default=True, help="Clips in the read benchmark store.")
@click.option("--block-clips", "blocks", default="1,32", show_default=True, help="Shard sizes to compare.")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def store(clips, read_clips, blocks, json_path):
    """Build clips/s at 1 and 2 workers; random clip reads against a memory-mapped .npy."""
    from bench.store import bench_build, bench_reads

    m = describe()
    console.print(machine_line(m))
    with console.status("building..."):
        build = bench_build(clips)
    t = Table(title=f"build: {clips} clips of 10 s, 16 kHz WAV (steady state; start-up in the last column)")
    for c in ("workers", "clips/s", "clips/s per worker", "seconds", "clips/s incl. start-up"):
        t.add_column(c, justify="right")
    for w, r in build.items():
        t.add_row(str(w), f"{r['clips_per_s']:.1f}", f"{r['clips_per_s_per_worker']:.1f}", f"{r['seconds']:.1f}",
                  f"{r['clips_per_s_with_startup']:.1f}")
    console.print(t)
    with console.status("reading..."):
        reads = bench_reads(read_clips, block_clips=[int(b) for b in blocks.split(",")])
    t = Table(title=f"random single-clip reads, {read_clips} clips of 1024x128 float16, one process")
    for c in ("path", "clips/s", "spread", "vs mmap", "feature files", "write clips/s"):
        t.add_column(c, justify="right")
    t.add_row("mmap .npy (ceiling)", f"{reads['mmap']['median']:,.0f}", f"±{reads['mmap']['spread']:.0%}", "1.00", "1", "")
    for key, r in reads.items():
        if key.startswith("block_"):
            b = key.split("_")[1]
            t.add_row(f"store, {b} clips/shard", f"{r['reader']['median']:,.0f}", f"±{r['reader']['spread']:.0%}",
                      f"{r['reader_vs_mmap']:.2f}", f"{r['files']:,}", f"{r['write_clips_per_s']:,.0f}")
            t.add_row(f"  zarr's own read path", f"{r['zarr']['median']:,.0f}", f"±{r['zarr']['spread']:.0%}",
                      f"{r['zarr']['median'] / reads['mmap']['median']:.2f}", "", "")
    console.print(t)
    write_json(json_path, {"machine": m, "build": build, "reads": reads})


if __name__ == "__main__":
    main()
