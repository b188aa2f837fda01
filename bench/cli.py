"""`bench`: where the time goes. Commands print rich tables and can write JSON."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from bench.machine import busy_warning, describe
from c2fdata.console import log_console
from c2fdata.stacks import StallWatch, install_stack_dumps

# Wide enough for the throughput table when the output goes to a file or a pipe (docs, CI logs).
console = log_console()


def machine_line(m: dict) -> str:
    """The machine, and a warning on a second line if something else keeps its cores busy."""
    line = (f"{m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']}, "
            f"DALI {m['dali'] or 'n/a'}")
    warning = busy_warning(os.getloadavg()[0], m["cores"])
    return line if warning is None else f"{line}\n[yellow]{escape(warning)}[/yellow]"


def write_json(path: Path | None, payload: dict, quiet: bool = False) -> None:
    if path:
        from c2fdata.json_files import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, payload)  # a run killed while writing leaves the last whole file
        if not quiet:
            console.print(f"wrote {path}")


@contextmanager
def reporting(first: str, stall_s: float = 0.0) -> Iterator[Callable[[str], None]]:
    """say(text): what a long benchmark does now. On a terminal a spinner shows it; off one (a log,
    a GPU job's output) each goes to stderr as a line with the seconds since the start, so that a
    run that stopped shows where. stall_s > 0: every thread's stack on stderr once stall_s seconds
    pass without a say() (and every stall_s seconds after), the run going on."""
    errors = log_console(stderr=True)
    start = time.monotonic()
    with StallWatch(stall_s) as watch:
        if console.is_terminal:
            with console.status(first) as status:
                def say(text: str) -> None:
                    watch.progress()
                    status.update(text)

                yield say
        else:
            def say(text: str) -> None:
                watch.progress()
                errors.print(f"[{time.monotonic() - start:7.1f} s] {text}", markup=False, highlight=False)

            say(first)
            yield say


@click.group()
def main() -> None:
    """Benchmarks of c2f's stores, loaders and training steps (warm-up excluded, medians of repeats).

    `kill -USR1 PID` prints where every thread of a running benchmark is, and it goes on."""
    install_stack_dumps()


@main.command()
@click.option("--clips", default=200, show_default=True, help="10-s clips to build.")
@click.option("--read-clips", default=2000, show_default=True, help="Clips in the read benchmark store.")
@click.option("--block-clips", "blocks", default="1,32", show_default=True, help="Shard sizes to compare.")
@click.option("--reads", "n_reads", default=2000, show_default=True, help="Random reads per timed repeat.")
@click.option("--repeats", default=5, show_default=True, help="Timed repeats of the reads (median, spread).")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def store(clips, read_clips, blocks, n_reads, repeats, json_path):
    """Build clips/s at 1 and 2 workers; random clip reads against a memory-mapped .npy."""
    from bench.store import bench_build, bench_reads

    m = describe()
    console.print(machine_line(m))
    with console.status("building..."):
        try:
            build = bench_build(clips)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
    t = Table(title=f"build: {clips} clips of 10 s, 16 kHz WAV (steady state; start-up in the last column)")
    for c in ("workers", "clips/s", "clips/s per worker", "seconds", "clips/s incl. start-up"):
        t.add_column(c, justify="right")
    for w, r in build.items():
        t.add_row(str(w), f"{r['clips_per_s']:.1f}", f"{r['clips_per_s_per_worker']:.1f}", f"{r['seconds']:.1f}",
                  f"{r['clips_per_s_with_startup']:.1f}")
    console.print(t)
    with console.status("reading..."):
        reads = bench_reads(read_clips, block_clips=[int(b) for b in blocks.split(",")], reads=n_reads,
                            repeats=repeats)
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


@main.command("pipeline-build")
@click.option("--store", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Store to read (default: a 48-clip stand-in of AudioSet's shape, built first).")
@click.option("--split", default="balanced_train", show_default=True)
@click.option("--workers", default=2, show_default=True, help="Reader processes.")
@click.option("--start-method", type=click.Choice(["spawn", "fork"]), default="spawn", show_default=True,
              help="spawn: what a GPU pipeline does; fork: a CPU pipeline before CUDA is up.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def pipeline_build(store, split, workers, start_method, repeats, json_path):
    """Seconds to build a DALI pipeline and serve its first batch (each phase and evaluation
    loader builds one; spawned reader processes pay every import their source needs)."""
    from bench.pipeline_build import bench_pipeline_build
    from c2fdata.pipeline import dali_available

    if not dali_available():
        raise click.ClickException("nvidia-dali does not import here: pip install nvidia-dali-cuda130")
    res = bench_pipeline_build(store, split, workers, start_method, repeats)
    console.print(machine_line(describe()))
    console.print(f"{start_method}, {workers} reader process(es): build + first batch "
                  f"{res['median_s']:.2f} s (median of {repeats}, ±{res['spread']:.0%}): "
                  + ", ".join(f"{s:.2f}" for s in res["seconds"]))
    write_json(json_path, res)


@main.command("stand-in-store")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, default=("balanced_train=2000", "eval=64"), show_default=True,
              help="NAME=CLIPS (repeatable): the splits a recipe reads, e.g. audioset_balanced's.")
@click.option("--classes", default=527, show_default=True,
              help="Class folders (AudioSet has 527); no more than a split's clips, each class needing one.")
@click.option("--seconds", default=10.0, show_default=True, help="Clip length (10 s: 1,024 frames).")
@click.option("--workers", default=2, show_default=True, help="Build worker processes.")
def stand_in_store(out, splits, classes, seconds, workers):
    """Build a store of a dataset's shape from noisy tones, to benchmark a recipe (`bench throughput
    --recipe audioset_balanced --store OUT`) where the dataset is out of reach. Rates of the
    model are those of the real shape; the loader's, of content that compresses unlike audio."""
    from bench.store import build_stand_in

    parsed = {}
    for item in splits:
        name, _, n = item.partition("=")
        if not name or not n.isdigit() or int(n) < 1:
            raise click.BadParameter(f"{item!r}: expected NAME=CLIPS, e.g. balanced_train=2000", param_hint="--split")
        parsed[name] = int(n)
    try:
        res = build_stand_in(out, parsed, classes, seconds, workers)
    except (FileExistsError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    from c2fdata.reader import StoreReader

    reader = StoreReader(out, next(iter(parsed)))
    console.print(f"built {res['built_clips']:,} clips ({res['failed']} failed) into {out} in {res['build_s']:.1f} s: "
                  f"{len(reader.vocabulary)} classes (single-label; a class needs a clip)")


@main.command("codecs")
@click.option("--clips", default=512, show_default=True, help="10-s clips (noisy tones) built with every codec.")
@click.option("--codec", "codecs", multiple=True, help="Codec to measure (repeatable; default: all).")
@click.option("--workers", default=2, show_default=True, help="Build worker processes.")
@click.option("--reads", "n_reads", default=2000, show_default=True, help="Random reads per timed repeat.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--out", help="Folder or s3://bucket/prefix to build the stores in (default: a temporary folder).")
@click.option("--moto", is_flag=True, help="Start a local S3-compatible server (moto) and build into it: "
              "NOT real S3 (no network latency or bandwidth limit); for the S3 code path's own cost.")
@click.option("--concurrent", default="1,2,4", show_default=True,
              help="Reader process counts for the many-readers measurement ('' to skip).")
@click.option("--no-references", is_flag=True, help="Skip lilcom, lhotse and per-clip 8-bit (measured where installed).")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def codecs_command(clips, codecs, workers, n_reads, repeats, out, moto, concurrent, no_references, json_path):
    """Per store codec: bytes per clip, build clips/s, random reads/s per process, error against
    float32 features; lilcom/lhotse beside them; reads/s per process with 1, 2, 4 readers at once."""
    from bench.store import bench_codecs, bench_concurrent_reads

    m = describe()
    console.print(machine_line(m))
    import tempfile

    server = _start_moto() if moto else None
    tmp = tempfile.TemporaryDirectory()  # the stores outlive bench_codecs: the readers below use them
    try:
        where = "S3 via moto on localhost" if server else (out or "local disk")
        out = "s3://c2f-bench/codecs" if server else (out or tmp.name)
        with console.status("building and reading..."):
            result = bench_codecs(clips, codecs or None, workers, n_reads, repeats, out, not no_references)
        console.print(codecs_table(result, where))
        if concurrent:
            counts = tuple(int(c) for c in concurrent.split(","))
            result["concurrent"] = {}
            for name, r in result["codecs"].items():
                with console.status(f"{name}: concurrent readers..."):
                    result["concurrent"][name] = bench_concurrent_reads(r["store"], counts, n_reads, repeats)
            console.print(concurrent_table(result["concurrent"], m["cores"]))
    finally:
        tmp.cleanup()
        if server:
            server.stop()
    write_json(json_path, {"machine": m, "moto": bool(server), **result})


def _start_moto():
    """A moto S3 server on 127.0.0.1 (a free port), the AWS settings pointing at it, a bucket."""
    import os
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true")
    boto3.client("s3").create_bucket(Bucket="c2f-bench")
    return server


def codecs_table(result: dict, where: str) -> Table:
    t = Table(title=f"{result['clips']} clips of 10 s (1024 x 128), {where}; reads: one process, random, "
                    "crc32c checked, median of repeats")
    for c in ("codec", "bytes/clip", "vs float16", "build clips/s", "reads/s per process", "max abs err", "mean abs err"):
        t.add_column(c, justify="right")
    rows = list(result["codecs"].items()) + [(f"({k})", v) for k, v in result["references"].items()]
    decode_only = False  # a row timed without I/O, which the caption explains
    for name, r in rows:
        decode_only |= "note" in r and "no I/O" in r["note"]
        reads = r["reads"]
        t.add_row(name, f"{r['bytes_per_clip'] / 1024:,.0f} KiB", f"{r['share_of_float16']:.1%}",
                  f"{r['build_clips_per_s']:,.0f}" if "build_clips_per_s" in r else
                  (f"{r['write_clips_per_s']:,.0f} (write)" if "write_clips_per_s" in r else ""),
                  f"{reads['median']:,.0f} ±{reads['spread']:.0%}" + (" *" if "note" in r and "no I/O" in r["note"] else ""),
                  f"{r['max_abs_error']:.4f}", f"{r['mean_abs_error']:.5f}")
    t.caption = "; ".join(["(...): measured, not offered"] * bool(result["references"])
                          + ["* decode alone, no I/O"] * decode_only) or None
    return t


def concurrent_table(result: dict, cores: int) -> Table:
    counts = list(next(iter(result.values())))
    t = Table(title=f"random reads/s per process with P reader processes at once ({cores} cores here: "
                    "beyond that, processes share cores)")
    t.add_column("codec")
    for p in counts:
        t.add_column(f"P={p} per process (total)", justify="right")
    for name, rows in result.items():
        t.add_row(name, *[f"{rows[p]['per_process']:,.0f} ({rows[p]['total']:,.0f})" for p in counts])
    return t


@main.command()
@click.option("--phase", "phase_numbers", type=int, multiple=True,
              help="Phase of the recipe, 1-based (repeatable; default 1). The C = 1 phase is always measured too.")
@click.option("--all", "all_phases", is_flag=True, help="Every phase of the recipe, in one table.")
@click.option("--recipe", default="demo", show_default=True, help="Shipped recipe name or a .toml path.")
@click.option("--store", type=click.Path(path_type=Path), help="Store to read instead of the recipe's.")
@click.option("--loader", "backend", type=click.Choice(["dali", "torch"]),
              help="Loader backend (default: the recipe's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=int, help="Every phase's batch size instead of the recipe's.")
@click.option("--set", "overrides", multiple=True,
              help="Override a recipe key, as c2ftrain run does, e.g. --set optim.fused=true (TOML value).")
@click.option("--compile", "compile_mode", metavar="MODE",  # checked by bench_throughput: the CLI stays light
              help="torch.compile each phase's model in MODE: default, reduce-overhead (CUDA graphs), "
                   "max-autotune or max-autotune-no-cudagraphs (default: the recipe's model.compile; compiled "
                   "in the warm-up round; end to end it skips an epoch's shorter last batch, which "
                   "would compile again).")
@click.option("--repeats", default=5, show_default=True,
              help="Timed rounds (every phase once per round); median and spread over them.")
@click.option("--warmup", default=1, show_default=True, help="Untimed rounds before them.")
@click.option("--batches", default=10, show_default=True, help="Train steps per repeat (model alone, end to end).")
@click.option("--loader-batches", default=50, show_default=True, help="Batches per repeat of the loader alone.")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Draw the split into FILE.png.")
@click.option("--stall-dump", "stall_s", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Print every thread's stack to stderr whenever SECONDS pass without progress (a compile, "
                   "a pipeline or a step that hangs), each dump headed by Python's 'Timeout (H:MM:SS)!' under "
                   "the progress line of the part that stalled; the run goes on. 0 (default): off; "
                   "`kill -USR1 PID` prints them at any time.")
def throughput(phase_numbers, all_phases, recipe, store, backend, device, batch_size, overrides, compile_mode,
               repeats, warmup, batches, loader_batches, json_path, plot_path, stall_s):
    """Per phase: samples/s of the loader alone, the model's train step alone (synthetic input of
    the phase's shape) and both together; data-loading share; speed-ups against C = 1."""
    from bench.throughput import ThroughputSettings, bench_throughput
    from c2ftrain.cli import parse_overrides
    from c2ftrain.recipe import load_recipe

    try:
        rec = load_recipe(recipe, parse_overrides(overrides))
        numbers = list(range(1, len(rec.phases) + 1)) if all_phases else list(phase_numbers or [1])
        settings = ThroughputSettings(repeats=repeats, warmup=warmup, batches=batches, loader_batches=loader_batches)
        console.print(machine_line(describe()))
        with reporting("checking the recipe and its store", stall_s) as say:
            result = bench_throughput(rec, numbers, store=store, backend=backend, device=device,
                                      batch_size=batch_size, compile_mode=compile_mode, settings=settings,
                                      progress=say,  # a run cut short keeps its timed rounds
                                      on_round=lambda partial: write_json(json_path, partial, quiet=True))
    except (ValueError, FileNotFoundError, ImportError) as err:  # RecipeError is a ValueError
        raise click.ClickException(str(err)) from None
    console.print(throughput_table(result))
    write_json(json_path, result)
    if plot_path:
        from bench.plot import plot_throughput

        console.print(f"wrote {plot_throughput(result, plot_path)}")


@main.command()
@click.option("--phase", "phase_numbers", type=int, multiple=True,
              help="Phase of the recipe, 1-based (repeatable; default: every phase).")
@click.option("--recipe", default="demo", show_default=True, help="Shipped recipe name or a .toml path.")
@click.option("--store", type=click.Path(path_type=Path), help="Store to read instead of the recipe's.")
@click.option("--loader", "backends", multiple=True, type=click.Choice(["dali", "torch"]),
              help="Loader backend (repeatable; default: both, DALI where it imports).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the trainer would train; its loaders hand over there.")
@click.option("--batch-size", type=int, help="Every phase's batch size instead of the recipe's.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe key, as c2ftrain run does.")
@click.option("--step-ms", default=30.0, show_default=True,
              help="The stand-in step: milliseconds the main thread spins in Python before each next() "
                   "(AST base at C = 4, batch 12, on an H200: about 30).")
@click.option("--batches", default=60, show_default=True, help="Timed batches per loader and phase.")
@click.option("--warmup", default=10, show_default=True, help="Untimed batches before them.")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def handover(phase_numbers, recipe, store, backends, device, batch_size, overrides, step_ms, batches, warmup,
             json_path):
    """What a batch costs the training process's main thread when the loader is ahead: the time
    inside next() behind a stand-in step that keeps the main thread busy. On a fast GPU it is the
    floor of the data-loading share, next / (next + step)."""
    from bench.handover import bench_handover
    from c2fdata.pipeline import dali_available
    from c2ftrain.cli import parse_overrides
    from c2ftrain.recipe import load_recipe

    m = describe()
    try:
        rec = load_recipe(recipe, parse_overrides(overrides))
        numbers = list(phase_numbers) or list(range(1, len(rec.phases) + 1))
        chosen = tuple(backends) or (("dali",) if dali_available() else ()) + ("torch",)
        console.print(machine_line(m))
        with reporting("serving batches"):
            result = bench_handover(rec, numbers, store=store, backends=chosen, device=device, batch_size=batch_size,
                                    step_ms=step_ms, batches=batches, warmup=warmup)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise click.ClickException(str(err)) from None
    console.print(handover_table(result))
    write_json(json_path, {"machine": m, **result})


def handover_table(result: dict) -> Table:
    t = Table(title=(f"{result['recipe']}: inside next(), per batch, behind a {result['step_ms']:g} ms busy step "
                     f"(medians of {result['batches']} batches; ms); model on {result['device']}"))
    for c in ("loader", "phase", "batch", "next()", "p90", "main thread's CPU", "waiting", "share",
              "floor share", "first batch s"):
        t.add_column(c, justify="right")
    for r in result["rows"]:
        b = r["batch"]
        t.add_row(f"{r['loader']} ({r['loader_device']})", f"{r['phase']}: {r['label']}",
                  f"{'x'.join(map(str, b['shape']))} {b['dtype']}", f"{r['next_ms']['median']:.2f}",
                  f"{r['next_ms']['p90']:.2f}", f"{r['main_cpu_ms']['median']:.2f}", f"{r['waiting_ms']['median']:.2f}",
                  f"{r['share_at_step']:.1%}", f"{r['floor_share_at_step']:.1%}", f"{r['first_batch_s']:.1f}")
    t.caption = ("share: next() / (next() + step), as served; floor share: the main thread's CPU time alone (the "
                 "hand-over's work), what remains where the workers keep up and no other thread holds the GIL")
    return t


def throughput_table(result: dict) -> Table:
    ld = result["loader"]
    t = Table(title=(f"{result['recipe']}: samples/s per phase, median of {result['settings']['repeats']} "
                     f"(± half-range); {ld['backend']} loader ({ld['num_workers']} workers) on {ld['device']}, "
                     f"model on {result['device']}; speed-ups vs phase {result['reference_phase']} (C = 1)"))
    gpu = result["phases"][0].get("gpu_busy") is not None  # measured on CUDA only
    for c in ("phase", "frames", "tokens", "loader", "model", "end to end", "data share",
              *(("GPU busy", "NVML") if gpu else ()), "loader x", "model x", "end-to-end x", "FLOPs x"):
        t.add_column(c, justify="right")
    for r in result["phases"]:
        sp, up = r["spread"], r["speedup"]
        nvml = r.get("gpu_utilization_nvml")
        t.add_row(
            f"{r['phase']}: {r['label']}", str(r["frames"]), str(r["tokens"]),
            f"{r['loader_samples_per_s']:,.0f} ±{sp['loader']:.0%}",
            f"{r['model_samples_per_s']:,.0f} ±{sp['model']:.0%}",
            f"{r['end_to_end_samples_per_s']:,.0f} ±{sp['end_to_end']:.0%}", f"{r['data_loading_share']:.1%}",
            *((f"{r['gpu_busy']:.1%}", "-" if nvml is None else f"{nvml:.0%}") if gpu else ()),
            f"{up['loader']:.2f}", f"{up['model']:.2f}", f"{up['end_to_end']:.2f}", f"{up['flops']:.2f}",
        )
    la = result["load_average"]
    t.caption = f"load average (1 min) before {la['before'][0]:.2f}, after {la['after'][0]:.2f}"
    behind = [r["loader_cores_during_model"] for r in result["phases"] if r.get("loader_cores_during_model") is not None]
    if behind:  # the bench keeps every phase's loader open: did any of them work while a model ran alone?
        t.caption += f"; loader processes during model alone: at most {max(behind):.2f} cores (median over rounds)"
    return t


@main.command()
@click.option("--clips", default=1024, show_default=True, help="10-s clips written, built and served.")
@click.option("--seconds", default=10.0, show_default=True, help="Clip length.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=2, show_default=True,
              help="Worker processes of every loader (DALI: also its operator threads).")
@click.option("--loader", "backends", multiple=True, type=click.Choice(["dali", "torch"]),
              help="c2f backends to run (default: both, DALI where it imports).")
@click.option("--device", type=click.Choice(["cpu", "gpu", "cuda"]), default="cpu", show_default=True,
              help="Where c2f's loaders compress and normalise (the AST-style loader is CPU-only); gpu "
                   "(the loaders' name, DALI's) and cuda (throughput's, torch's) are the same.")
@click.option("--no-ast", is_flag=True, help="Skip the AST-style loader.")
@click.option("--repeats", default=5, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--batches", default=16, show_default=True, help="Batches per repeat, c2f loaders.")
@click.option("--ast-batches", default=4, show_default=True, help="Batches per repeat, AST-style loader.")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def loaders(clips, seconds, batch_size, workers, backends, device, no_ast, repeats, warmup, batches, ast_batches,
            json_path):
    """c2f DALI vs c2f torch vs an AST-style loader (decode + fbank per sample), same clips, cores
    and batch; loader-only samples/s at C = 1, 2, 4 for Frame-Shift and average pooling."""
    from bench.loaders import bench_loaders

    device = "gpu" if device == "cuda" else device  # one name inside: PipelineConfig's
    m = describe()
    console.print(machine_line(m))
    try:
        with console.status("writing clips, building the store, measuring..."):
            result = bench_loaders(clips, seconds, batch_size, workers, tuple(backends) or ("dali", "torch"),
                                   batches=batches, ast_batches=ast_batches, repeats=repeats, warmup=warmup,
                                   ast=not no_ast, device=device)
    except (ValueError, ImportError) as err:
        raise click.ClickException(str(err)) from None
    console.print(loaders_table(result))
    write_json(json_path, {"machine": m, **result})


def loaders_table(result: dict) -> Table:
    t = Table(title=(f"loader alone: samples/s, {result['clips']} clips of {result['seconds']:g} s "
                     f"({result['target_frames']} frames), batch {result['batch_size']}, {result['workers']} workers, "
                     f"c2f on {result['device']}, "
                     f"median of {result['repeats']} (± half-range)"))
    for c in ("loader", "phase", "samples/s", "vs own C = 1", "vs AST-style"):
        t.add_column(c, justify="right")
    for name, rows in result["loaders"].items():
        for r in rows.values():
            vs = r.get("vs_ast_style")
            t.add_row(name, f"{r['method']} C={r['factor']}", f"{r['samples_per_s']:,.0f} ±{r['spread']:.0%}",
                      f"{r['vs_own_c1']:.2f}", f"{vs:.1f}x" if vs else "")
    la = result["load_average"]
    t.caption = f"load average (1 min) before {la['before'][0]:.2f}, after {la['after'][0]:.2f}"
    return t


if __name__ == "__main__":
    main()
