"""c2fdata command line: thin wrappers over build_store / store_info / verify_store / export_audio."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from c2fdata.compress import METHODS
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from c2fdata import __version__
from c2fdata.codec import CODECS, DEFAULT_CODEC
from c2fdata.console import log_console
from c2fdata.stacks import install_stack_dumps
from c2fdata.datasets import ADAPTERS
from c2fdata.lifetime import terminate_as_interrupt

console = log_console(stderr=True)
VERIFY_PROBLEMS_SHOWN = 50  # a damaged store can have thousands; the first ones say what happened


def progress_bar(unit: str = "clips") -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )


class LazyProgress:
    """A progress bar that appears on its first update, as a `progress(done, total)` callback.

    The library calls back only once it found the dataset and opened the store, so an error
    found before any work (a wrong --root, another dataset's store) prints alone, not under an
    empty bar.
    """

    def __init__(self, description: str, rate_unit: str | None = None):
        self.description, self.rate_unit = description, rate_unit
        self._bar = self._task = self._t0 = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self._bar is None:
            self._bar = progress_bar()
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total, rate="")
            self._t0 = now
        rate = ""
        if self.rate_unit:
            rate = f"{done / (now - self._t0) if now > self._t0 else 0.0:,.0f} {self.rate_unit}"
        self._bar.update(self._task, completed=done, total=total, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "LazyProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # unwrapped (the terminal wraps): a path cut at the console's width could not be copied, and
    # "[...]" in a path or value is text, not markup
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


@click.group()
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Build, inspect and check c2f feature stores (Kaldi fbank in chunked Zarr).

    `kill -USR1 PID` prints where every thread of a running command is, and it goes on."""
    install_stack_dumps()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


@main.command()
@click.option("--dataset", required=True, type=click.Choice(sorted(ADAPTERS)), help="Dataset adapter.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Folder with the dataset's metadata and audio (see README).")
@click.option("--out", help="Store to write: a folder or s3://bucket/path (default: stores/DATASET).")
@click.option("--workers", default=1, show_default=True, help="Worker processes decoding audio and computing features.")
@click.option("--shard", default="0/1", show_default=True, help="K/N: this builder fills every N-th block from K (0 <= K < N).")
@click.option("--limit", type=int, help="At most this many clips per split (a quick trial).")
@click.option("--strict", is_flag=True, help="Stop at the first bad clip or metadata problem.")
@click.option("--retry-failed", is_flag=True, help="Compute again the clips that failed in an earlier run (their "
              "files since fixed or fetched again), with the blocks that hold them; a re-run without it computes "
              "only what is pending.")
@click.option("--fold", type=int, default=1, show_default=True,
              help="esc50: K = 1..5 makes fold K the eval split and the other four train; 0 stores every "
              "fold as its own split fold1..fold5, one store for `c2ftrain cv`.")
@click.option("--target-frames", type=click.IntRange(min=1), help="Frames stored per clip (default per dataset: AudioSet 1024, ESC-50 512, ...).")
@click.option("--block-clips", type=click.IntRange(min=1), default=None, help="Clips per shard file (default: measured best, see docs/STORE.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="instruments: generation seed.")
@click.option("--train-split", help="The store's training split: the normalisation statistics come from it and "
                                    "recipes train on it unless they name data.train_split (default: the "
                                    "dataset's; AudioSet: the first of unbalanced_train, balanced_train, train "
                                    "with clips on disk).")
@click.option("--classes", help="The classes, in order, instead of those the data holds: another store (its "
              "classes: a test set built apart, lacking one) or a file of class names, one per line; for folder, "
              "manifest, vggsound and voxceleb. A clip of another class fails as an unknown label.")
@click.option("--codec", type=click.Choice(list(CODECS)), default=DEFAULT_CODEC, show_default=True,
              help="How features are kept: " + "; ".join(f"{c.name}: {c.help}" for c in CODECS.values())
              + " (docs/STORE.md compares them).")
def build(dataset, root, out, workers, shard, limit, strict, retry_failed, fold, target_frames, block_clips, seed,
          train_split, classes, codec):
    """Turn a dataset into a feature store; re-run the same command to resume."""
    from c2fdata.build import BuildConfig, StrictError, build_store, parse_shard
    from c2fdata.datasets import DEFAULT_STORE
    from c2fdata.store import DEFAULT_BLOCK_CLIPS, StoreFormatError

    options = {"fold": fold, "seed": seed, "train_split": train_split, "classes": classes}
    if target_frames:
        options["target_frames"] = target_frames
    try:
        cfg = BuildConfig(
            dataset=dataset, root=root, out=out or DEFAULT_STORE.format(dataset=dataset), workers=workers,
            shard=parse_shard(shard), limit=limit, strict=strict, retry_failed=retry_failed,
            block_clips=block_clips or DEFAULT_BLOCK_CLIPS, codec=codec, options=options,
        )
    except ValueError as err:
        fail(str(err))
    console.print(f"building [bold]{dataset}[/] -> {cfg.out} ({codec}) with {workers} worker(s), shard {shard}")
    terminate_as_interrupt()  # `kill` or `timeout`: the pool stopped and the message below, as for Ctrl-C
    with LazyProgress("features", rate_unit="clips/s") as progress:
        try:
            result = build_store(cfg, progress=progress)
        except (ValueError, StoreFormatError, StrictError) as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail(f"interrupted; finished blocks are kept: re-run the same command to resume {cfg.out}")
    _print_build(result)


@main.command("export-audio")
@click.option("--dataset", required=True, type=click.Choice(sorted(ADAPTERS)), help="Dataset adapter.")
@click.option("--split", required=True, help="Which split's clips.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="As for build.")
@click.option("--limit", type=click.IntRange(min=1), help="Only N clips of the split (in turn from each class).")
@click.option("--fold", type=int, default=1, show_default=True, help="esc50: as for build.")
@click.option("--seed", type=int, default=0, show_default=True, help="instruments: generation seed (as for build).")
def export_audio(dataset, split, out, root, limit, fold, seed):
    """Write a split's clips as wav files with labels.csv (the embedded dataset has no audio on
    disk: to listen to it, or to try `c2ftrain predict`)."""
    from c2fdata.export import export_audio as export

    with LazyProgress("audio", rate_unit="clips/s") as progress:
        try:
            result = export(dataset, split, out, root=root, limit=limit, progress=progress, fold=fold, seed=seed)
        except ValueError as err:
            fail(str(err))
    console.print(f"wrote {len(result.written)} clips of {dataset}/{split} to {result.out} (labels in labels.csv)")
    if result.problems:
        console.print(f"[yellow]{len(result.problems)} clip(s) not written (unreadable, or what a build skips)[/]: reasons in "
                      f"{result.out / 'problems.csv'}")


def _print_build(result) -> None:
    t = Table(title=f"store {result.path}")
    for col in ("split", "clips", "ok", "failed", "pending"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, c in result.completion.items():
        t.add_row(split, str(c["clips"]), str(c["ok"]), str(c["failed"]), str(c["pending"]))
    console.print(t)
    rate = result.computed / result.seconds if result.seconds else 0
    console.print(f"computed {result.computed} clips in {result.seconds:.1f} s ({rate:,.1f} clips/s)")
    if result.problems:
        _print_problems(result.problems)
    _print_notes(result.notes)
    if result.finalized:
        s = result.stats
        console.print(f"[green]finalised[/]: mean {s['mean']:.4f}, std {s['std']:.4f} over {s['frames']:,} values of '{s['split']}'")
    else:
        console.print("[yellow]not finalised yet[/]: other shards are still pending; "
                      f"once they finish, run `c2fdata finalize {result.path}` (the last builder does it itself)")


def _print_notes(notes) -> None:
    from rich.markup import escape

    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


def _effect(p: dict) -> str:
    return "skipped" if p["fatal"] or p["reason"] in ("missing", "unknown-label") else "kept"  # labels-dropped: kept


def _print_problems(problems, out: Console | None = None) -> None:
    """One row per kind of problem, with an example (the build's closing summary)."""
    counts = Counter((p["reason"], p["fatal"]) for p in problems)
    t = Table(title="build report (kept in the store: `c2fdata info STORE --problems`)")
    t.add_column("reason")
    t.add_column("clips", justify="right")
    t.add_column("effect")
    t.add_column("example")
    for (reason, fatal), n in counts.most_common():
        example = next(p for p in problems if p["reason"] == reason)
        detail = example["detail"].removeprefix(f"{example['id']}: ")  # the worker's detail may name the clip too
        t.add_row(reason, str(n), _effect(example), f"{example['split']}/{example['id']}: {detail}"[:100])
    (out or console).print(t)


def _tsv_field(value) -> str:
    return str(value).replace("\t", " ").replace("\n", " ")  # one field per column, one line per row


PROBLEM_TABLE_MAX_ROWS = 2000  # beyond, tab-separated lines: rich takes ~8 s per 20,000 table rows


def _list_problems(problems, out: Console) -> None:
    """Every problem, one row each (`info --problems`: a list to act on, on stdout). A long list
    (AudioSet's missing clips run to hundreds of thousands) comes as tab-separated lines."""
    if len(problems) > PROBLEM_TABLE_MAX_ROWS:
        lines = ["split\tclip\treason\teffect\tdetail"]
        lines += ["\t".join(_tsv_field(v) for v in (p["split"], p["id"], p["reason"], _effect(p), p["detail"]))
                  for p in problems]
        click.echo(f"{len(problems)} problems the build recorded (tab-separated):")
        click.echo("\n".join(lines))
        return
    t = Table(title=f"{len(problems)} problems the build recorded")
    for col in ("split", "clip", "reason", "effect", "detail"):
        t.add_column(col, overflow="fold")
    for p in problems:
        t.add_row(p["split"], p["id"], p["reason"], _effect(p), p["detail"])
    out.print(t)


@main.command()
@click.argument("store")
@click.option("--train-split", help="Make this split the store's training split (its statistics normalise the "
                                    "store; recipes train on it unless they name data.train_split).")
def finalize(store, train_split):
    """Compute normalisation stats once every shard of a sharded build is complete."""
    from c2fdata import store as st

    try:
        group = st.open_store(store, mode="r+")
        stats = st.finalize(group, store, train_split)
    except ValueError as err:  # StoreFormatError, StorageError, no usable clip
        fail(str(err))
    if stats is None:
        pending = {s: c["pending"] for s, c in st.completion(group).items() if c["pending"]}
        fail(f"{store}: clips still pending {pending}; finish every --shard first")
    console.print(f"finalised {store}: mean {stats['mean']:.4f}, std {stats['std']:.4f} from split '{stats['split']}'")


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--problems", is_flag=True, help="List every problem the build recorded.")
def info(store, as_json, problems):
    """What a store holds."""
    from c2fdata.info import build_problems, store_info

    try:
        d = store_info(store)
    except ValueError as err:  # StoreFormatError, StorageError
        fail(str(err))
    except RuntimeError as err:  # not expected (read_meta names damaged metadata): still say what to do
        fail(f"{store}: part of the store cannot be read ({err}); `c2fdata verify {store}` says where")
    if problems:
        d["problems"] = build_problems(store)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        if d["damage"]:
            sys.exit(1)
        return
    out = log_console()
    t = Table(title=f"{d['dataset']} store at {d['path']}")
    for col in ("split", "clips", "failed", "missing", "pending", "warnings", "mean frames"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, s in d["splits"].items():
        t.add_row(split + (" (stats)" if split == d["train_split"] else ""), f"{s['clips']:,}", str(s["failed"]),
                  str(s["missing"]), str(s["pending"]), str(s["warnings"]), f"{s['frames_mean']:.0f}")
    out.print(t)
    f = d["features"]
    out.print(f"classes {d['classes']} ({'multi-label' if d['multi_label'] else 'single-label'}), "
              f"{d['target_frames']} frames x {d['n_mels']} mels, hop {f['frame_shift_ms']} ms, window {f['frame_length_ms']} ms, "
              f"{f['sample_rate']} Hz")
    mean = "n/a (not finalised)" if d["mean"] is None else f"{d['mean']:.4f}, std {d['std']:.4f}"
    out.print(f"normalisation mean {mean}; {d['bytes'] / 2**20:,.1f} MiB in {d['files']:,} files; "
              f"codec {d['codec']}; format v{d['format_version']} by c2f {d['tool_version']}")
    if not d["metadata_checksums"]:
        out.print("metadata without checksums: this store was built before c2f checked its labels, frame "
                  "counts and status flags (clips are checked); a flipped bit there would be served. "
                  "Rebuild it (another --out) to add them.")
    if problems and d["problems"]:
        _print_problems(d["problems"], out)
        _list_problems(d["problems"], out)
    _print_notes(d["notes"])
    if d["damage"]:
        from rich.markup import escape

        for line in d["damage"]:
            out.print(f"[red]damaged[/red]: {escape(line)}")
        fail(f"the figures above count what zarr reads for the lost parts (zeros); `c2fdata verify {store}` names "
             f"the blocks, `c2fdata repair {store}` marks them for the same build command to recompute", code=1)


@main.command()
@click.argument("store")
def verify(store):
    """Read every clip back: completeness, checksums, finite values, shapes, labels."""
    from c2fdata.storage import StorageError
    from c2fdata.verify import verify_store

    with LazyProgress("verify") as progress:
        try:
            problems = verify_store(store, progress=progress)
        except StorageError as err:
            fail(str(err))
    if problems:
        for p in problems[:VERIFY_PROBLEMS_SHOWN]:
            console.print(f"[red]x[/] {p}")
        if len(problems) > VERIFY_PROBLEMS_SHOWN:
            console.print(f"... and {len(problems) - VERIFY_PROBLEMS_SHOWN} more")
        fail(f"{store}: {len(problems)} problem(s)")
    console.print(f"[green]ok[/]: {store} verified")


@main.command()
@click.argument("store")
@click.option("--block", "blocks", multiple=True, metavar="SPLIT:B",
              help="Mark this block (error messages name it); repeatable. Only its clips are read first: "
                   "one with nothing wrong is refused without --force.")
@click.option("--force", is_flag=True, help="With --block: mark a block even when it reads back whole.")
@click.option("--dry-run", is_flag=True, help="Say what would be marked; change nothing.")
def repair(store, blocks, force, dry_run):
    """Mark damaged blocks for rebuilding: every block `verify` finds a problem in that a rebuild
    fixes (reading the whole store), or the --block ones. Their features are deleted; re-run the
    build that made the store, which recomputes them from the audio (it must still be there). Run
    it while nothing else uses the store."""
    from c2fdata.repair import mark_for_rebuild, parse_block, plan_repair
    from c2fdata.storage import StorageError

    try:
        named = [parse_block(b) for b in blocks] or None
        with LazyProgress("verify") as progress:
            plan = plan_repair(store, named, progress=progress, force=force)
        if not dry_run:
            mark_for_rebuild(store, plan)
    except (ValueError, StorageError) as err:  # StoreFormatError, a bad --block
        fail(str(err))
    for text in plan.unrepairable:
        console.print(f"[red]x[/] not repaired (a block's rebuild does not fix it): {text}")
    if not plan.n_blocks:
        console.print(f"nothing to rebuild in {store}" + (" (see above)" if plan.unrepairable else ""))
        sys.exit(1 if plan.unrepairable else 0)
    console.print(("would mark" if dry_run else "marked") + f" for rebuilding in {store}:")
    t = Table()
    for col in ("split", "blocks", "which"):
        t.add_column(col)
    for split, b in plan.blocks.items():
        t.add_row(split, str(len(b)), ", ".join(map(str, sorted(b)[:20])) + (" ..." if len(b) > 20 else ""))
    log_console().print(t)
    if not dry_run:
        from c2fdata.store import open_store

        split = open_store(store).attrs["train_split"]
        console.print(f"now re-run the `c2fdata build` command that made {store}, with the same options and "
                      f"--train-split {split} (its statistics split): it recomputes these {plan.n_blocks} block(s) "
                      f"from the audio and finalises the store; sharded builds (--shard K/N): the builders with "
                      f"K = block mod N. Until then readers refuse the store as unfinalised. Then run `c2fdata "
                      f"verify {store}` again, to see the store whole.")
    sys.exit(1 if plan.unrepairable else 0)


@main.command()
@click.argument("store")
@click.option("--split", required=True, help="Split to read.")
@click.option("--index", type=int, help="Clip index in the split (as the loader numbers it).")
@click.option("--id", "clip_id", help="Clip id instead of --index (as `info --problems` and the build name it).")
@click.option("--method", type=click.Choice(list(METHODS)), help="Only this method (default: all).")
@click.option("--factor", type=click.IntRange(min=1), help="Only this compression factor (default: 1, 2, 4).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=".png: a picture; .npy: the served array.")
def show(store, split, index, clip_id, method, factor, out):
    """See what the model sees: one clip at C = 1, 2, 4 per method (.png), or exactly as served (.npy)."""
    from c2fdata.show import clip_index
    from c2fdata.show import show as render
    from c2fdata.store import StoreFormatError

    if (index is None) == (clip_id is None):
        fail("give the clip as --index N or --id ID (one of them)")
    try:
        if clip_id is not None:
            index = clip_index(store, split, clip_id)
        path = render(store, split, index, out, method, factor)
    except (ValueError, IndexError, StoreFormatError) as err:
        fail(str(err))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
