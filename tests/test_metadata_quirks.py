"""What real copies of the datasets look like beyond their official files: a BOM from an editor,
spaces in AudioSet's quoted label lists, a header row in a VGGSound CSV, AST jsons written on
another machine, audio behind a symlink, macOS resource forks, yt-dlp's .m4a files, only the
balanced AudioSet clips downloaded next to all three CSVs. Each case is built by hand here and
its expected clips, labels and splits written out literally."""

import json
import os
import shutil

import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import FORMATS, tone

from c2fdata.build import BuildConfig, build_store
from c2fdata.cli import main as cli
from c2fdata.datasets import prepare
from c2fdata.reader import StoreReader
from c2fdata.store import StoreFormatError

BOM = "\ufeff"
SEGMENTS_HEADER = "".join(open(FORMATS / "balanced_train_segments_sample.csv").readlines()[:3])


def wav(path, seconds=0.3, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, seed=seed), 16000)
    return path


def segments(root, name, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(SEGMENTS_HEADER + "".join(f'{y}, {s:.3f}, {s + 10:.3f}, "{labels}"\n'
                                                       for y, s, labels in rows))


def with_bom(path):
    path.write_text(BOM + path.read_text(encoding="utf-8"), encoding="utf-8")


def test_a_bom_changes_nothing(tmp_path, esc50_root, voxceleb_root, vggsound_root):
    cases = {"esc50": (esc50_root, "meta/esc50.csv"), "voxceleb": (voxceleb_root, "iden_split.txt"),
             "vggsound": (vggsound_root, "vggsound.csv")}
    root = tmp_path / "audioset"
    segments(root, "balanced_train_segments.csv", [("--PJHxphWEs", 30, "/m/09x0r,/t/dd00088")])
    wav(root / "a" / "--PJHxphWEs_30.000.flac")
    (root / "mine.json").write_text(json.dumps({"data": [{"wav": "a/--PJHxphWEs_30.000.flac", "labels": "/m/09x0r"}]}))
    cases["audioset"] = (root, "balanced_train_segments.csv")
    for name, (root, meta) in cases.items():
        before = prepare(name, root)
        with_bom(root / meta)
        if name == "audioset":
            with_bom(root / "mine.json")
        after = prepare(name, root)
        assert {s: [(c.id, c.labels) for c in v] for s, v in after.clips.items()} == \
               {s: [(c.id, c.labels) for c in v] for s, v in before.clips.items()}, name
        assert after.missing == before.missing and after.notes == before.notes, name


def test_audioset_labels_with_spaces_after_commas(tmp_path):
    segments(tmp_path, "eval_segments.csv", [("abc", 0, "/m/09x0r, /t/dd00088 ,/m/04rlf")])
    wav(tmp_path / "abc.wav")
    assert prepare("audioset", tmp_path).clips["eval"][0].labels == ("/m/09x0r", "/t/dd00088", "/m/04rlf")


def test_audioset_statistics_from_the_training_split_on_disk(tmp_path):
    """All three CSVs, only balanced_train's and eval's clips downloaded: the unbalanced split
    is empty, so the statistics come from balanced_train (the build used to run to the end and
    then fail to finalise); a split with no clip on disk is refused before anything is built."""
    segments(tmp_path, "balanced_train_segments.csv", [("bal", 0, "/m/09x0r")])
    segments(tmp_path, "unbalanced_train_segments.csv", [("unbal", 0, "/m/09x0r")])
    segments(tmp_path, "eval_segments.csv", [("ev", 0, "/m/09x0r")])
    wav(tmp_path / "audio" / "bal.wav")
    wav(tmp_path / "audio" / "ev.wav", seed=1)
    spec = prepare("audioset", tmp_path)
    assert spec.train_split == "balanced_train" and spec.train_split_note == ""
    assert prepare("audioset", tmp_path, train_split="eval").train_split == "eval"
    with pytest.raises(ValueError, match=r"split 'unbalanced_train'.*no clip on disk \(1 listed, all missing\)"
                                         r".*--train-split \(splits with clips: balanced_train, eval\)"):
        prepare("audioset", tmp_path, train_split="unbalanced_train").check_train_split()
    with pytest.raises(ValueError, match=r"no split 'nope'.*balanced_train, eval"):
        prepare("audioset", tmp_path, train_split="nope").check_train_split()
    with pytest.raises(ValueError, match=r"split 'unbalanced_train'.*no clip on disk"):  # a build checks first
        build_store(BuildConfig(dataset="audioset", root=tmp_path, out=tmp_path / "never",
                                options={"train_split": "unbalanced_train"}))
    assert not (tmp_path / "never").exists()
    res = build_store(BuildConfig(dataset="audioset", root=tmp_path, out=tmp_path / "store"))
    assert res.finalized and res.stats["split"] == "balanced_train"


@pytest.mark.parametrize("splits, want, guessed", [
    (("Train", "Test"), "Train", False),
    (("train_data", "eval_data"), "train_data", False),
    (("a", "b"), "a", True),
    (("train_a", "train_b", "test"), "test", True),  # two candidates: no guess between them
])
def test_folder_statistics_split(tmp_path, splits, want, guessed):
    for k, split in enumerate(splits):
        wav(tmp_path / split / "dog" / f"{k}.wav", seed=k)
    spec = prepare("folder", tmp_path)
    assert spec.train_split == want and bool(spec.train_split_note) == guessed
    if guessed:
        assert f"statistics from split {want!r}" in spec.train_split_note and "--train-split" in spec.train_split_note
        assert prepare("folder", tmp_path, train_split=splits[-1]).train_split_note == ""


def test_ast_json_written_elsewhere(tmp_path):
    """An AST json from another machine (absolute and Windows paths) finds this copy's files
    under AudioSet's other namings, as the CSVs do."""
    entries = [{"wav": "/data/audioset/eval/--4gqARaEJE_0.000.flac", "labels": "/m/068hy"},
               {"wav": "D:\\audioset\\eval\\--BfvyPmVMo_20.000.flac", "labels": "/m/09x0r, /m/04rlf"},
               {"wav": "/elsewhere/-0gone_10.000.flac", "labels": "/m/09x0r"}]
    (tmp_path / "eval_data.json").write_text(json.dumps({"data": entries}))
    wav(tmp_path / "audio" / "Y--4gqARaEJE.wav")
    wav(tmp_path / "audio" / "--BfvyPmVMo_20000_30000.wav", seed=1)
    spec = prepare("audioset", tmp_path)
    assert [(c.id, c.labels) for c in spec.clips["eval_data"]] == [
        ("--4gqARaEJE_0.000", ("/m/068hy",)), ("--BfvyPmVMo_20.000", ("/m/09x0r", "/m/04rlf"))]
    assert [c.source.path for c in spec.clips["eval_data"]] == [
        str(tmp_path / "audio" / "Y--4gqARaEJE.wav"), str(tmp_path / "audio" / "--BfvyPmVMo_20000_30000.wav")]
    assert spec.missing["eval_data"] == ["-0gone_10.000"]


def test_ast_json_mistakes_are_named(tmp_path):
    wav(tmp_path / "a" / "abc_0.000.wav")
    segments(tmp_path, "eval_segments.csv", [("abc", 0, "/m/09x0r")])
    (tmp_path / "eval.json").write_text(json.dumps({"data": [{"wav": "a/abc_0.000.wav", "labels": "/m/09x0r"}]}))
    with pytest.raises(ValueError, match="eval.json and eval_segments.csv both give split 'eval'"):
        prepare("audioset", tmp_path)
    (tmp_path / "eval.json").rename(tmp_path / "train.json")
    (tmp_path / "train.json").write_text(json.dumps({"data": [{"wav": "a/abc_0.000.wav", "label": "/m/09x0r"}]}))
    with pytest.raises(ValueError, match=r"train.json: entry 0 .* needs \"wav\" and \"labels\""):
        prepare("audioset", tmp_path)
    (tmp_path / "train.json").write_text("{not json")
    (tmp_path / "class_map.json").write_text(json.dumps({"0": "Speech"}))
    notes = prepare("audioset", tmp_path).notes
    assert any(n.startswith("train.json skipped: not valid JSON") for n in notes)
    assert any(n.startswith("class_map.json skipped: not an AST data json") for n in notes)


def test_vggsound_header_row_and_bad_start(tmp_path):
    (tmp_path / "vggsound.csv").write_text("youtube_id,start_seconds,label,split\n--0PQM4-hqg,30,waterfall burbling,train\n")
    wav(tmp_path / "a" / "--0PQM4-hqg_000030.wav")
    spec = prepare("vggsound", tmp_path)
    assert [(c.id, c.labels) for c in spec.clips["train"]] == [("--0PQM4-hqg_000030", ("waterfall burbling",))]
    (tmp_path / "vggsound.csv").write_text("--0PQM4-hqg,30,waterfall burbling,train\nxyz,thirty,dog,train\n")
    with pytest.raises(ValueError, match=r"vggsound.csv:2: start_seconds must be a number, got 'thirty'"):
        prepare("vggsound", tmp_path)


def test_symlinked_audio_folders_are_searched(tmp_path):
    disk = tmp_path / "big_disk"
    wav(disk / "--PJHxphWEs_30.000.flac")
    wav(disk / "dog" / "more" / "b.wav", seed=1)
    os.symlink(disk, disk / "dog" / "loop")  # a link back up: the walk must end
    root = tmp_path / "as"
    segments(root, "eval_segments.csv", [("--PJHxphWEs", 30, "/m/09x0r")])
    os.symlink(disk, root / "audio")
    assert [c.source.path for c in prepare("audioset", root).clips["eval"]] == [
        str(root / "audio" / "--PJHxphWEs_30.000.flac")]
    folder = tmp_path / "folder"
    wav(folder / "train" / "dog" / "a.wav")
    os.symlink(disk / "dog" / "more", folder / "train" / "dog" / "more")
    assert [c.id for c in prepare("folder", folder).clips["train"]] == ["dog/a", "dog/more/b"]
    # a folder reached both as itself and through links keeps its own path, whatever order the
    # file system lists them in (clip ids are hashed into the store's fingerprint)
    wav(folder / "train" / "cat" / "real" / "x.wav")
    for name in ("alias", "zlink"):
        os.symlink(folder / "train" / "cat" / "real", folder / "train" / "cat" / name)
    assert [c.id for c in prepare("folder", folder).clips["train"] if c.id.startswith("cat/")] == ["cat/real/x"]


def test_unreadable_folders_are_left_out_and_named(tmp_path, monkeypatch):
    """A root-only lost+found on a data disk (simulated: the tests may run as root)."""
    segments(tmp_path, "eval_segments.csv", [("abc", 0, "/m/09x0r")])
    wav(tmp_path / "audio" / "abc.wav")
    (tmp_path / "lost+found").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    spec = prepare("audioset", tmp_path)
    assert [c.id for c in spec.clips["eval"]] == ["abc_0.000"]
    assert spec.notes == [(f"1 folder(s) under {tmp_path} could not be read and were left out "
                           f"({tmp_path / 'lost+found'}); check their permissions")]


def test_hidden_files_and_folders_are_not_clips(tmp_path):
    wav(tmp_path / "train" / "dog" / "clip1.wav")
    (tmp_path / "train" / "dog" / "._clip1.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    wav(tmp_path / "train" / "cat" / "clip2.wav", seed=1)
    wav(tmp_path / "train" / "cat" / ".ipynb_checkpoints" / "clip2-checkpoint.wav", seed=1)
    wav(tmp_path / "train" / ".Trash" / "x.wav")
    wav(tmp_path / ".cache" / "cat" / "y.wav")
    spec = prepare("folder", tmp_path)
    assert list(spec.clips) == ["train"] and [c.id for c in spec.clips["train"]] == ["cat/clip2", "dog/clip1"]
    assert spec.vocabulary.names == ("cat", "dog")


def test_undecodable_files_are_noted(tmp_path):
    wav(tmp_path / "train" / "dog" / "a.wav")
    for name in ("bird/x.m4a", "bird/y.m4a", "dog/z.webm"):
        (tmp_path / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / name).write_bytes(b"not decodable by libsndfile")
    spec = prepare("folder", tmp_path)
    assert spec.vocabulary.names == ("dog",)
    assert spec.notes == [(f"3 files under {tmp_path} in formats c2f cannot decode were left out (2 .m4a, 1 .webm); "
                           "convert them to flac or wav (e.g. `ffmpeg -i clip.m4a -ac 1 -ar 16000 clip.flac`) "
                           "and build again (into a new --out where a store was built already: its clip lists change)")]
    shutil.rmtree(tmp_path / "train" / "dog")
    with pytest.raises(ValueError, match=r"no audio found.*\. 2 files .* cannot decode were left out \(2 \.m4a\)"):
        prepare("folder", tmp_path)


def test_folder_layout_mistakes_are_named(tmp_path):
    """Audio one level too high (ROOT/<class>/*.wav), a file outside any class folder, a class
    only the evaluation split has, classes taken for splits: each said, not passed over."""
    flat = tmp_path / "flat"
    for c in ("bird", "cat"):
        wav(flat / c / "0.wav")
    with pytest.raises(ValueError, match=rf"no audio found.*found 2 audio file\(s\) in 2 folder\(s\) directly under "
                                         rf"{flat} \(bird, cat\): if those are classes, put them under a split folder, "
                                         rf"e.g. {flat}/train/bird/"):
        prepare("folder", flat)
    root = tmp_path / "mine"
    wav(root / "train" / "dog" / "0.wav")
    wav(root / "train" / "loose.wav")
    wav(root / "eval" / "dog" / "1.wav")
    wav(root / "eval" / "owl" / "2.wav")
    spec = prepare("folder", root)
    assert [c.id for c in spec.clips["train"]] == ["dog/0"] and spec.vocabulary.names == ("dog", "owl")
    assert spec.notes == [
        (f"1 audio file(s) directly in a split folder, outside any class folder, are not clips (e.g. "
         f"{root / 'train' / 'loose.wav'}): move them into ROOT/<split>/<class>/"),
        "1 of 2 classes have no clip in the training split 'train', so a model cannot learn them: owl"]
    nested = tmp_path / "nested"
    for c in ("bird", "cat", "dog"):
        wav(nested / c / "session1" / "0.wav")
    spec = prepare("folder", nested)
    assert spec.train_split_note.endswith(f"If the folders under {nested} are classes, not splits, the layout is "
                                          "ROOT/<split>/<class>/...: put them under ROOT/train/")


def test_a_refused_statistics_split_changes_nothing(tmp_path):
    """finalize --train-split with a split of no usable clip fails before writing anything."""
    for split in ("a", "b"):
        wav(tmp_path / "data" / split / "dog" / "0.wav", seconds=0.5)
    (tmp_path / "data" / "b" / "dog" / "bad.wav").write_bytes(b"RIFF not really")
    (tmp_path / "data" / "b" / "dog" / "0.wav").unlink()
    store = tmp_path / "store"
    build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store))
    before = StoreReader(store, "a").attrs
    r = CliRunner().invoke(cli, ["finalize", str(store), "--train-split", "b"])
    assert r.exit_code == 2 and "no usable clip in the train split 'b'" in r.output
    assert StoreReader(store, "a").attrs == before


