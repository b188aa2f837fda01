"""The c2f feature store: one Zarr v3 group per dataset, written once, read by every phase.

Layout (format versions 1 to 3)::

    STORE/                       zarr group; attrs: format, format_version, dataset, features
                                 (FbankConfig), codec, vocabulary, multi_label, target_frames,
                                 splits, train_split, block_clips, fingerprint, stats, finalized, ...
    STORE/<split>/features       (N, T, F) as the codec keeps them (codec.py; float16 by default),
                                 one chunk per clip, sharded by block_clips, crc32c per clip
    STORE/<split>/frames         (N,) int32   real frames before zero padding
    STORE/<split>/status         (N,) uint8   0 pending, 1 ok, 2 failed  (the completion flag)
    STORE/<split>/errors         (N,) str     "" or "reason: detail" (failures and warnings)
    STORE/<split>/stat_sums      (blocks, 3) float64  sum, sum of squares, count over real frames
    STORE/<split>/ids            (N,) str     clip ids             (written once, at creation)
    STORE/<split>/labels         (N, K) uint8 multi-hot, or (N,) int32 class index (at creation)
    STORE/build/missing.json     clips listed by the metadata but absent on disk
    STORE/build/prepare.json     metadata problems (unknown labels, ...)

Every chunk of the metadata arrays (frames to labels above) ends in a crc32c that zarr checks on
every read, as every clip does: a flipped bit raises instead of serving a wrong label or frame
count. Every such chunk is written, all-zero ones too, so that a missing chunk file (which zarr
would read as zeros: class 0, no frames, pending) is an error: `chunks_missing`. Stores built
before that have neither (`c2fdata info` says so); rebuilding adds them, and `verify` still
compares their ids and labels with the fingerprint. An older c2f reads either kind (zarr decodes
the codec), so the format version is unchanged.

Clips are built in blocks of `block_clips` consecutive clips. A block is the unit of work, of
sharding (`--shard K/N` takes every N-th block) and of commit: its features shard, frames,
errors and statistics are written first and its status flags last, so a clip is complete iff
its status is non-zero, whatever moment a build was killed at. Blocks never share a file, so
builders on different machines never write the same file.

A store is written with the lowest format version that describes it: version 1 is the float16
layout (a store without a `codec` attribute is float16), version 2 adds the `codec` attribute
for any other codec, so a c2f release that predates codecs refuses such a store with its
"rebuild or use the release that wrote it" message instead of failing inside zarr; version 3
is the q32 codecs' current bytes (int8 residuals, raw bodies), which a release that reads q32
as version 2 would misread. Each codec names its version (codec.FeatureCodec).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import (
    sync as zarr_sync,  # runs a coroutine on zarr's own event loop
)
from zarr.errors import ContainsGroupError

from c2fdata import __version__
from c2fdata.codec import DEFAULT_CODEC, FeatureCodec, get_codec
from c2fdata.features import FbankConfig
from c2fdata.storage import Location, as_location
from c2fdata.vocab import Vocabulary

FORMAT_NAME = "c2f-feature-store"
FORMAT_VERSION = 3  # the newest this c2f writes; each codec writes its own (codec.FeatureCodec)
READ_VERSIONS = (1, 2, 3)
PENDING, OK, FAILED = 0, 1, 2
DEFAULT_BLOCK_CLIPS = 32  # clips per shard file; see docs/STORE.md for the measurement
META_CHUNK = 4096  # rows per chunk of the write-once metadata arrays (ids, labels)
# Metadata chunks: zarr's default zstd, then a crc32c checked on every read.
META_CODECS = {"compressors": (ZstdCodec(), Crc32cCodec())}
PER_BLOCK = ("status", "frames", "errors", "stat_sums")  # a chunk per block, rewritten with the block
WRITE_ONCE = ("ids", "labels")  # chunks of META_CHUNK rows, written from the dataset's metadata at creation


class StoreFormatError(ValueError):
    """A path that is not a c2f store, or a store of another format version."""


class DamagedStoreError(StoreFormatError):
    """A metadata array (status, frames, labels, ids, errors, statistics) that cannot be read: a
    chunk fails its crc32c or does not decode."""


def _where(group: zarr.Group) -> str:
    """The store's folder or URL (s3://...: an fsspec store's path has no protocol)."""
    store = group.store
    fs = getattr(store, "fs", None)
    if fs is not None and getattr(store, "path", None):
        return fs.unstrip_protocol(store.path)
    where = str(getattr(store, "root", None) or getattr(store, "path", None) or "the store")
    # zarr is given absolute paths (storage.Location.zarr_store): a store under the working
    # directory is named as it was most likely typed
    cwd = os.getcwd()
    return os.path.relpath(where) if where.startswith(cwd + os.sep) else where


def read_meta(group: zarr.Group, split: str, name: str, where: str | None = None) -> np.ndarray:
    """A split's metadata array, whole; DamagedStoreError naming it if a chunk cannot be read."""
    try:
        return group[split][name][:]
    except (json.JSONDecodeError, UnicodeDecodeError):  # its zarr.json, not a chunk
        check_documents(where or _where(group), [split])  # names the file
        raise
    except (ValueError, RuntimeError) as err:  # zarr's crc32c: ValueError; a zstd frame: RuntimeError
        _settle_zarr()
        where = where or _where(group)
        raise DamagedStoreError(
            f"{where}: part of the store cannot be read: split {split!r}, its {name} "
            f"({type(err).__name__}: {err}); `c2fdata verify {where}` says where, and how to rebuild it"
        ) from err


