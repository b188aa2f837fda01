"""A manifest of one's own: ROOT/manifest.csv listing each clip's file, label(s) and split.

For data that is not laid out as a folder tree, or that another tool lists (a lhotse CutSet, a
CSV from a labelling tool, Kinetics-Sounds' own CSVs turned into one): no file is moved or
copied. The CSV has a header row naming its columns, in any order:

- `path`: the audio file, relative to ROOT or absolute;
- `label` (one class per clip: single-label) or `labels` (classes separated by `;`: multi-label);
- `split`: the split the clip belongs to (`train`, `eval`, ...);
- `id` (optional): the clip's id, unique in its split (default: `path` without its extension,
  and the segment's times where the row has them: `rec/a_12.5_15`);
- `start`, `end` (optional, seconds): the clip is that segment of the file (a blank start is 0, a
  blank end the file's end), as a lhotse cut of a longer recording is; without them, the whole
  file. A segment past the file's end fails as its clip's problem, naming the file and times;
- `channel` (optional, from 0): that channel of a multi-channel file alone (blank: every channel,
  mixed to mono), as a lhotse cut names one; the default id then ends in `_ch<N>`.

Classes are the sorted set of the labels (labels that are numbers in numeric order). The
statistics come from the split named "train" (as for folder trees: in any case, or the one name
holding "train"), or the one --train-split names. A listed file that is not there is counted as
missing (reported, never fatal); a file c2f cannot decode (.m4a, .mp4, ...) is named in a note;
rows without a path, label or split, with more fields than the header (an unquoted comma) or
with times that are not a segment (start < 0, end <= start), and a clip (a file, or one segment of
it) listed twice in one split are errors naming the rows; a clip in two splits, a recording giving
clips to several splits (through other segments or channels), splits named alike (`Train`,
`train`) and columns not read are noted. What spreadsheets and other
machines write is read as meant: a byte-order mark, `;` as the separator, headers in capitals,
trailing empty rows, Windows paths.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from c2fdata.datasets.base import (
    AUDIO_EXTENSIONS,
    UNDECODABLE_EXTENSIONS,
    AudioScan,
    Clip,
    DatasetSpec,
    FileSource,
    guess_train_split,
    seconds_text,
)
from c2fdata.vocab import Vocabulary

TARGET_FRAMES = 1024
MANIFEST = "manifest.csv"
SHOWN = 5  # rows named in an error
NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def prepare_manifest(root, *, target_frames: int | None = None, **_) -> DatasetSpec:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: --dataset manifest reads ROOT/{MANIFEST}, a CSV with a header row "
                         "path,label,split (or labels, several classes separated by ';'; an id column optional)")
    rows, columns, ignored, delimiter = _read(path)
    multi_label = "labels" in columns
    clips: dict[str, list[Clip]] = {}
    missing: dict[str, list[str]] = {}
    scan = AudioScan()
    bad: list[str] = []
    files: dict[tuple, list[tuple[int, str]]] = {}  # each clip (file, start, end, channel): where it is listed
    lost: list[str] = []
    for line, row in rows:
        if None in row:  # DictReader keeps the fields past the header's under None
            bad.append(f"line {line}: more fields than the header names (an unquoted comma in a field?)")
            continue
        where, split = row.get("path", "").strip(), row.get("split", "").strip()
        labels = tuple(x.strip() for x in row.get("labels" if multi_label else "label", "").split(";") if x.strip())
        if not where or not split or not labels or (not multi_label and len(labels) > 1):
            bad.append(f"line {line}: {dict(row)}")
            continue
        try:
            start, end = _segment(row.get("start", ""), row.get("end", ""), decimal_comma=delimiter == ";")
            channel = _channel(row.get("channel", ""))
        except ValueError as err:
            bad.append(f"line {line}: {err}")
            continue
        file = _located(root, where)
        clip_id = row.get("id", "").strip() or _default_id(root, where, file) + _part(start, end, channel)
        ext = file.suffix.lower()
        if not file.is_file():
            missing.setdefault(split, []).append(clip_id)
            lost.append(where)
        elif ext in UNDECODABLE_EXTENSIONS:
            scan.undecodable.append(file)
        elif ext not in AUDIO_EXTENSIONS:
            bad.append(f"line {line}: {where} is not an audio file c2f reads ({', '.join(AUDIO_EXTENSIONS)})")
        else:
            clips.setdefault(split, []).append(Clip(clip_id, split, labels, FileSource(str(file), start, end, channel)))
            files.setdefault((file.resolve(), start, end, channel), []).append((line, split))
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise ValueError(f"{path}: {len(bad)} row(s) lack a path, a label or a split, have more fields than the "
                         f"header, name more than one class in a `label` column (use `labels` for several, "
                         f"separated by ';'), or times or a channel that are not valid: {'; '.join(bad[:SHOWN])}{more}")
    twice = {f: at for f, at in files.items() if len({s for _, s in at}) < len(at)}
    if twice:
        shown = "; ".join(f"{_clip_name(*f)} (lines {', '.join(str(n) for n, _ in at)})"
                          for f, at in list(twice.items())[:SHOWN])
        raise ValueError(f"{path}: {len(twice)} clip(s) listed more than once in one split: {shown}; a clip "
                         "would count twice: list each file (or segment) once per split")
    if not rows:
        raise ValueError(f"{path} lists no clip (a header row only)")
    if not clips:
        why = [f"{len(lost)} listed file(s) are not there, e.g. {lost[0]} (relative paths are taken from {root})"
               for _ in lost[:1]]
        raise ValueError(f"{path}: none of its {len(rows)} clips can be built: "
                         + ". ".join(why + scan.notes(root)))
    train, guessed = guess_train_split(clips)
    classes = sorted({label for split in clips.values() for c in split for label in c.labels}, key=_class_order)
    notes = scan.notes(root) + [(f"columns {', '.join(ignored)} of {MANIFEST} are not read (path, label or labels, "
                                 "split, id, start, end and channel are)")] * bool(ignored)
    if lost:
        notes.append(f"{len(lost)} listed file(s) are not there (e.g. {lost[0]}; relative paths are taken from "
                     f"{root}, the manifest's folder): counted as missing")
    shared = {f: at for f, at in files.items() if len(at) > 1}
    if shared:
        f, at = next(iter(shared.items()))
        notes.append(f"{len(shared)} clip(s) are listed in more than one split (e.g. {_clip_name(*f)}: "
                     f"{', '.join(f'{s} at line {n}' for n, s in at)}): those splits share clips, so an evaluation "
                     "on one of them scores clips the model may have trained on")
    split_of: dict[Path, set[str]] = {}  # a recording's splits, over all its rows (whole, segments, channels)
    for (file, *_), at in files.items():
        split_of.setdefault(file, set()).update(s for _, s in at)
    same_clip = {f[0] for f in shared}  # said above
    if across := sorted(f for f, splits in split_of.items() if len(splits) > 1 and f not in same_clip):
        notes.append(f"{len(across)} recording(s) give clips to more than one split through different segments or "
                     f"channels (e.g. {across[0]}: {', '.join(sorted(split_of[across[0]]))}): an evaluation then "
                     "scores other parts of recordings the model trained on (the same speaker, room, microphone), "
                     "which can flatter it")
    by_case: dict[str, list[str]] = {}
    for split in clips:
        by_case.setdefault(split.lower(), []).append(split)
    if alike := [sorted(names) for names in by_case.values() if len(names) > 1]:
        notes.append("splits named alike are kept apart: " + "; ".join(", ".join(a) for a in alike)
                     + " (a typo in the split column?)")
    return DatasetSpec(
        name="manifest", vocabulary=Vocabulary.from_names(classes), multi_label=multi_label,
        target_frames=target_frames or TARGET_FRAMES, clips=clips, train_split=train, missing=missing,
        notes=notes, train_split_note=guessed,
    )


def _segment(start: str, end: str, decimal_comma: bool = False) -> tuple[float, float | None]:
    """A row's start and end columns (seconds; blank: 0 and the file's end) as FileSource takes
    them; a ValueError saying what is wrong. decimal_comma: "1,5" is 1.5, as the spreadsheets
    that write ';'-separated files write it (in a ','-separated file it could be a thousands mark)."""
    def seconds(text: str) -> float:
        return float(text.replace(",", ".") if decimal_comma and "," in text and "." not in text else text) + 0.0

    try:
        first = seconds(start) if start.strip() else 0.0
        last = seconds(end) if end.strip() else None
    except ValueError:
        raise ValueError(f"start {start!r} and end {end!r} must be numbers of seconds") from None
    if not math.isfinite(first) or first < 0 or (last is not None and not (math.isfinite(last) and last > first)):
        raise ValueError(f"start {start!r} and end {end!r} are no segment (0 <= start < end)")
    return first, last


def _part(start: float, end: float | None, channel: int | None) -> str:
    """What a segment's times and a channel add to a default id ("" for a whole file)."""
    times = "" if not start and end is None else f"_{seconds_text(start)}_{'end' if end is None else seconds_text(end)}"
    return times + ("" if channel is None else f"_ch{channel}")


