"""A dataset split's clips as audio files, with their labels: `c2fdata export-audio`.

The embedded `instruments` dataset is rendered on the fly and has no audio on disk; this writes
its clips (or any adapter's, decoded as the build reads them) as float32 wav files, to
listen to or to score with `c2ftrain predict`. Beside them, `labels.csv` (file, id, labels),
`manifest.csv` (the rows of every split exported into the folder, as `c2fdata build --dataset
manifest --root OUT` reads them: a folder of exported splits builds as a store) and, for clips
that could not be read or that a build skips (empty, NaN/inf samples, shorter than one window),
`problems.csv` (id, reason): one bad clip never stops it.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from c2fdata.datasets import prepare
from c2fdata.datasets.base import limited
from c2fdata.datasets.manifest import MANIFEST  # the file the manifest adapter reads
from c2fdata.features import BadClip, FbankConfig, fbank


@dataclass
class ExportResult:
    out: Path
    written: list[Path] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (clip id, "reason: detail")


def file_name(clip_id: str, taken: set[str]) -> str:
    """A file name from a clip id: '/' and anything unusual in a name become '_'; where that
    makes a name already `taken` (ids `a/b_0` and `a_b/0`), a short hash of the id is added."""
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", clip_id)
    if name + ".wav" in taken:
        name += "-" + hashlib.sha1(clip_id.encode()).hexdigest()[:8]
    return name + ".wav"


def export_audio(dataset: str, split: str, out: Path, *, root: Path | None = None, limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None, **options) -> ExportResult:
    """Write `limit` clips (all by default) of `split` to `out`, taken in turn from each class as
    `c2fdata build --limit` takes them (see the module docstring)."""
    import soundfile as sf

    spec = prepare(dataset, root, **options)
    if split not in spec.clips:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}; its splits are {sorted(spec.clips)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (clips to write), got {limit}")
    clips = limited(spec.clips[split], limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result, taken, listed = ExportResult(out), set(), []
    with open(out / "labels.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["file", "id", "labels"])
        for i, clip in enumerate(clips):
            try:
                audio, sr = clip.source()
                # what the build would skip (empty, NaN/inf, shorter than one window) is skipped
                # here too: its checks, on the first window only
                fbank(audio, sr, FbankConfig(), source=str(getattr(clip.source, "path", clip.id)), max_frames=1)
            except BadClip as err:
                result.problems.append((clip.id, f"{err.reason}: {err.detail}"))
            except Exception as err:  # noqa: BLE001  (a decoder bug on one clip must not stop the rest, as in a build)
                result.problems.append((clip.id, f"error: {type(err).__name__}: {err}"))
            else:
                path = out / file_name(clip.id, taken)
                taken.add(path.name)
                sf.write(path, audio, sr, subtype="FLOAT")  # float32: the samples the build reads, unrounded
                rows.writerow([path.name, clip.id, ";".join(clip.labels)])
                listed.append((path.name, ";".join(clip.labels), clip.id))
                result.written.append(path)
            if progress:
                progress(i + 1, len(clips))
    if result.problems:
        with open(out / "problems.csv", "w", newline="") as f:
            csv.writer(f).writerows([("id", "reason"), *result.problems])
    write_manifest(out, split, spec.multi_label, listed)
    return result


def write_manifest(out: Path, split: str, multi_label: bool, rows: list[tuple[str, str, str]]) -> None:
    """`out/manifest.csv` with `rows` (file, labels joined by ';', id) as `split`'s, the other
    splits' rows already there kept: exports of several splits into one folder make one manifest."""
    path, column = out / MANIFEST, "labels" if multi_label else "label"
    kept = []
    if path.is_file():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("split") != split]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", column, "split", "id"])
        w.writerows([r["path"], r.get(column, ""), r["split"], r["id"]] for r in kept)
        w.writerows([name, labels, split, clip_id] for name, labels, clip_id in rows)