def _settle_zarr(timeout_s: float = 10.0) -> None:
    """Let zarr's event loop finish the reads still running. A whole-array read fetches its chunks
    concurrently; when one fails the others run on, and a process that exits on the error then
    destroys them mid-flight, which asyncio reports as pages of "Task was destroyed but it is
    pending!" under the one-line error."""
    async def wait_for_the_others() -> None:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        if others:
            await asyncio.wait(others, timeout=timeout_s)

    zarr_sync(wait_for_the_others())


def damaged_blocks(group: zarr.Group, split: str, name: str) -> list[tuple[int, Exception]]:
    """The blocks whose chunk of a per-block metadata array (PER_BLOCK) cannot be read, each
    with its error."""
    array = group[split][name]
    n = array.shape[0]
    # stat_sums holds a row per block; the others a row per clip, in chunks of a block
    ranges = [(k, k + 1) for k in range(n)] if name == "stat_sums" else block_ranges(n, int(group.attrs["block_clips"]))
    out = []
    for b, (s, e) in enumerate(ranges):
        try:
            array[s:e]
        except (ValueError, RuntimeError) as err:
            out.append((b, err))
    return out


def chunks_missing(group: zarr.Group, split: str, name: str) -> int:
    """How many chunk files of a metadata array are absent. Every chunk is written (at creation,
    or with its block), so in a finalised store, or for the write-once arrays, any absent one is
    a lost file; stores built before metadata checksums skipped all-zero chunks: 0 for them."""
    array = group[split][name]
    return array.nchunks - array.nchunks_initialized if _checksummed(array) else 0


def write_once_missing(group: zarr.Group, split: str) -> dict[str, int]:
    """The absent chunk files of a split's write-once arrays (ids, labels), by array: lost files
    in any store with metadata checksums (a few files each, so counting them is cheap)."""
    return {name: n for name in WRITE_ONCE if (n := chunks_missing(group, split, name))}