def _channel(text: str) -> int | None:
    """A row's channel column (blank: None, every channel); a ValueError unless a whole number >= 0."""
    if not text.strip():
        return None
    try:
        number = float(text)  # "1.0" too: what a table with blanks in the column writes
    except ValueError:
        number = -1.0
    if not number.is_integer() or number < 0:
        raise ValueError(f"channel {text!r} must be a channel number from 0")
    return int(number)


def _clip_name(file: Path, start: float, end: float | None, channel: int | None) -> str:
    return str(FileSource(str(file), start, end, channel))


def _default_id(root: Path, where: str, file: Path) -> str:
    """A clip's id where the manifest gives none: its path under ROOT without the extension, the
    same whether the row wrote it relative or absolute (an id holding this machine's mount point
    would differ between machines building shards of one store)."""
    try:
        return file.relative_to(root).with_suffix("").as_posix()
    except ValueError:  # outside ROOT: as written
        return Path(where.replace("\\", "/")).with_suffix("").as_posix()


def _located(root: Path, where: str) -> Path:
    """The file a row names: relative to ROOT unless absolute; a path written on Windows
    (backslashes) read with slashes where that is what exists."""
    path = Path(where) if Path(where).is_absolute() else root / where
    if not path.exists() and "\\" in where:
        other = Path(where.replace("\\", "/"))
        path = other if other.is_absolute() else root / other
    return path