def test_export_needs_no_training_split_on_disk(tmp_path):
    """Only VGGSound's test clips downloaded: export-audio writes them (a build would refuse)."""
    (tmp_path / "vggsound.csv").write_text("aaa,30,dog,train\nbbb,30,dog,test\n")
    wav(tmp_path / "a" / "bbb_000030.wav")
    r = CliRunner().invoke(cli, ["export-audio", "--dataset", "vggsound", "--root", str(tmp_path), "--split", "test",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bbb_000030.wav", "labels.csv", "manifest.csv"]


def test_duplicate_ids_name_their_files(tmp_path):
    wav(tmp_path / "train" / "dog" / "clip.wav")
    wav(tmp_path / "train" / "dog" / "clip.flac")
    with pytest.raises(ValueError, match=r"1 duplicate clip ids: 'dog/clip' \(.*clip.flac and .*clip.wav\)"):
        prepare("folder", tmp_path)
    # one file listed twice (an AST json entry repeated): said so, not "x.wav and x.wav"
    wav(tmp_path / "as" / "abc_0.000.wav")
    entry = {"wav": "as/abc_0.000.wav", "labels": "/m/09x0r"}
    (tmp_path / "as" / "train.json").write_text(json.dumps({"data": [entry, entry]}))
    with pytest.raises(ValueError, match=rf"'abc_0.000' \({tmp_path / 'as' / 'abc_0.000.wav'} listed twice\)"):
        prepare("audioset", tmp_path / "as")


def test_statistics_split_of_an_existing_store(tmp_path):
    """The statistics split is not in the store's fingerprint: a finished store built with
    another choice says so (and how to keep it or re-finalise), `finalize --train-split`
    recomputes the statistics from the blocks' sums, which the store's own clips confirm."""
    for split in ("a", "b"):
        for k in range(3):
            wav(tmp_path / "data" / split / "dog" / f"{k}.wav", seconds=0.5 + k / 10, seed=k + 5 * (split == "b"))
    store = tmp_path / "store"
    first = build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store))
    assert first.stats["split"] == "a" and any("no split is named train" in n for n in first.notes)
    with pytest.raises(StoreFormatError, match=r"finalised with normalisation statistics from split 'a'; this build "
                                               r"takes them from 'b'.*--train-split a.*finalize .* --train-split b"):
        build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store, options={"train_split": "b"}))
    assert build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store,
                                   options={"train_split": "a"})).computed == 0
    r = CliRunner().invoke(cli, ["finalize", str(store), "--train-split", "b"])
    assert r.exit_code == 0 and "from split 'b'" in r.output
    reader = StoreReader(store, "b")
    values = [reader.features(i)[:reader.frames()[i]].astype("float64") for i in range(len(reader))]
    import numpy as np

    flat = np.concatenate([v.ravel() for v in values])
    assert reader.mean == pytest.approx(flat.mean(), abs=1e-3) and reader.std == pytest.approx(flat.std(), abs=1e-3)
    r = CliRunner().invoke(cli, ["finalize", str(store), "--train-split", "nope"])
    assert r.exit_code == 2 and "no split 'nope'; splits are a, b" in r.output
    info = json.loads(CliRunner().invoke(cli, ["info", str(store), "--json"]).output)
    assert info["train_split"] == "b" and not any("no split is named train" in n for n in info["notes"])