def _checksummed(array: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def meta_checksummed(group: zarr.Group) -> bool:
    """Whether every metadata array of every split carries a crc32c (stores built before do not)."""
    return all(_checksummed(group[split][name]) for split in group.attrs["splits"] for name in PER_BLOCK + WRITE_ONCE)


@dataclass(frozen=True)
class SplitMeta:
    ids: list[str]
    labels: np.ndarray  # (N, K) uint8 multi-hot, or (N,) int32


def fingerprint(attrs: dict, splits: dict[str, SplitMeta]) -> str:
    """What identifies a store's content: its settings, and every split's clip ids and labels."""
    h = hashlib.sha256()
    keys = ("dataset", "features", "vocabulary", "multi_label", "target_frames", "block_clips")
    settings = {k: attrs[k] for k in keys}
    if attrs.get("codec", DEFAULT_CODEC) != DEFAULT_CODEC:  # float16 stores keep their old fingerprint
        settings["codec"] = attrs["codec"]
    if attrs.get("parts"):  # which part of its file each clip is (manifest segments, channels); whole files: none
        settings["parts"] = attrs["parts"]
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(splits):
        h.update(name.encode())
        h.update("\n".join(splits[name].ids).encode())
        h.update(np.ascontiguousarray(splits[name].labels).tobytes())
    return h.hexdigest()[:16]


def check_format(attrs: dict, path: str | Path) -> None:
    if attrs.get("format") != FORMAT_NAME:
        raise StoreFormatError(
            f"{path} is not a c2f feature store (no '{FORMAT_NAME}' attribute); "
            "build one with `c2fdata build`"
        )
    found = attrs.get("format_version")
    if found not in READ_VERSIONS:
        raise StoreFormatError(
            f"{path} is a c2f store of format version {found}, this c2f ({__version__}) reads "
            f"versions {', '.join(map(str, READ_VERSIONS))}; rebuild it with `c2fdata build` (features are "
            "recomputed from the audio) or use the c2f release that wrote it"
        )
    try:
        get_codec(attrs.get("codec"))
    except ValueError as err:
        raise StoreFormatError(f"{path}: {err}; this c2f ({__version__}) cannot decode it: use the "
                               "c2f release that wrote it") from None


def store_codec(attrs: dict) -> FeatureCodec:
    """The codec a store's features are kept in (float16 for a store that names none)."""
    return get_codec(attrs.get("codec"))


def open_store(path: str | Path | Location, mode: str = "r") -> zarr.Group:
    """Open a store (local folder or s3:// URL) and check its format; StoreFormatError with what
    to do otherwise."""
    loc = as_location(path)
    if not loc.child("zarr.json").is_file():
        from c2fdata.datasets import build_command

        local, other = (Path(loc.path) if loc.fs is None else None), False
        with contextlib.suppress(OSError):  # a folder it may not list: the plain message below
            other = local is not None and local.is_dir() and any(local.iterdir()) and not any(local.glob("*/zarr.json"))
        if other:
            # a folder of other things (a dataset's audio and metadata, most often): a store is
            # never built into it
            raise StoreFormatError(
                f"{loc.url}: a folder, but not a c2f store (no zarr.json): if it holds a dataset, give it to "
                f"`c2fdata build --dataset DATASET --root {loc.url}` as --root; the store goes to --out "
                "(default stores/DATASET)")
        raise StoreFormatError(f"{loc.url}: no store here (no zarr.json); build one with "
                               f"`{build_command(str(path) if isinstance(path, (str, Path)) else loc.url)}`")
    try:
        group = zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode=mode)
    except (json.JSONDecodeError, UnicodeDecodeError):
        check_documents(loc, ())  # names the file
        raise
    check_format(dict(group.attrs), loc.url)
    return group


# The zarr.json documents of a split (its group's and its arrays'), besides the store's own.
SPLIT_DOCUMENTS = ("", "features", "status", "frames", "errors", "stat_sums", "ids", "labels")


def check_documents(path: str | Path | Location, splits) -> None:
    """DamagedStoreError naming every zarr.json of the store (its root, and those of `splits`)
    that is not JSON (truncated, overwritten): zarr itself fails on one with a bare decoding
    error that names no file. An absent one is left to whoever opens it."""
    loc = as_location(path)
    docs = [loc.child("zarr.json")] + [loc.child(s, a, "zarr.json") if a else loc.child(s, "zarr.json")
                                       for s in splits for a in SPLIT_DOCUMENTS]
    bad = []
    for doc in docs:
        try:
            json.loads(doc.read_bytes())
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            bad.append(f"{doc.url} ({err})")
    if bad:
        raise DamagedStoreError(
            f"unreadable store metadata, not JSON: {'; '.join(bad)}. Nothing reads this store until the "
            "file is restored from a copy of the store; a rebuild (`c2fdata repair`) cannot restore it, so "
            "without a copy build the store anew"
        )


