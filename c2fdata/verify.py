"""`c2fdata verify`: read every clip back and check it; a list of what is wrong (empty = fine).
`c2fdata repair` acts on the same scan (`scan_store`): the problems a block's rebuild fixes
carry that block."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from c2fdata import store as st
from c2fdata.reader import rebuild_hint
from c2fdata.shard_io import CorruptClipError, ShardedClipReader
from c2fdata.storage import as_location


@dataclass(frozen=True)
class Problem:
    text: str
    split: str | None = None
    block: int | None = None  # set when rebuilding this block of `split` fixes it (`c2fdata repair`)
    anew: bool = False  # only a new build fixes it (ids or labels lost: written once, at creation)
    unfinished: bool = False  # a build not finished yet: the build's to finish, nothing to repair


def verify_store(path: str | Path, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Every problem of the store at path (a local folder or an s3:// URL); empty when fine."""
    return [p.text for p in scan_store(path, progress)]


def scan_store(path: str | Path, progress: Callable[[int, int], None] | None = None,
               blocks: dict[str, set[int]] | None = None) -> list[Problem]:
    """verify_store's problems, each with the block whose rebuild fixes it where there is one.
    blocks (split -> block numbers): only the clips of those blocks are read, and only the
    problems a rebuild of one of them fixes are returned, with those of their splits as a whole
    (block None: their clips could not be checked, say) (what `repair --block` checks)."""
    loc = as_location(path)
    path = loc.url
    try:
        group = st.open_store(path)
        st.check_documents(loc, group.attrs["splits"])
    except st.DamagedStoreError as err:  # a zarr.json: no rebuild of a block restores it
        return [Problem(str(err), anew=True)]
    except st.StoreFormatError as err:
        return [Problem(str(err))]
    a = dict(group.attrs)
    problems: list[Problem] = []
    if not a.get("finalized"):
        problems.append(Problem("not finalised: a build or some shards are unfinished (re-run the build, then "
                                f"`c2fdata finalize {path}`)", unfinished=True))
    n_classes = len(a["vocabulary"])
    target, n_mels = a["target_frames"], a["features"]["n_mels"]
    block_clips = int(a["block_clips"])
    rows_of = {split: (range(m["clips"]) if blocks is None else
                       [i for b in sorted(blocks.get(split, ()))
                        for i in range(b * block_clips, min((b + 1) * block_clips, m["clips"]))])
               for split, m in a["splits"].items()}
    total = sum(map(len, rows_of.values()))
    done = 0
    hinted = False  # the rebuild recipe comes with the first corrupt clip; later ones name their block
    written: dict[str, st.SplitMeta] = {}  # ids and labels as read, against the fingerprint
    for split in a["splits"]:
        g = group[split]
        meta, unreadable = _read_metadata(g)
        problems += _metadata_problems(group, split, unreadable, path)
        around = None
        if unreadable.keys() & {"status", "frames"} and not unreadable.keys() & {"labels", "ids"}:
            # some blocks' flags or frame counts cannot be read: check the clips of the others (the
            # damaged blocks are rebuilt whole anyway), so that one verify finds all a rebuild needs
            around = _around_damage(group, split, unreadable.keys() & {"status", "frames"}, meta)
        if unreadable.keys() & {"labels", "ids"} or (unreadable.keys() & {"status", "frames"} and around is None):
            done += len(rows_of[split])  # the clips cannot be checked
            continue
        if around is not None:
            meta.update(around)
        status, frames, labels, ids = (meta[k] for k in ("status", "frames", "labels", "ids"))
        written[split] = st.SplitMeta([str(x) for x in ids], labels)
        problems += _lost_chunks(group, split, status, loc)
        n = len(status)
        if g["features"].shape != (n, target, n_mels):
            problems.append(Problem(f"{split}: features shape {g['features'].shape} != ({n}, {target}, {n_mels})", split))
            continue
        for name, arr in (("frames", frames), ("labels", labels), ("ids", ids)):
            if len(arr) != n:
                problems.append(Problem(f"{split}: {name} has {len(arr)} rows, status has {n}", split))
        if (status == st.PENDING).any() and a.get("finalized"):  # every clip was committed: flags lost
            for b, (s, e) in enumerate(st.block_ranges(n, a["block_clips"])):
                if (status[s:e] == st.PENDING).any():
                    problems.append(Problem(
                        f"{split}: block {b} reads as pending in a finalised store (its status chunk lost or "
                        f"reset): {rebuild_hint(path, split, s, a['block_clips'], n)}", split, b))
        elif (status == st.PENDING).any():
            problems.append(Problem(f"{split}: {int((status == st.PENDING).sum())} clips pending (incomplete build)",
                                    split, unfinished=True))
        if a["multi_label"]:
            bad = np.flatnonzero((labels > 1).any(axis=1))
        else:
            bad = np.flatnonzero(((labels < 0) | (labels >= n_classes)) & (status == st.OK))
        problems += [Problem(f"{split}/{ids[i]}: label out of range", split) for i in bad[:20]]
        array_dir = loc.child(split, "features")
        fast = ShardedClipReader(array_dir) if ShardedClipReader.supports(array_dir) else None
        for i in rows_of[split]:
            done += 1
            if status[i] != st.OK:
                continue
            where, block = f"{split}/{ids[i]} (row {i})", i // a["block_clips"]
            try:
                x = fast.read(i, check=True) if fast else _zarr_read(g["features"], array_dir, i, a["block_clips"])
            except (CorruptClipError, ValueError) as err:  # zarr's crc32c codec raises ValueError
                how = rebuild_hint(path, split, i, a["block_clips"], n) if not hinted else "rebuild it likewise"
                problems.append(Problem(f"{where}: unreadable: {err} (block {block}: {how})", split, block))
                hinted = True
                continue
            except Exception as err:  # noqa: BLE001  (any other read failure: name the clip, go on)
                problems.append(Problem(f"{where}: unreadable: {err}", split, block))
                continue
            bad_clip = None
            if not 0 < frames[i] <= target:
                bad_clip = f"frame count {frames[i]} outside 1..{target}"
            elif not np.isfinite(x[: frames[i]]).all():
                bad_clip = "non-finite values"
            elif frames[i] < target and np.any(x[frames[i]:]):
                bad_clip = f"non-zero padding after frame {frames[i]}"
            if bad_clip:  # what a build never writes: recomputing the block writes it anew
                problems.append(Problem(f"{where}: {bad_clip}", split, block))
            if progress and (done % 256 == 0 or done == total):
                progress(done, total)
    if len(written) == len(a["splits"]) and (found := st.fingerprint(a, written)) != a.get("fingerprint"):
        problems.append(Problem(
            f"the clip ids or labels read from the store are not those it was built with (fingerprint "
            f"{found} != {a.get('fingerprint')}): a chunk file of ids or labels lost or changed. Written once, "
            f"from the dataset's metadata: build the store anew (another --out)", anew=True))
    stats = a.get("stats")
    if a.get("finalized") and (not stats or not np.isfinite([stats["mean"], stats["std"]]).all() or stats["std"] <= 0):
        problems.append(Problem(f"normalisation stats invalid: {stats}"))
    if blocks is not None:
        return [p for p in problems if p.split in blocks and (p.block is None or p.block in blocks[p.split])]
    return problems


