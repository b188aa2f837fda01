"""`c2fdata repair`: mark a store's damaged blocks for rebuilding.

The build recomputes the blocks whose clips are pending, so repairing a block is: delete its
shard file (a partial write into a shard whose index is corrupt would fail) and set its status
flags to pending, which rewrites the block's status chunk whole (a damaged one included). The
same `c2fdata build` command then recomputes those blocks from the audio, rewriting their
frames, errors and statistics, and finalises the store again. Until then the store is marked
unfinalised, so that no reader trains on it with blocks missing.

Which blocks: those named (`--block SPLIT:B`, as error messages give them; each read back first,
and one with nothing wrong refused without `--force`: a mistyped number would delete healthy
features), or every block `verify` finds a problem in that a rebuild fixes (`scan_store`). What a rebuild cannot fix (ids
or labels, written once from the dataset's metadata) is reported, and then nothing is touched:
that store must be built anew anyway. The rebuild recomputes from the audio: it must still be
where the build found it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from c2fdata import store as st
from c2fdata.storage import as_location
from c2fdata.verify import scan_store


@dataclass
class RepairPlan:
    blocks: dict[str, list[int]] = field(default_factory=dict)  # split -> blocks to rebuild
    unrepairable: list[str] = field(default_factory=list)  # problems a block's rebuild does not fix

    @property
    def n_blocks(self) -> int:
        return sum(len(b) for b in self.blocks.values())


def parse_block(text: str) -> tuple[str, int]:
    """'SPLIT:B' -> (split, block)."""
    split, sep, block = text.rpartition(":")
    if not sep or not split or not block.isdigit():
        raise ValueError(f"--block {text!r}: expected SPLIT:BLOCK, e.g. train:12 (error messages name both)")
    return split, int(block)


def plan_repair(path: str | Path, blocks: list[tuple[str, int]] | None = None,
                progress: Callable[[int, int], None] | None = None, force: bool = False) -> RepairPlan:
    """The blocks to rebuild: `blocks` as given (checked against the store), or, when None, every
    block with a problem `verify` finds that its rebuild fixes (reads the whole store). A named
    block is read back first, and one with nothing wrong refused (ValueError) unless `force`:
    its features would be deleted, and only the audio, if it is still there, gives them back."""
    plan = RepairPlan()
    if blocks is None:
        problems = scan_store(path, progress)
        for p in problems:
            if p.block is not None:
                plan.blocks.setdefault(p.split, [])
                if p.block not in plan.blocks[p.split]:
                    plan.blocks[p.split].append(p.block)
            elif not p.unfinished:  # an unfinished build is the build's to finish
                plan.unrepairable.append(p.text)
        if any(p.anew for p in problems):  # a new build anyway: this store's blocks are left as they are
            plan.blocks = {}
        return plan
    attrs = dict(st.open_store(path).attrs)
    for split, b in blocks:
        if split not in attrs["splits"]:
            raise ValueError(f"{path}: no split {split!r}; splits are {', '.join(sorted(attrs['splits']))}")
        n_blocks = len(st.block_ranges(attrs["splits"][split]["clips"], attrs["block_clips"]))
        if not 0 <= b < n_blocks:
            raise ValueError(f"{path}: split {split!r} has blocks 0..{n_blocks - 1}, not {b}")
        if b not in plan.blocks.setdefault(split, []):
            plan.blocks[split].append(b)
    if not force:
        _check_named_blocks(path, plan, scan_store(path, progress, {s: set(b) for s, b in plan.blocks.items()}))
    return plan


def _check_named_blocks(path, plan: RepairPlan, problems) -> None:
    """ValueError unless every named block has a problem its rebuild fixes: repairing deletes a
    block's features, and only a rebuild from the audio, if it is still there, gives them back."""
    damaged = {(p.split, p.block) for p in problems if p.block is not None}
    unchecked = {p.split: p.text for p in problems if p.block is None and not p.unfinished}
    named = [(s, b) for s, bs in plan.blocks.items() for b in bs if (s, b) not in damaged]
    if not named:
        return
    where = ", ".join(f"{s}:{b}" for s, b in named)
    force = "or pass --force to mark them anyway"
    if any(s in unchecked for s, _ in named):
        split = next(s for s, _ in named if s in unchecked)
        raise ValueError(f"{path}: the clips of block(s) {where} could not be checked ({unchecked[split]}); "
                         f"`c2fdata verify {path}` says what to do, {force}")
    group = st.open_store(path)
    ranges = {s: st.block_ranges(group.attrs["splits"][s]["clips"], int(group.attrs["block_clips"])) for s, _ in named}
    built = [(s, b) for s, b in named if (group[s]["status"][slice(*ranges[s][b])] == st.OK).any()]
    if built:
        raise ValueError(
            f"{path}: block(s) {', '.join(f'{s}:{b}' for s, b in built)} read back whole (every clip passes its "
            "checksum and checks, their metadata too): repairing would delete healthy features. Check the block "
            f"numbers (`c2fdata verify` lists the damaged blocks), {force}")
    raise ValueError(f"{path}: block(s) {where} hold no built clip (pending, which the build computes anyway, or "
                     f"failed: `c2fdata info {path} --problems` says why); nothing to repair, {force}")


def mark_for_rebuild(path: str | Path, plan: RepairPlan) -> None:
    """Delete each planned block's shard file and set its clips pending; the store is then
    unfinalised until the build has recomputed them."""
    if not plan.n_blocks:
        return
    loc = as_location(path)
    group = st.open_store(loc, mode="r+")
    st.check_documents(loc, group.attrs["splits"])
    block_clips = int(group.attrs["block_clips"])
    for split, blocks in plan.blocks.items():
        status = group[split]["status"]
        ranges = st.block_ranges(status.shape[0], block_clips)
        for b in sorted(blocks):
            shard = loc.child(split, "features", "c", str(b), "0", "0")
            if shard.exists():
                shard.remove()
            start, end = ranges[b]
            status[start:end] = st.PENDING  # the block's whole chunk: zarr never reads a damaged one first
    group.attrs.update({"finalized": False})