def create_or_open(
    path: str | Path | Location,
    *,
    dataset: str,
    vocabulary: Vocabulary,
    multi_label: bool,
    target_frames: int,
    splits: dict[str, SplitMeta],
    train_split: str,
    fbank: FbankConfig,
    block_clips: int = DEFAULT_BLOCK_CLIPS,
    codec: str = DEFAULT_CODEC,
    missing: dict[str, list[str]] | None = None,
    prepare_issues: list[dict] | None = None,
    extra_attrs: dict | None = None,
) -> zarr.Group:
    """Create the store with every clip pending, or open the one a previous (or parallel) build
    made from the same metadata. Local creation is atomic: built in a temporary folder, then
    renamed, so N builders starting together agree on one store. Object storage has no rename:
    there every builder writes the same metadata in place (identical bytes, no clip data) and
    the root attributes last, so that a store is only seen once it is whole."""
    loc = as_location(path)
    feature_codec = get_codec(codec)
    attrs = {
        "format": FORMAT_NAME,
        "format_version": feature_codec.format_version,
        "tool_version": __version__,
        "dataset": dataset,
        "features": fbank.to_dict(),
        "codec": feature_codec.name,
        "vocabulary": vocabulary.to_list(),
        "multi_label": bool(multi_label),
        "target_frames": int(target_frames),
        "block_clips": int(block_clips),
        "train_split": train_split,
        "splits": {s: {"clips": len(m.ids)} for s, m in splits.items()},
        "missing": {s: len(v) for s, v in (missing or {}).items()},
        "finalized": False,
        "stats": None,
        **(extra_attrs or {}),
    }
    attrs["fingerprint"] = fingerprint(attrs, splits)
    if loc.child("zarr.json").is_file() or (loc.fs is None and loc.exists()):
        return _open_same(loc, attrs)
    if train_split not in splits:
        raise ValueError(f"train split {train_split!r} not among splits {sorted(splits)}")
    loc.check_bucket()
    contents = (attrs, splits, int(target_frames), fbank.n_mels, int(block_clips), feature_codec,
                missing, prepare_issues)
    if loc.fs is not None:
        _write_new(loc, *contents)
        return zarr.open_group(loc.zarr_store(read_only=False), mode="r+")
    tmp = as_location(str(Path(loc.path).with_name(f".{Path(loc.path).name}.tmp-{os.getpid()}")))
    shutil.rmtree(tmp.path, ignore_errors=True)
    _write_new(tmp, *contents)
    try:
        os.rename(tmp.path, loc.path)  # atomic; fails if another builder got there first
    except OSError:
        shutil.rmtree(tmp.path, ignore_errors=True)
        if not loc.exists():
            raise
        return _open_same(loc, attrs)
    return zarr.open_group(loc.zarr_store(read_only=False), mode="r+")