def _class_order(name: str) -> tuple:
    """Labels written as plain numbers in numeric order ("2" before "10"), then the others by name
    ("nan", "Inf" and "1e3" are names: a NaN key would sort differently from one run to the next)."""
    if NUMBER.fullmatch(name):
        return (0, float(name), name)
    return (1, 0.0, name)


def _read(path: Path) -> tuple[list[tuple[int, dict]], set[str], list[str], str]:
    """The rows (with their line numbers; rows of empty fields, as spreadsheets leave at the end,
    left out), the column names (in lower case), the columns not read and the delimiter; ValueError naming what
    the header lacks. A UTF-8 byte-order mark (spreadsheets write one) is not part of the first
    name; a header with ';' and no ',' is read as ';'-separated (spreadsheets in some locales)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}): save it as CSV UTF-8 (spreadsheets offer it)") from None
    header = text.splitlines()[0] if text else ""
    delimiter = ";" if ";" in header and "," not in header else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or ()]
    columns = set(reader.fieldnames) - {""}  # a header ending in a separator, as spreadsheets write
    need = {"path", "split"} | ({"labels"} if "labels" in columns else {"label"})
    if lacking := sorted(need - columns):
        raise ValueError(f"{path}: its header row ({header.strip() or 'empty'}) lacks {', '.join(lacking)}; the "
                         "columns are path, label (or labels), split and, optional, id, start, end and channel")
    if {"label", "labels"} <= columns:
        raise ValueError(f"{path}: both a label and a labels column: keep one (label: one class per clip; "
                         "labels: several, separated by ';')")
    rows = []
    for row in reader:
        if any(k is None or (v or "").strip() for k, v in row.items()):
            rows.append((reader.line_num, {k: (v if k is None else (v or "")) for k, v in row.items()}))
    ignored = sorted(columns - {"path", "label", "labels", "split", "id", "start", "end", "channel"})
    return rows, columns, ignored, delimiter
