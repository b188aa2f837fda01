"""`c2fdata info`: what a store holds, as one dict (the CLI renders it or prints it as JSON)."""

from __future__ import annotations

import os
from pathlib import Path

from c2fdata import store as st
from c2fdata.storage import Location, as_location


def disk_usage(path: Path | Location) -> tuple[int, int]:
    """(bytes, files) under path (a local folder, or a prefix of an object store)."""
    loc = as_location(path)
    if loc.fs is not None:
        sizes = loc.fs.find(loc.path, detail=True)
        return sum(int(v.get("size") or 0) for v in sizes.values()), len(sizes)
    path = Path(loc.path)
    size = files = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, n))
    return size, files


def store_info(path: str | Path) -> dict:
    loc = as_location(path)
    group = st.open_store(loc)
    st.check_documents(loc, group.attrs["splits"])
    a = dict(group.attrs)
    done = st.completion(group)
    missing = a.get("missing", {})
    splits, damage = {}, []
    for split, c in done.items():
        frames, status, errors = (st.read_meta(group, split, k, loc.url) for k in ("frames", "status", "errors"))
        ok = status == st.OK
        # zarr reads a lost chunk file as zeros (pending clips, no frames, class 0): said, not averaged in.
        # The write-once arrays are counted (a few chunk files); the per-block ones, tens of thousands
        # for AudioSet and unwritten until their block is (an unfinished build), are judged by what
        # they read in a finalised store, as the reader does
        if lost := st.write_once_missing(group, split):
            damage.append(f"split {split!r}: chunk files missing: " + ", ".join(f"{n} of its {k}" for k, n in lost.items()))
        if a.get("finalized") and c["pending"]:
            damage.append(f"split {split!r}: finalised, yet {c['pending']} clips read as pending (status chunks lost)")
        if a.get("finalized") and (ok & (frames <= 0)).any():
            damage.append(f"split {split!r}: {int((ok & (frames <= 0)).sum())} built clips have no frames recorded "
                          "(frames chunks lost)")
        splits[split] = {
            "clips": c["ok"], "listed": c["clips"], "failed": c["failed"], "pending": c["pending"],
            "missing": int(missing.get(split, 0)),
            "warnings": int(sum(1 for e, s in zip(errors, ok) if s and e)),
            "frames_total": int(frames[ok].sum()),
            "frames_mean": float(frames[ok].mean()) if ok.any() else 0.0,
        }
    size, files = disk_usage(loc)
    stats = a.get("stats") or {}
    feats = a["features"]
    return {
        "path": loc.url, "dataset": a["dataset"], "format_version": a["format_version"],
        "codec": st.store_codec(a).name,
        "tool_version": a.get("tool_version"), "finalized": bool(a.get("finalized")),
        "multi_label": a["multi_label"], "classes": len(a["vocabulary"]),
        "target_frames": a["target_frames"], "block_clips": a["block_clips"],
        "train_split": a["train_split"], "splits": splits,
        "mean": stats.get("mean"), "std": stats.get("std"),
        "n_mels": feats["n_mels"], "frame_shift_ms": feats["frame_shift_ms"],
        "frame_length_ms": feats["frame_length_ms"], "sample_rate": feats["sample_rate"],
        "features": feats, "bytes": size, "files": files, "notes": st.store_notes(a),
        "metadata_checksums": st.meta_checksummed(group),
        "damage": damage,  # what verify would find in the metadata read here; [] when none
    }


def build_problems(path: str | Path, limit: int | None = None) -> list[dict]:
    """Every problem the build recorded: failed and flagged clips, metadata issues, missing clips."""
    path = as_location(path)
    group = st.open_store(path)
    st.check_documents(path, group.attrs["splits"])
    out = []
    for split in group.attrs["splits"]:
        errors, status, ids = (st.read_meta(group, split, k, path.url) for k in ("errors", "status", "ids"))
        for i in [i for i, e in enumerate(errors) if e]:
            reason, _, detail = str(errors[i]).partition(": ")
            out.append({"split": split, "id": str(ids[i]), "reason": reason, "detail": detail,
                        "fatal": bool(status[i] == st.FAILED)})
    out += [dict(i, fatal=False) for i in st.read_json(path, "prepare.json") or []]
    for split, ids in (st.read_json(path, "missing.json") or {}).items():
        out += [{"split": split, "id": i, "reason": "missing", "detail": "listed but not on disk", "fatal": False}
                for i in ids]
    return out[:limit] if limit else out