def _open_same(loc: Location, attrs: dict) -> zarr.Group:
    """The existing store at loc, if it was made from the same metadata and settings."""
    if not loc.child("zarr.json").is_file():
        raise StoreFormatError(f"{loc.url} exists and is not a c2f store (a dataset's folder? that is --root); "
                               "choose another --out, one that does not exist yet")
    group = open_store(loc, mode="r+")
    check_documents(loc, group.attrs["splits"])
    found = group.attrs.get("fingerprint")
    if found != attrs["fingerprint"]:
        why = f"it was built from other metadata or settings: {_what_differs(dict(group.attrs), attrs)}"
        raise StoreFormatError(
            f"{loc.url} exists but {why} (fingerprint {found} != {attrs['fingerprint']}); use another "
            "--out, or delete it to start over"
        )
    # The statistics split is not part of the fingerprint (no clip depends on it): a build never
    # finalised yet takes the new one; a store that has statistics (finalised, or being rebuilt
    # after `c2fdata repair`) says how they were made.
    was, now = group.attrs["train_split"], attrs["train_split"]
    if was != now:
        if group.attrs.get("finalized") or group.attrs.get("stats"):
            state = "is finalised with" if group.attrs.get("finalized") else "is being rebuilt (repair) with"
            raise StoreFormatError(
                f"{loc.url} {state} normalisation statistics from split {was!r}; this build takes them "
                f"from {now!r}. Keep the store as it is with --train-split {was}, or take its statistics from "
                f"{now!r} with `c2fdata finalize {loc.url} --train-split {now}` (models trained on it before were "
                "fed the old statistics)")
        group.attrs.update({k: attrs.get(k) for k in ("train_split", "train_split_note", "notes")})
    return group


def store_notes(attrs: dict) -> list[str]:
    """What the build noted (files left out, ...), and which split the statistics come from
    where that was a guess."""
    return list(attrs.get("notes", [])) + ([attrs["train_split_note"]] if attrs.get("train_split_note") else [])


def _what_differs(was: dict, now: dict) -> str:
    """What makes two fingerprints differ, in the words of the options that set it."""
    diff = []
    if was.get("codec", DEFAULT_CODEC) != now["codec"]:
        diff.append(f"it keeps features as {was.get('codec', DEFAULT_CODEC)}, not {now['codec']} (--codec)")
    for key, option in (("dataset", "--dataset"), ("target_frames", "--target-frames"), ("block_clips", "--block-clips"),
                        ("features", "feature settings"), ("multi_label", "labels")):
        if was.get(key) != now[key]:
            diff.append(f"{key} {was.get(key)!r} here, {now[key]!r} now ({option})")
    if was.get("vocabulary") != now["vocabulary"]:
        old, new = ([tuple(c) if isinstance(c, list) else c for c in v or []] for v in (was.get("vocabulary"), now["vocabulary"]))
        gone, added = [c for c in old if c not in new], [c for c in new if c not in old]
        diff.append(f"{len(old)} classes here, {len(new)} now" + (f" (not here any more: {gone[:3]}, new: {added[:3]})"
                                                                  if gone or added else " (another order)"))
    def counts(a: dict) -> dict:
        return {s: v["clips"] for s, v in (a.get("splits") or {}).items()}

    if counts(was) != counts(now):
        diff.append(f"clips per split {counts(was)} here, {counts(now)} now (files added or removed, or --limit)")
    elif was.get("parts") != now.get("parts"):
        diff.append("clips are other segments or channels of their files (the manifest's start, end or channel)"
                    if "parts" in was else "it was built by an earlier c2f, which did not record the segments' "
                    "times and channels in the fingerprint: build into a new --out")
    return "; ".join(diff) or ("the same splits and counts, but other clip ids or labels (files renamed or "
                               "replaced, or the metadata changed)")


def _write_new(loc: Location, attrs, splits, frames, n_mels, block, codec, missing, prepare_issues) -> None:
    group = zarr.open_group(loc.zarr_store(read_only=False), mode="a")
    for name, meta in splits.items():
        try:
            _create_split(group, name, meta, frames, n_mels, block, codec)
        except ContainsGroupError:  # a parallel builder on object storage made it: identical
            pass
    loc.child("build", "missing.json").write_bytes(json.dumps(missing or {}, indent=1).encode())
    loc.child("build", "prepare.json").write_bytes(json.dumps(prepare_issues or [], indent=1).encode())
    group.attrs.update(attrs)  # last: the store exists for readers from here on