def _read_metadata(g) -> tuple[dict[str, np.ndarray], dict[str, Exception]]:
    """A split's metadata arrays, and the error of each that cannot be read."""
    meta, unreadable = {}, {}
    for name in st.PER_BLOCK + st.WRITE_ONCE:
        try:
            meta[name] = g[name][:]
        except Exception as err:  # noqa: BLE001  (crc32c, zstd or decode errors: name them, go on)
            unreadable[name] = err
    return meta, unreadable


def _metadata_problems(group, split: str, unreadable: dict[str, Exception], path: str) -> list[Problem]:
    """What to do about each unreadable metadata array: the blocks to rebuild for the arrays
    written block by block; a new build for those written once from the dataset's metadata."""
    out = []
    block, n = int(group.attrs["block_clips"]), group.attrs["splits"][split]["clips"]
    for name, err in unreadable.items():
        if name in st.PER_BLOCK:
            try:
                bad = st.damaged_blocks(group, split, name) or [(None, err)]
            except Exception:  # noqa: BLE001  (its zarr.json or folder itself is gone: the array as a whole)
                bad = [(None, err)]
            for b, e in bad:
                how = rebuild_hint(path, split, b * block, block, n) if b is not None else "rebuild the store"
                out.append(Problem(f"{split}: its {name} cannot be read{'' if b is None else f' in block {b}'} "
                                   f"({type(e).__name__}: {e}): {how}", split, b))
        else:
            out.append(Problem(f"{split}: its {name} cannot be read ({type(err).__name__}: {err}); written once, "
                               f"from the dataset's metadata, when the store was created: build the store anew "
                               f"(another --out)", split, anew=True))
    return out


