"""Store builds: resume after SIGKILL, sharded builds, bad input, verify, format checks."""

import contextlib
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zarr
from conftest import tone

from c2fdata import store as st
from c2fdata.build import BuildConfig, StrictError, build_store
from c2fdata.build_worker import ClipTask, compute_clip, init_worker
from c2fdata.features import BadClip, FbankConfig
from c2fdata.reader import StoreFormatError, StoreReader
from c2fdata.shard_io import ShardedClipReader
from c2fdata.verify import verify_store


@pytest.fixture
def folder_big(tmp_path):
    """24 clips (1 s each) in one class folder per split: 6 blocks of 4."""
    root = tmp_path / "data"
    for split, n in (("train", 16), ("eval", 8)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n // 2):
                sf.write(d / f"{k:02d}.wav", tone(1.0, freq=200 + 37 * k + (c == "b") * 500, seed=k), 16000)
    return root


def cfg(root, out, **kw):
    return BuildConfig(dataset="folder", root=root, out=out, block_clips=4,
                       options={"target_frames": 128}, **kw)


def store_arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {s: (g[s]["features"][:], g[s]["frames"][:], g[s]["status"][:]) for s in ("train", "eval")}


def test_sigkill_mid_block_then_resume(folder_big, tmp_path):
    """Kill the builder with SIGKILL half-way through writing its 4th block (features written,
    status not yet): re-running completes the store, recomputing only the unfinished blocks."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import c2fdata.store as st
        from c2fdata.build import BuildConfig, build_store
        real, calls = st.write_block, []
        def dying(group, split, b, feats, frames, status, errors, sums):
            calls.append(b)
            if len(calls) == 4:  # half-write block 4, then die the hard way
                group[split]["features"][b * 4:b * 4 + len(frames)] = feats
                os.kill(os.getpid(), signal.SIGKILL)
            real(group, split, b, feats, frames, status, errors, sums)
        st.write_block = dying
        build_store(BuildConfig(dataset="folder", root=Path({str(folder_big)!r}), out=Path({str(out)!r}),
                                block_clips=4, options={{"target_frames": 128}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = st.completion(st.open_store(out))
    assert sum(c["ok"] for c in done.values()) == 12  # 3 blocks committed, block 4 is not
    assert not st.open_store(out).attrs["finalized"]

    res = build_store(cfg(folder_big, out))
    assert res.computed == 24 - 12 and res.finalized
    ref = build_store(cfg(folder_big, tmp_path / "ref"))
    a, b = store_arrays(out), store_arrays(tmp_path / "ref")
    for split in a:
        for x, y in zip(a[split], b[split]):
            np.testing.assert_array_equal(x, y)
    assert res.stats == ref.stats
    assert build_store(cfg(folder_big, out)).computed == 0  # nothing left to do


def test_two_shards_equal_one_build(folder_big, tmp_path):
    one = build_store(cfg(folder_big, tmp_path / "one", workers=2))
    first = build_store(cfg(folder_big, tmp_path / "two", shard=(0, 2)))
    assert not first.finalized and first.computed == 12  # blocks 0, 2 of train and 0 of eval
    second = build_store(cfg(folder_big, tmp_path / "two", shard=(1, 2)))
    assert second.finalized and first.computed + second.computed == 24
    a, b = store_arrays(tmp_path / "one"), store_arrays(tmp_path / "two")
    for split in a:
        for x, y in zip(a[split], b[split]):
            np.testing.assert_array_equal(x, y)
    assert one.stats == second.stats


def test_finalize_waits_for_all_shards(folder_big, tmp_path):
    build_store(cfg(folder_big, tmp_path / "s", shard=(0, 3)))
    g = st.open_store(tmp_path / "s", mode="r+")
    assert st.finalize(g) is None
    with pytest.raises(StoreFormatError, match="not finalised"):
        StoreReader(tmp_path / "s", "train")


def test_bad_shard_settings():
    with pytest.raises(ValueError, match="0 <= K < N"):
        BuildConfig(dataset="folder", out="x", shard=(2, 2))


@pytest.fixture
def bad_root(tmp_path):
    root = tmp_path / "bad"
    d = root / "train" / "x"
    d.mkdir(parents=True)
    sf.write(d / "good.wav", tone(1.0), 16000)
    sf.write(d / "stereo_22k.wav", tone(1.0, sr=22050, channels=2), 22050)
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(d / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(d / "tiny.wav", tone(0.01), 16000)
    sf.write(d / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(d / "short.wav", tone(0.3), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (d / "garbage.mp3").write_bytes(bytes(range(256)) * 8)  # libsndfile: "File does not exist" of such an mp3
    sf.write(d / "cut.wav", tone(1.0), 16000)  # then cut: libsndfile reads the half that is there, silently
    whole = (d / "cut.wav").read_bytes()
    (d / "cut.wav").write_bytes(whole[: len(whole) // 2])
    sf.write(d / "piped.wav", tone(1.0), 16000)  # lengths left unset, as by a program writing to a pipe: fine
    raw = bytearray((d / "piped.wav").read_bytes())
    at = raw.find(b"data")
    raw[4:8] = raw[at + 4:at + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    (d / "piped.wav").write_bytes(bytes(raw))
    return root


def test_bad_input_is_reported_not_fatal(bad_root, tmp_path):
    res = build_store(cfg(bad_root, tmp_path / "s", workers=2))
    assert res.finalized
    by_id = {p["id"].split("/")[-1]: p for p in res.problems}
    assert {k: (v["reason"], v["fatal"]) for k, v in by_id.items()} == {
        "empty": ("empty", True), "nan": ("non-finite", True), "tiny": ("too-short", True),
        "corrupt": ("unreadable", True), "silent": ("silent", False), "short": ("short", False),
        "cut": ("truncated", True), "garbage": ("unreadable", True),
    }
    assert "corrupt.wav" in by_id["corrupt"]["detail"] and "cut short" in by_id["cut"]["detail"]
    assert "no audio it can decode" in by_id["garbage"]["detail"] and "not exist" not in by_id["garbage"]["detail"]
    r = StoreReader(tmp_path / "s", "train")
    assert sorted(i.split("/")[-1] for i in r.ids) == ["good", "piped", "short", "silent", "stereo_22k"]
    assert r.failed() == 6
    # the report is kept in the store
    from c2fdata.info import build_problems
    assert {p["reason"] for p in build_problems(tmp_path / "s")} == {p["reason"] for p in res.problems}
    assert verify_store(tmp_path / "s") == []


def test_clips_that_failed_are_computed_again_with_retry_failed_only(folder_big, tmp_path):
    """A cut download fails its clip; fetched again, a plain re-run leaves it failed (and says
    so); --retry-failed computes its block again, and the store then equals a build of the
    mended files from scratch, statistics included."""
    clip = folder_big / "train" / "a" / "03.wav"
    whole = clip.read_bytes()
    clip.write_bytes(whole[: len(whole) // 2])
    first = build_store(cfg(folder_big, tmp_path / "s", workers=1))
    assert first.failed == 1 and [p["reason"] for p in first.problems] == ["truncated"]
    assert "--retry-failed" in first.problems[0]["detail"]
    clip.write_bytes(whole)  # fetched again
    again = build_store(cfg(folder_big, tmp_path / "s", workers=1))
    assert again.computed == 0 and again.completion["train"]["failed"] == 1
    assert any("1 clip(s) failed in an earlier run" in n and "--retry-failed" in n for n in again.notes)
    retried = build_store(cfg(folder_big, tmp_path / "s", workers=1, retry_failed=True))
    assert retried.computed == 4 and retried.failed == 0  # the block of 4 that held it
    assert retried.completion["train"] == {"clips": 16, "ok": 16, "failed": 0, "pending": 0}
    assert retried.finalized and any("1 clip(s) that had failed were computed again" in n for n in retried.notes)
    fresh = build_store(cfg(folder_big, tmp_path / "fresh", workers=1))
    for split, (feats, frames, status) in store_arrays(tmp_path / "fresh").items():
        got = store_arrays(tmp_path / "s")[split]
        assert np.array_equal(got[0], feats) and np.array_equal(got[1], frames) and np.array_equal(got[2], status)
    assert retried.stats == pytest.approx(fresh.stats)
    assert verify_store(tmp_path / "s") == []
    nothing = build_store(cfg(folder_big, tmp_path / "s", workers=1, retry_failed=True))
    assert nothing.computed == 0 and "no clip of this build's blocks had failed" in nothing.notes[-1]


def test_retry_failed_counts_this_shards_clips_and_names_the_others(folder_big, tmp_path):
    """Two builders, a cut download in each one's blocks (rows 3 and 5 of train: blocks 0 and 1
    of 4 clips). Each re-run speaks of its own shard's failures and points to the other's; a
    retry that mends one clip and meets a new failure in its block counts each as what it is."""
    cut = {name: folder_big / "train" / "a" / name for name in ("03.wav", "05.wav", "00.wav")}
    whole = {name: path.read_bytes() for name, path in cut.items()}
    for name in ("03.wav", "05.wav"):
        cut[name].write_bytes(whole[name][: len(whole[name]) // 2])
    out = tmp_path / "s"
    for k in (0, 1):
        build_store(cfg(folder_big, out, shard=(k, 2)))
    cut["03.wav"].write_bytes(whole["03.wav"])  # mended
    cut["00.wav"].write_bytes(whole["00.wav"][:100])  # its neighbour in block 0 now cut: a new failure
    res = build_store(cfg(folder_big, out, shard=(0, 2), retry_failed=True))
    assert res.computed == 4 and [p["id"] for p in res.problems if p["reason"] == "truncated"] == ["a/00"]
    assert res.notes[-2:] == [
        ("--retry-failed: 1 clip(s) that had failed were computed again (with their blocks): 1 now built, 0 failed "
         "again (the table above says why)"),
        ("1 clip(s) that failed before are in other shards' blocks: their own --shard with --retry-failed computes "
         "them again")]
    plain = build_store(cfg(folder_big, out, shard=(1, 2)))
    assert plain.computed == 0 and plain.notes[-1].startswith("1 clip(s) failed in an earlier run of this build")
    assert not any("other shards" in n for n in plain.notes)  # shard 0 may still be building: not said then


def test_a_wav_is_cut_short_only_when_audio_is_missing():
    """libsndfile's note on a WAV's data chunk, judged: a frame or more missing is a cut file; a
    header that promised no length (written to a pipe: SoX's 0x7ffff000, 0xffffffff), a longer
    chunk, or a few bytes short of a whole frame has lost nothing."""
    from c2fdata.datasets.base import _cut_short

    assert _cut_short("data : 64000 (should be 19956)", frame_bytes=2) == "data : 64000 (should be 19956)"
    assert _cut_short("data : 32002 (should be 32000)", frame_bytes=2) is not None  # one 16-bit frame
    assert _cut_short("data : 32001 (should be 32000)", frame_bytes=2) is None
    for unknown in (0x7FFFF000, 0xFFFFFFFF):
        assert _cut_short(f"data : {unknown} (should be 32000)", frame_bytes=2) is None
    assert _cut_short("data : 0 (should be 32000)") is None and _cut_short("fmt : 16") is None


@pytest.mark.parametrize("container", ["WAV", "RF64", "W64"])
@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("FLOAT", 2)])
def test_a_file_cut_short_is_refused_in_every_container_libsndfile_reads_silently(tmp_path, container, subtype,
                                                                               channels):
    """WAV, RF64 (64-bit WAV) and W64 are read up to where the file ends, without a word: a
    copy cut at half is refused as truncated, the whole file read as written."""
    from c2fdata.datasets.base import FileSource

    audio = tone(2.0, channels=channels) if channels > 1 else tone(2.0)
    whole, cut = tmp_path / f"whole.{container.lower()}", tmp_path / f"cut.{container.lower()}"
    sf.write(whole, audio, 16000, format=container, subtype=subtype)
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(BadClip) as err:
        FileSource(str(cut))()
    assert err.value.reason == "truncated" and str(cut) in err.value.detail
    read, sr = FileSource(str(whole))()
    assert sr == 16000 and read.shape[0] == audio.shape[0]
    cut.write_bytes(data[:-5])  # 5 bytes: the last frames, the first of them in part
    frame = {"PCM_16": 2, "FLOAT": 4}[subtype] * channels
    assert sf.info(str(cut)).frames == audio.shape[0] - -(-5 // frame)
    with pytest.raises(BadClip, match="cut short"):
        FileSource(str(cut))()


def test_strict_makes_bad_input_fatal(bad_root, tmp_path):
    with pytest.raises(StrictError, match="corrupt.wav|empty|nan"):
        build_store(cfg(bad_root, tmp_path / "s", strict=True))


def test_strict_names_the_first_metadata_problem(audioset_root, tmp_path):
    csv = audioset_root / "balanced_train_segments.csv"
    csv.write_text(csv.read_text().replace("/m/012xff", "/m/not_a_class"))
    with pytest.raises(StrictError, match=r"--strict: 4 metadata problem\(s\), first: balanced_train/--ZhevVpy1s_50.000: "
                                          r"unknown-label: labels not in the vocabulary: /m/not_a_class$"):
        build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "t", strict=True))


def test_unknown_labels_in_metadata(audioset_root, tmp_path):
    """Multi-label: a clip whose only label is unknown has no target and is not stored (it
    would train and be scored as negative for every class); one with a known label besides
    keeps that one, and the report says which was left out."""
    csv = audioset_root / "balanced_train_segments.csv"
    csv.write_text(csv.read_text().replace("/m/012xff", "/m/not_a_class").replace("/m/03fwl", "/m/nor_this"))
    res = build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "s"))
    unknown = [p for p in res.problems if p["reason"] == "unknown-label"]
    assert [(p["id"], "/m/not_a_class" in p["detail"]) for p in unknown] == [("--ZhevVpy1s_50.000", True)]
    dropped = [p for p in res.problems if p["reason"] == "labels-dropped"]
    assert [(p["id"], "/m/nor_this" in p["detail"]) for p in dropped] == [("--aE2O5G5WE_0.000", True)]
    reader = StoreReader(tmp_path / "s", "balanced_train")
    assert "--ZhevVpy1s_50.000" not in reader.ids and "--PJHxphWEs_30.000" in reader.ids
    kept = reader.labels()[reader.ids.index("--aE2O5G5WE_0.000")]
    assert sorted(reader.vocabulary.names[k] for k in np.flatnonzero(kept)) == ["Music", "Speech"]
    # no file mends an unknown label: a re-run does not send it to --retry-failed, which leaves it be
    again = build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "s"))
    assert not any("earlier run" in n for n in again.notes)
    retried = build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "s", retry_failed=True))
    assert retried.computed == 0 and "nothing was computed again" in retried.notes[-1]
    with pytest.raises(StrictError, match=r"metadata problem\(s\), first: "):
        build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "t", strict=True))


def test_verify_catches_corrupted_chunk(folder_big, tmp_path):
    out = tmp_path / "s"
    build_store(cfg(folder_big, out))
    assert verify_store(out) == []
    shard = out / "train" / "features" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0x55  # one flipped byte inside clip 4's data: values stay finite
    shard.write_bytes(bytes(data))
    problems = verify_store(out)
    assert len(problems) == 1 and "row 4" in problems[0] and "checksum" in problems[0]
    # a truncated shard file: its index (at the end) no longer checks out
    shard.write_bytes(bytes(data[:-100]))
    assert any("unreadable" in p for p in verify_store(out))


def test_other_format_version_is_refused(folder_big, tmp_path):
    out = tmp_path / "s"
    build_store(cfg(folder_big, out))
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (out / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="format version 99.*rebuild"):
        StoreReader(out, "train")
    assert "format version 99" in verify_store(out)[0]
    with pytest.raises(StoreFormatError, match="not a c2f feature store|no store here"):
        StoreReader(tmp_path, "train")


def test_other_metadata_into_same_store_is_refused(folder_big, tmp_path):
    out = tmp_path / "s"
    build_store(cfg(folder_big, out))
    sf.write(folder_big / "train" / "a" / "new.wav", tone(1.0), 16000)
    with pytest.raises(StoreFormatError, match="other metadata"):
        build_store(cfg(folder_big, out))


def test_fast_reader_equals_zarr(folder_big, tmp_path):
    out = tmp_path / "s"
    build_store(cfg(folder_big, out))
    arr = zarr.open_array(str(out / "train" / "features"), mode="r")
    fast = ShardedClipReader(out / "train" / "features")
    for i in range(arr.shape[0]):
        np.testing.assert_array_equal(fast.read(i, check=True), arr[i])
    assert fast.read(0).flags.writeable


def test_reader_pickles_and_serves(folder_big, tmp_path):
    import pickle
    out = tmp_path / "s"
    build_store(cfg(folder_big, out))
    r = StoreReader(out, "eval")
    r2 = pickle.loads(pickle.dumps(r))
    assert len(pickle.dumps(r)) < 300  # path and split only
    x, frames, y = r2[3]
    assert x.shape == (128, 128) and x.dtype == np.float16 and frames == 98
    assert r2.vocabulary.names[int(y)] == r2.ids[3].split("/")[0]
    feats, fr, ys = r2.read_batch([0, 3])
    np.testing.assert_array_equal(feats[1], x)
    with pytest.raises(IndexError):
        r2[len(r2)]


# -- what a worker returns -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Raises:
    """An audio source that fails the way a decoder does."""

    error: Exception

    def __call__(self):
        raise self.error


@dataclasses.dataclass(frozen=True)
class _Gives:
    audio: np.ndarray

    def __call__(self):
        return self.audio, 16000


@pytest.fixture
def worker():
    init_worker(FbankConfig(), target_frames=128, single_thread=False)


def test_clip_result_round_trips_with_named_fields(worker):
    ok = compute_clip(ClipTask("a/ok", _Gives(tone(1.0))))
    assert ok.status == st.OK and not ok.failed and ok.reason == "" and ok.message == ""
    assert ok.features.shape == (128, 128) and ok.features.dtype == np.float16 and ok.frames == 98
    assert ok.sums[2] == 98 * 128  # values counted: the real frames only, not the padding
    copy = pickle.loads(pickle.dumps(ok))  # what a pool worker sends back
    assert (copy.status, copy.frames, copy.reason, copy.detail) == (ok.status, ok.frames, "", "")
    np.testing.assert_array_equal(copy.features, ok.features)
    np.testing.assert_array_equal(copy.sums, ok.sums)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.status = st.FAILED


def test_clip_problems_keep_reason_and_detail_apart(worker):
    # a detail with ": " inside stays whole (no "reason: detail" string is parsed back)
    bad = compute_clip(ClipTask("a/bad", _Raises(BadClip("unreadable", "x.wav: header: truncated"))))
    assert bad.failed and bad.features is None
    assert (bad.reason, bad.detail) == ("unreadable", "x.wav: header: truncated")
    assert bad.message == "unreadable: x.wav: header: truncated"  # as the store's error column keeps it
    crash = compute_clip(ClipTask("a/crash", _Raises(KeyError("codec"))))
    assert crash.failed and crash.reason == "error" and crash.detail == "a/crash: KeyError: 'codec'"
    unknown = compute_clip(ClipTask("a/unknown", None))
    assert unknown.failed and unknown.reason == "unknown-label" and unknown.detail.startswith("a/unknown: ")
    silent = compute_clip(ClipTask("a/silent", _Gives(np.zeros(16000, np.float32))))
    assert silent.status == st.OK and silent.reason == "silent" and silent.features is not None
    assert not silent.sums.any()  # kept, but not in the statistics
    x = tone(1.0)  # what the features see: the mono mix, its mean removed
    for name, audio in (("cancelling", np.stack([x, -x], axis=1)), ("offset", np.full(16000, 0.3, np.float32))):
        r = compute_clip(ClipTask(f"a/{name}", _Gives(audio)))
        assert r.reason == "silent" and not r.sums.any(), name
        assert np.all(r.features[:r.frames] == r.features[0, 0])  # indeed one floor value throughout
    quiet = compute_clip(ClipTask("a/quiet", _Gives(1e-3 * x)))
    assert quiet.reason == "" and quiet.sums[2] > 0
    short = compute_clip(ClipTask("a/short", _Gives(tone(0.3))))
    assert short.status == st.OK and (short.reason, short.detail) == ("short", "a/short: 28 of 128 frames, zero-padded")


def test_silent_clips_leave_the_statistics_alone(tmp_path):
    """A store with a silent clip besides its tones has the statistics of the tones alone."""
    for with_silence in (False, True):
        d = tmp_path / f"d{with_silence}" / "train" / "a"
        d.mkdir(parents=True)
        for k in range(3):
            sf.write(d / f"t{k}.wav", tone(1.0, seed=k, freq=300 + 100 * k), 16000)
        if with_silence:
            sf.write(d / "z_silent.wav", np.zeros(16000, np.float32), 16000)
    a, b = (build_store(BuildConfig(dataset="folder", root=tmp_path / f"d{s}", out=tmp_path / f"s{s}",
                                    block_clips=2, options={"target_frames": 128})) for s in (False, True))
    assert [p["reason"] for p in b.problems] == ["silent"]
    assert b.stats["mean"] == pytest.approx(a.stats["mean"], rel=1e-9)
    assert b.stats["std"] == pytest.approx(a.stats["std"], rel=1e-9)


def test_a_target_length_that_fits_no_clip_is_noted(tmp_path):
    """Clips of 1 s (98 frames) stored at the folder default of 1024 frames: mostly padding,
    said with the length that fits them; at 128 frames, nothing to say."""
    d = tmp_path / "d" / "train" / "a"
    d.mkdir(parents=True)
    for k in range(4):
        sf.write(d / f"t{k}.wav", tone(1.0, seed=k), 16000)
    long = build_store(BuildConfig(dataset="folder", root=tmp_path / "d", out=tmp_path / "s1024"))
    assert long.notes == [("4 of 4 clips are shorter than half of the 1024 frames each is stored at (median 98 "
                           "frames, 100 a second; the rest zero-padding): --target-frames 98 would hold 90% of them "
                           "whole, into another --out")]
    fits = build_store(BuildConfig(dataset="folder", root=tmp_path / "d", out=tmp_path / "s128",
                                   options={"target_frames": 128}))
    assert fits.notes == []
    from c2fdata.build import _length_notes

    mixed = _length_notes([np.array([200] * 60 + [1024] * 40)], 1024, 10.0)  # 90th percentile: the target itself
    assert "--target-frames 1024" not in mixed[0] and "their median, 200" in mixed[0]


def test_build_reports_the_workers_reason_and_detail(bad_root, tmp_path):
    res = build_store(cfg(bad_root, tmp_path / "s"))
    short = next(p for p in res.problems if p["reason"] == "short")
    assert short["detail"] == f"{short['id']}: 28 of 128 frames, zero-padded" and not short["fatal"]
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    row = list(g["train"]["ids"][:]).index(short["id"])
    assert g["train"]["errors"][row] == f"short: {short['detail']}"
    from rich.console import Console

    from c2fdata.cli import _print_problems

    out = Console(record=True, width=200)
    _print_problems(res.problems, out)
    assert f"train/{short['id']}: 28 of 128 frames" in out.export_text()  # the id once, not twice


def test_in_process_build_computes_with_one_thread_like_a_pool_worker(folder_big, tmp_path, monkeypatch):
    """fbank's float sums depend on torch's thread count: --workers 1 must compute as a pool
    worker does (one thread), so that a store's bits do not depend on --workers; the caller's
    thread count comes back afterwards."""
    import torch

    import c2fdata.build_worker as bw

    seen, real = [], bw.fbank

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(bw, "fbank", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_store(cfg(folder_big, tmp_path / "s", workers=1))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


class ToneSource:
    """A picklable audio source (pool workers import this module)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self):
        return tone(0.5, seed=self.seed, freq=200 + 40 * self.seed), 16000