def _create_split(group: zarr.Group, name: str, meta: SplitMeta, frames: int, n_mels: int, block: int,
                  codec: FeatureCodec):
    n = len(meta.ids)
    n_blocks = max(1, -(-n // block))
    g = group.create_group(name)
    g.create_array(
        "features", shape=(n, frames, n_mels), dtype=codec.dtype, chunks=(1, frames, n_mels),
        shards=(block, frames, n_mels), fill_value=0,
        # the codec's chain ends in a crc32c per clip, checked on every read
        **codec.inner_codecs(),
    )
    g.create_array("frames", shape=(n,), dtype="int32", chunks=(block,), fill_value=0, **META_CODECS)
    g.create_array("status", shape=(n,), dtype="uint8", chunks=(block,), fill_value=PENDING, **META_CODECS)
    g.create_array("errors", shape=(n,), dtype=str, chunks=(block,), fill_value="", **META_CODECS)
    g.create_array("stat_sums", shape=(n_blocks, 3), dtype="float64", chunks=(1, 3), fill_value=0.0, **META_CODECS)
    every_chunk = {"config": {"write_empty_chunks": True}}  # all-zero ones too: an absent one was lost
    ids = g.create_array("ids", shape=(n,), dtype=str, chunks=(min(max(n, 1), META_CHUNK),), **META_CODECS,
                         **every_chunk)
    labels = g.create_array(
        "labels", shape=meta.labels.shape, dtype=meta.labels.dtype,
        chunks=(min(max(n, 1), META_CHUNK),) + meta.labels.shape[1:], fill_value=0, **META_CODECS, **every_chunk,
    )
    if n:
        ids[:] = np.asarray(meta.ids, dtype=object).astype(str)
        labels[:] = meta.labels


def block_ranges(n: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, n)) for s in range(0, n, block)]