UNKNOWN = 255  # a status that cannot be read (its chunk is damaged): its clips are not checked


def _around_damage(group, split: str, names: set[str], meta: dict) -> dict[str, np.ndarray] | None:
    """status and frames of a split whose chunks of some blocks cannot be read: the readable
    blocks as stored, the others' status UNKNOWN (frames 0). None when an array cannot be read
    block by block either (its description is gone)."""
    block = int(group.attrs["block_clips"])
    try:
        bad = sorted({b for name in names for b, _ in st.damaged_blocks(group, split, name)})
    except Exception:  # noqa: BLE001  (its zarr.json or folder itself is gone: nothing reads it)
        return None
    n = group.attrs["splits"][split]["clips"]
    ranges = st.block_ranges(n, block)
    out = {}
    for name, fill in (("status", UNKNOWN), ("frames", 0)):
        if name in meta:
            out[name] = meta[name].copy()
        else:  # read in runs of readable blocks, the damaged ones left at `fill`
            array = group[split][name]
            out[name] = np.full(n, fill, dtype=array.dtype)
            first = 0
            for b in bad + [len(ranges)]:
                if first < b:
                    s, e = ranges[first][0], ranges[b - 1][1]
                    out[name][s:e] = array[s:e]
                first = b + 1
    for b in bad:
        s, e = ranges[b]
        out["status"][s:e] = UNKNOWN
    return out


def _lost_chunks(group, split: str, status: np.ndarray, loc) -> list[Problem]:
    """Metadata chunk files that should be there and are not (stores with metadata checksums
    write every chunk: zarr would read a lost one as zeros). The write-once arrays need a new
    build; a committed block's chunks are rewritten with the block."""
    out = []
    block = int(group.attrs["block_clips"])
    ranges = st.block_ranges(len(status), block)
    uncommitted = sum(1 for s, e in ranges if (status[s:e] == st.PENDING).all())
    for name, lost in st.write_once_missing(group, split).items():
        out.append(Problem(f"{split}: {lost} chunk file(s) of its {name} are missing; written once, from the "
                           f"dataset's metadata: build the store anew (another --out)", split, anew=True))
    for name in ("frames", "errors", "stat_sums"):  # status: a lost chunk reads as pending (above)
        if st.chunks_missing(group, split, name) <= uncommitted:
            continue
        for b, (s, e) in enumerate(ranges):
            key = ("c", str(b), "0") if name == "stat_sums" else ("c", str(b))
            if (status[s:e] != st.PENDING).any() and not loc.child(split, name, *key).exists():
                out.append(Problem(f"{split}: block {b}'s {name} chunk file is missing: "
                                   f"{rebuild_hint(loc.url, split, s, block, len(status))}", split, b))
    return out


def _zarr_read(array, array_dir, row: int, block_clips: int) -> np.ndarray:
    """zarr's read of a row, with the check zarr lacks: a missing shard is an error, not zeros."""
    x = np.asarray(array[row])
    if not x.any() and not array_dir.child("c", str(row // block_clips), "0", "0").exists():
        raise CorruptClipError(f"{array_dir.url}: shard file of row {row} missing", row=row)
    return x