class KillsItsProcess:
    """What the OOM killer or a segfaulting decoder does to the worker computing a clip."""

    def __call__(self):
        import os

        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_on_one_clip_fails_that_clip_only(tmp_path):
    """It used to hang the build forever (and every resume): the pool's task was lost."""
    import time

    from c2fdata.build_worker import clip_results, close_results

    # more clips than the pool keeps in flight (2 workers x 4 chunks x 4 clips), taken slowly (as
    # while writing blocks), so that the worker dies while the main process is busy: new chunks
    # are then submitted to a broken pool too
    tasks = [ClipTask(f"c{k}", ToneSource(k % 13)) for k in range(60)]
    tasks.insert(40, ClipTask("killer", KillsItsProcess()))
    cfg = FbankConfig()
    pooled = clip_results(tasks, 2, cfg, 64)
    got = []
    try:
        for result in pooled:
            got.append(result)
            time.sleep(0.02)
    finally:
        close_results(pooled)
    alone = clip_results([t for t in tasks if t.clip_id != "killer"], 1, cfg, 64)
    want = list(alone)
    assert len(got) == 61 and got[40].failed and got[40].reason == "crashed"
    assert got[40].detail.startswith("killer: the process computing it died")
    for a, b in zip(got[:40] + got[41:], want):
        assert not a.failed and a.frames == b.frames and np.array_equal(a.features, b.features)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc (a forkserver's workers are its grandchildren)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        found |= kids
        todo += kids
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_build_leaves_no_worker_behind(folder_big, tmp_path, how):
    """`kill` (SIGTERM) stops a build as Ctrl-C does: the pool stopped, the resume message
    printed; after SIGKILL, where nothing of the build runs, its pool workers (a forkserver's
    children) end themselves instead of waiting forever on a pipe nobody reads."""
    import time

    out, pids = tmp_path / "s", tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import c2fdata.store as st
        from c2fdata.cli import main
        real, calls = st.write_block, []
        def dying(*args):
            calls.append(1)
            if len(calls) == 2:  # workers busy: tell the test who they are, then be killed
                with open({str(pids)!r}, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(0.5)  # for the test to list the workers
                os.kill(os.getpid(), signal.{how})
            real(*args)
        st.write_block = dying
        main(["build", "--dataset", "folder", "--root", {str(folder_big)!r}, "--out", {str(out)!r},
              "--block-clips", "4", "--target-frames", "128", "--workers", "2"])
    """)
    log = tmp_path / "log"
    with open(log, "w") as f:  # a file, not a pipe: workers left behind would hold a pipe open
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT)
        workers: set[int] = set()
        while proc.poll() is None:  # the workers, seen while the build runs
            if pids.is_file():
                workers |= _descendants(int(pids.read_text() or proc.pid))
            time.sleep(0.01)
    err = log.read_text()
    try:
        assert workers, err
        if how == "SIGTERM":
            assert proc.returncode == 2 and "interrupted; finished blocks are kept" in " ".join(err.split()), err
        else:
            assert proc.returncode == -signal.SIGKILL, err
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)]
    finally:
        for p in workers:  # none, unless the test failed
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
    assert build_store(cfg(folder_big, out)).finalized  # and the build resumes


def _damaged_mp3(path: Path, seconds: float = 3.0) -> Path:
    """An MP3 (libsndfile writes it) with 600 bytes scrambled mid-stream: libmpg123 meets illegal
    frame headers there, says so on stderr, resyncs and decodes on, without an error."""
    sf.write(path, tone(seconds, freq=440), 16000, format="MP3")
    data = bytearray(path.read_bytes())
    for k in range(2000, 2600):
        data[k] = (data[k] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    return path


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile writes no MP3")
def test_an_mp3_that_decodes_short_of_its_header_is_refused_as_damaged(tmp_path):
    """The damaged MP3 decodes, without an error, to fewer samples than its header declares: the
    clip is refused as damaged, with the count, and the retry hint; a clean MP3 and one with bytes
    after its audio (a tag libmpg123 warns about on stderr, the audio whole) are kept."""
    d = tmp_path / "d" / "train" / "a"
    d.mkdir(parents=True)
    sf.write(d / "clean.mp3", tone(3.0, freq=300), 16000, format="MP3")
    sf.write(d / "tagged.mp3", tone(3.0, freq=500), 16000, format="MP3")
    (d / "tagged.mp3").write_bytes((d / "tagged.mp3").read_bytes() + b"APETAGEX" + bytes(120))
    bad = _damaged_mp3(d / "damaged.mp3")
    with sf.SoundFile(bad) as f:  # the premise: libsndfile reads it without an error, short of its header
        declared, decoded = f.frames, f.read(dtype="float32").shape[0]
    assert decoded < declared - 1152
    result = build_store(BuildConfig(dataset="folder", root=tmp_path / "d", out=tmp_path / "s", block_clips=2,
                                     options={"target_frames": 300}))
    [problem] = result.problems
    assert problem["reason"] == "damaged" and problem["fatal"] and problem["id"] == "a/damaged"
    assert f"{bad}: {declared - decoded} of its {declared} samples" in problem["detail"]
    assert "--retry-failed" in problem["detail"]
    reader = StoreReader(tmp_path / "s", "train")
    assert sorted(reader.ids) == ["a/clean", "a/tagged"] and reader.failed() == 1  # the two whole ones served
    # without a header that counts its frames, the length is libmpg123's guess from the file's size:
    # not held against the file (a tag after the audio would make a whole file look short)
    guessed = d / "guessed.mp3"
    guessed.write_bytes(bad.read_bytes().replace(b"Xing", b"Xyng").replace(b"Info", b"Infx"))
    from c2fdata.datasets.base import FileSource

    with pytest.raises(BadClip, match="could not be decoded"):
        FileSource(str(bad))()
    with pytest.raises(BadClip, match="could not be decoded"):  # a segment of it too, wherever the damage is
        FileSource(str(bad), 2.0, 2.5)()
    assert FileSource(str(guessed))()[0].size > 0
    data = bytearray(bad.read_bytes())  # a Xing header without its frames field: a guessed length too
    at = data.index(b"Xing")
    data[at + 7] &= 0xFE
    guessed.write_bytes(bytes(data))
    assert FileSource(str(guessed))()[0].size > 0


def test_a_store_named_as_its_split_by_a_relative_path_reads(tmp_path, monkeypatch):
    """`--out test` (relative, named as one of its splits): zarr's local store cut its folder's name
    out of every key by text, "test/ids" too, and every read of the store failed."""
    from click.testing import CliRunner

    from c2fdata.cli import main as c2fdata_main
    from c2fdata.store import create_store_from_arrays
    from c2fdata.vocab import Vocabulary

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    split = {"features": rng.normal(-5, 2, (4, 8, 128)).astype(np.float32), "frames": np.full(4, 8),
             "labels": [["a"], ["b"]] * 2, "ids": [f"c{i}" for i in range(4)]}
    create_store_from_arrays("test", dataset="x", vocabulary=Vocabulary.from_names(["a", "b"]), multi_label=False,
                             splits={"train": split, "test": split})
    assert StoreReader("test", "test").ids == ["c0", "c1", "c2", "c3"]
    assert verify_store("test") == []
    assert CliRunner().invoke(c2fdata_main, ["info", "test"]).exit_code == 0
    from c2fdata.store import _where, open_store

    assert _where(open_store("test")) == "test"  # messages name it as typed, not by the absolute path zarr gets