def pending_blocks(group: zarr.Group, split: str, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Blocks of this builder's shard (every N-th block, from K) not yet committed."""
    k, n = shard
    status = read_meta(group, split, "status")
    block = group.attrs["block_clips"]
    return [
        b for b, (s, e) in enumerate(block_ranges(len(status), block))
        if b % n == k and (status[s:e] == PENDING).any()
    ]


def write_block(
    group: zarr.Group, split: str, block_index: int, features: np.ndarray, frames: np.ndarray,
    status: np.ndarray, errors: list[str], sums: np.ndarray,
) -> None:
    """Commit one block. Status goes last: a kill before it leaves the block pending."""
    g = group[split]
    start = block_index * group.attrs["block_clips"]
    end = start + len(frames)
    # every clip gets its chunk, all-zero ones too, so that a block with OK clips always has its
    # shard file and a missing one is an error, never a block of zeros; the metadata likewise
    with zarr.config.set({"array.write_empty_chunks": True}):
        g["features"][start:end] = store_codec(group.attrs).stored(features)
        g["frames"][start:end] = frames
        g["errors"][start:end] = np.asarray(errors, dtype=object).astype(str)
        g["stat_sums"][block_index] = sums
        g["status"][start:end] = status


def completion(group: zarr.Group) -> dict[str, dict[str, int]]:
    out = {}
    for split in group.attrs["splits"]:
        st = read_meta(group, split, "status")
        out[split] = {
            "clips": int(st.size), "ok": int((st == OK).sum()),
            "failed": int((st == FAILED).sum()), "pending": int((st == PENDING).sum()),
        }
    return out


def finalize(group: zarr.Group, path: str | Path = "", train_split: str | None = None) -> dict | None:
    """Once every clip of every split is committed: normalisation stats from the train split
    (over real frames, not padding), written to the attrs. Returns the stats, or None while
    clips are still pending (another shard still building). `train_split` makes another split
    than the build chose the training split (recipes train on it unless they name one), its
    statistics from the per-block sums kept (no clip is read)."""
    check_documents(path or _where(group), group.attrs["splits"])  # a store is finalised whole
    done = completion(group)
    if any(s["pending"] for s in done.values()):
        return None
    if train_split is not None and train_split not in done:
        raise ValueError(f"{path}: no split {train_split!r}; splits are {', '.join(sorted(done))}")
    train = train_split or group.attrs["train_split"]
    total, total_sq, count = read_meta(group, train, "stat_sums", str(path) or None).sum(axis=0)
    if count == 0:  # checked before anything is written: a refused split changes nothing
        raise ValueError(f"{path}: no usable clip in the train split {train!r}, nothing to normalise with; "
                         f"take the statistics from another split with `c2fdata finalize {path} --train-split SPLIT`")
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    stats = {"mean": float(mean), "std": std, "frames": int(count), "split": train}
    update = {"stats": stats, "finalized": True, "finalized_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if train_split is not None:  # chosen now: no longer a guess
        update.update(train_split=train_split, train_split_note="")
    group.attrs.update(update)
    return stats


def read_json(path: str | Path | Location, name: str):
    p = as_location(path).child("build", name)
    return json.loads(p.read_bytes()) if p.is_file() else None


def encode_labels(
    labels: list[list[str] | tuple[str, ...]], vocabulary: Vocabulary, multi_label: bool
) -> tuple[np.ndarray, list[tuple[int, list[str]]]]:
    """Label names/ids -> multi-hot (N, K) uint8 or class index (N,) int32 (-1 when unknown).
    Returns the array and [(row, unknown labels)] for the report."""
    unknown = []
    if multi_label:
        out = np.zeros((len(labels), len(vocabulary)), np.uint8)
    else:
        out = np.full((len(labels),), -1, np.int32)
    for row, labs in enumerate(labels):
        bad = [lab for lab in labs if lab not in vocabulary]
        if bad:
            unknown.append((row, bad))
        good = [vocabulary.index(lab) for lab in labs if lab in vocabulary]
        if multi_label:
            out[row, good] = 1
        elif len(good) == 1 and not bad:
            out[row] = good[0]
        elif len(labs) > 1:
            unknown.append((row, [f"{len(labs)} labels for a single-label dataset"]))
    return out, unknown


def create_store_from_arrays(
    path: str | Path, *, dataset: str, vocabulary: Vocabulary, multi_label: bool,
    splits: dict[str, dict], train_split: str = "train", fbank: FbankConfig | None = None,
    block_clips: int = DEFAULT_BLOCK_CLIPS, codec: str = DEFAULT_CODEC,
) -> zarr.Group:
    """A complete, finalised store from features already in memory (tests, own features).

    splits: name -> dict(features (N, T, F), frames (N,), labels [[label, ...], ...], ids [str]).
    """
    fbank = fbank or FbankConfig()
    metas, target = {}, None
    for name, s in splits.items():
        feats = np.asarray(s["features"])
        target = feats.shape[1] if target is None else target
        if feats.shape[1:] != (target, fbank.n_mels):
            raise ValueError(f"split {name}: features {feats.shape}, want (N, {target}, {fbank.n_mels})")
        enc, unknown = encode_labels(list(s["labels"]), vocabulary, multi_label)
        if unknown:
            raise ValueError(f"split {name}: unknown labels {unknown[:3]}")
        metas[name] = SplitMeta(ids=list(s["ids"]), labels=enc)
    group = create_or_open(
        path, dataset=dataset, vocabulary=vocabulary, multi_label=multi_label,
        target_frames=target, splits=metas, train_split=train_split, fbank=fbank,
        block_clips=block_clips, codec=codec,
    )
    served = get_codec(codec).served
    for name, s in splits.items():
        feats = np.asarray(s["features"], np.float32)
        frames = np.asarray(s["frames"], np.int32)
        for b, (start, end) in enumerate(block_ranges(len(frames), block_clips)):
            real = np.concatenate([served(feats[i, : frames[i]]) for i in range(start, end)]).astype(np.float64)
            sums = np.array([real.sum(), np.square(real, dtype=np.float64).sum(), real.size], np.float64)
            write_block(group, name, b, feats[start:end], frames[start:end],
                        np.full(end - start, OK, np.uint8), [""] * (end - start), sums)
    finalize(group, path)
    return group