def test_a_refused_store_says_what_differs(tmp_path):
    for k in range(3):
        wav(tmp_path / "data" / "train" / "dog" / f"{k}.wav", seed=k)
    store = tmp_path / "store"
    build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store, limit=2))
    with pytest.raises(StoreFormatError, match=r"clips per split \{'train': 2\} here, \{'train': 3\} now "
                                               r"\(files added or removed, or --limit\)"):
        build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store))
    with pytest.raises(StoreFormatError, match=r"target_frames 1024 here, 256 now \(--target-frames\)"):
        build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store, limit=2,
                                options={"target_frames": 256}))
    (tmp_path / "data" / "train" / "dog" / "1.wav").rename(tmp_path / "data" / "train" / "dog" / "9.wav")
    with pytest.raises(StoreFormatError, match="the same splits and counts, but other clip ids or labels"):
        build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=store, limit=2))


def test_a_limited_build_takes_clips_from_every_class(tmp_path):
    """A folder tree lists its clips class by class: --limit 5 used to give the first class only."""
    for cls in ("bird", "cat", "dog"):
        for k in range(4):
            wav(tmp_path / "data" / "train" / cls / f"{k}.wav", seed=k)
    build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=tmp_path / "store", limit=5))
    assert StoreReader(tmp_path / "store", "train").ids == ["bird/0", "bird/1", "cat/0", "cat/1", "dog/0"]
