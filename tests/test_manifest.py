"""--dataset manifest: clips listed in ROOT/manifest.csv, wherever their files are."""

import numpy as np
import pytest
import soundfile as sf
import zarr
from conftest import tone

from c2fdata.build import BuildConfig, build_store
from c2fdata.datasets import prepare
from c2fdata.features import BadClip
from c2fdata.reader import StoreReader


@pytest.fixture
def root(tmp_path):
    """Six clips in two folders and one elsewhere (an absolute path), a file listed but absent, a
    video c2f cannot decode; a byte-order mark before the header, as spreadsheets write it."""
    r = tmp_path / "data"
    for k, name in enumerate(("a/0.wav", "a/1.flac", "b/2.wav", "b/3.wav", "a/4.wav")):
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(r / name, tone(1.0, freq=300 + 100 * k, seed=k), 16000)
    far = tmp_path / "elsewhere" / "5.wav"
    far.parent.mkdir()
    sf.write(far, tone(1.0, freq=900, seed=5), 22050)
    (r / "clip.mp4").write_bytes(b"\x00" * 64)
    (r / "manifest.csv").write_text(
        "\ufeffsplit,path,label,id\n"
        "train,a/0.wav,dog,\n"
        "train,a/1.flac,cat,\n"
        f"train,{far},bird,far-away\n"
        "eval,b/2.wav,dog,\n"
        "eval,b/3.wav,cat,\n"
        "eval,b/gone.wav,cat,\n"
        "train,clip.mp4,dog,\n", encoding="utf-8")
    return r


def test_a_manifest_lists_clips_labels_and_splits(root, tmp_path):
    spec = prepare("manifest", root)
    got = {s: [(c.id, c.labels, c.source.path) for c in clips] for s, clips in spec.clips.items()}
    assert got == {
        "train": [("a/0", ("dog",), str(root / "a/0.wav")), ("a/1", ("cat",), str(root / "a/1.flac")),
                  ("far-away", ("bird",), str(tmp_path / "elsewhere" / "5.wav"))],
        "eval": [("b/2", ("dog",), str(root / "b/2.wav")), ("b/3", ("cat",), str(root / "b/3.wav"))]}
    assert spec.vocabulary.names == ("bird", "cat", "dog") and not spec.multi_label
    assert spec.missing == {"eval": ["b/gone"]} and spec.train_split == "train"
    assert len(spec.notes) == 2 and "1 .mp4" in spec.notes[0]
    assert spec.notes[1] == (f"1 listed file(s) are not there (e.g. b/gone.wav; relative paths are taken from {root}, "
                             "the manifest's folder): counted as missing")
    res = build_store(BuildConfig(dataset="manifest", root=root, out=tmp_path / "s", options={"target_frames": 128}))
    assert res.finalized and res.completion["train"]["ok"] == 3 and res.completion["eval"]["ok"] == 2
    train = StoreReader(tmp_path / "s", "train")
    assert train.ids == ["a/0", "a/1", "far-away"]
    assert [train.vocabulary.names[int(k)] for k in train.labels()] == ["dog", "cat", "bird"]
    # the same file as a folder tree's clip: the same features
    folder = tmp_path / "tree" / "train" / "dog"
    folder.mkdir(parents=True)
    (folder / "0.wav").write_bytes((root / "a" / "0.wav").read_bytes())
    build_store(BuildConfig(dataset="folder", root=tmp_path / "tree", out=tmp_path / "f", options={"target_frames": 128}))
    np.testing.assert_array_equal(StoreReader(tmp_path / "f", "train")[0][0], train[0][0])


def test_labels_column_is_multi_label(tmp_path):
    sf.write(tmp_path / "x.wav", tone(1.0), 16000)
    sf.write(tmp_path / "y.wav", tone(1.0, freq=500), 16000)
    (tmp_path / "manifest.csv").write_text("path,labels,split\nx.wav,Speech; Music,train\ny.wav,Music,train\n")
    spec = prepare("manifest", tmp_path)
    assert spec.multi_label and spec.vocabulary.names == ("Music", "Speech")
    assert [c.labels for c in spec.clips["train"]] == [("Speech", "Music"), ("Music",)]


@pytest.mark.parametrize("text, message", [
    ("file,label,split\nx.wav,a,train\n", "lacks path"),
    ("path,split\nx.wav,train\n", "lacks label"),
    ("path,label,labels,split\nx.wav,a,a,train\n", "both a label and a labels column"),
    ("path,label,split\nx.wav,,train\nx.wav,a;b,train\n", "2 row(s) lack a path, a label or a split, have more"),
    ("path,label,split\nx.wav,high, pitched,train\n", "line 2: more fields than the header names (an unquoted comma"),
    ("path,label,split\nx.txt,a,train\n", "x.txt is not an audio file c2f reads"),
    ("path,label,split\nnone.wav,a,train\n", ("none of its 1 clips can be built: 1 listed file(s) are not there, "
                                               "e.g. none.wav")),
    ("path,label,split\n", "lists no clip (a header row only)"),
    ("path,label,split\nv.mp4,a,train\n", "none of its 1 clips can be built: 1 file under"),
    ("path,label,split\nx.wav,a,train\nx.wav,b,train\n", "listed more than once in one split"),
    ("path,label,split,id\nx.wav,a,train,1\ny.flac,a,train,1\n", "duplicate clip ids: '1'"),
])
def test_a_bad_manifest_is_named_with_what_to_do(tmp_path, text, message):
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 64)
    sf.write(tmp_path / "x.wav", tone(1.0), 16000)
    sf.write(tmp_path / "y.flac", tone(1.0), 16000)
    (tmp_path / "x.txt").write_text("not audio")
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ValueError) as err:
        prepare("manifest", tmp_path)
    assert message in str(err.value) and "manifest" in str(err.value)


def test_no_manifest_says_what_it_reads(tmp_path):
    with pytest.raises(ValueError, match="manifest.csv not found: --dataset manifest reads ROOT/manifest.csv"):
        prepare("manifest", tmp_path)


def test_what_spreadsheets_and_other_machines_write(tmp_path):
    """';'-separated, CRLF, headers in capitals, a column c2f does not read, trailing empty rows,
    backslash paths: read as meant, and the column left out said."""
    (tmp_path / "a").mkdir()
    for name in ("a/1.wav", "a/2.wav", "a/3.wav"):
        sf.write(tmp_path / name, tone(1.0), 16000)
    (tmp_path / "manifest.csv").write_bytes(
        b"Path;Label;Split;Speaker\r\na\\1.wav;dog;train;x\r\na/2.wav;cat;train;y\r\na/3.wav;dog;eval;z\r\n;;;\r\n;;;\r\n")
    spec = prepare("manifest", tmp_path)
    assert {s: [(c.id, c.labels, c.source.path) for c in cs] for s, cs in spec.clips.items()} == {
        "train": [("a/1", ("dog",), str(tmp_path / "a/1.wav")), ("a/2", ("cat",), str(tmp_path / "a/2.wav"))],
        "eval": [("a/3", ("dog",), str(tmp_path / "a/3.wav"))]}
    assert spec.notes == [("columns speaker of manifest.csv are not read (path, label or labels, split, id, start, "
                           "end and channel are)")]


def test_numbers_as_labels_are_classes_in_numeric_order(tmp_path):
    for k in range(4):
        sf.write(tmp_path / f"{k}.wav", tone(1.0), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split\n0.wav,10,train\n1.wav,2,train\n2.wav,1,train\n3.wav,0,train\n")
    assert prepare("manifest", tmp_path).vocabulary.names == ("0", "1", "2", "10")


def test_a_file_in_two_splits_and_splits_named_alike_are_noted(tmp_path):
    for k in range(3):
        sf.write(tmp_path / f"{k}.wav", tone(1.0), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split\n0.wav,a,train\n1.wav,b,train\n0.wav,a,eval\n"
                                           "2.wav,b,Train\n")
    notes = prepare("manifest", tmp_path).notes
    assert notes == [(f"1 clip(s) are listed in more than one split (e.g. {tmp_path / '0.wav'}: train at line 2, eval "
                      "at line 4): those splits share clips, so an evaluation on one of them scores clips the model "
                      "may have trained on"), "splits named alike are kept apart: Train, train (a typo in the split column?)"]


def test_a_manifest_that_is_not_utf8_says_how_to_save_it(tmp_path):
    (tmp_path / "manifest.csv").write_bytes("path,label,split\nx.wav,caf\u00e9,train\n".encode("cp1252"))
    with pytest.raises(ValueError, match="manifest.csv is not UTF-8 text .*save it as CSV UTF-8"):
        prepare("manifest", tmp_path)


def test_the_untrained_classes_note_reads_the_training_split_chosen(tmp_path):
    """Splits fit, dev: the guess is dev (first by name); --train-split fit has both classes."""
    for k in range(3):
        sf.write(tmp_path / f"{k}.wav", tone(1.0), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split\n0.wav,a,fit\n1.wav,b,fit\n2.wav,a,dev\n")
    guessed = prepare("manifest", tmp_path)
    assert guessed.train_split == "dev" and guessed.notes == [
        "1 of 2 classes have no clip in the training split 'dev', so a model cannot learn them: b"]
    assert prepare("manifest", tmp_path, train_split="fit").notes == []


def test_labels_that_read_as_numbers_only_when_they_are(tmp_path):
    """'nan', 'Inf' and '1e3' are names, not numbers: the order is one and the same every run."""
    import subprocess
    import sys

    for k in range(6):
        sf.write(tmp_path / f"{k}.wav", tone(1.0), 16000)
    labels = ["10", "2", "Nan", "1", "Inf", "1e3"]
    (tmp_path / "manifest.csv").write_text("path,label,split\n" + "".join(f"{k}.wav,{x},train\n" for k, x in enumerate(labels)))
    code = f"from c2fdata.datasets import prepare; print(prepare('manifest', {str(tmp_path)!r}).vocabulary.names)"
    orders = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert orders == {"('1', '2', '10', '1e3', 'Inf', 'Nan')\n"}


def test_a_file_under_root_has_one_id_written_relative_or_absolute(tmp_path):
    sf.write(tmp_path / "x.wav", tone(1.0), 16000)
    sf.write(tmp_path / "y.wav", tone(1.0), 16000)
    (tmp_path / "manifest.csv").write_text(f"path,label,split,\n{tmp_path / 'x.wav'},a,train,\ny.wav,b,train,\n")
    spec = prepare("manifest", tmp_path)
    assert [c.id for c in spec.clips["train"]] == ["x", "y"] and spec.notes == []  # the header's last ',' is no column


def test_a_test_set_built_apart_takes_the_training_stores_classes(tmp_path):
    """A test manifest lacking a class: with --classes STORE its store has the training store's
    classes in their order, so a model trained there evaluates on it; a file of names does the
    same; a label outside them fails as unknown."""
    from c2fdata.vocab import Vocabulary
    from c2ftrain.evaluate import evaluate_checkpoint
    from c2ftrain.recipe import recipe_from_dict
    from c2ftrain.trainer import PhaseTrainer

    train, test = tmp_path / "train", tmp_path / "test"
    for folder, rows in ((train, [("0", "a"), ("1", "b"), ("2", "c"), ("3", "a")]), (test, [("4", "c"), ("5", "a"), ("6", "zebra")])):
        folder.mkdir()
        for k, label in rows:
            sf.write(folder / f"{k}.wav", tone(1.0, freq=200 + 300 * "abcz".index(label[0])), 16000)
        split = "train" if folder == train else "eval"
        (folder / "manifest.csv").write_text("path,label,split\n" + "".join(f"{k}.wav,{x},{split}\n" for k, x in rows))
    opts = {"target_frames": 64}
    build_store(BuildConfig(dataset="manifest", root=train, out=tmp_path / "s-train", options=opts))
    res = build_store(BuildConfig(dataset="manifest", root=test, out=tmp_path / "s-test",
                                  options={**opts, "train_split": "eval", "classes": str(tmp_path / "s-train")}))
    assert StoreReader(tmp_path / "s-test", "eval").vocabulary == StoreReader(tmp_path / "s-train", "train").vocabulary
    assert [(p["id"], p["reason"]) for p in res.problems] == [("6", "unknown-label")]
    recipe = recipe_from_dict({
        "name": "t", "store": str(tmp_path / "s-train"), "data": {"batch_size": 2, "backend": "torch", "num_workers": 0,
                                                                  "eval_split": "train"},
        "model": {"preset": "tiny", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_stride": [16, 16]},
        "phases": [{"method": "none", "factor": 1, "steps": 1}]})
    PhaseTrainer(recipe, recipe.phases, tmp_path / "run", "c2f", device="cpu").run()
    out = evaluate_checkpoint(tmp_path / "run" / "final.pt", tmp_path / "s-test", "eval", device="cpu")
    assert out["clips"] == 2
    (tmp_path / "classes.txt").write_text("# the model's classes\na\nb\n\nc\n")
    assert prepare("manifest", test, classes=tmp_path / "classes.txt").vocabulary == Vocabulary.from_names(["a", "b", "c"])
    with pytest.raises(ValueError, match="--classes is for datasets whose classes come from the data found"):
        prepare("esc50", tmp_path, classes=tmp_path / "classes.txt")
    with pytest.raises(ValueError, match="neither a store nor a file of class names"):
        prepare("manifest", test, classes=tmp_path / "nothing")


def test_segments_of_a_recording_are_clips_with_the_features_of_the_segment_cut_out(tmp_path):
    """start/end columns: each segment of a 3-s recording (two tones, then a third) is a clip
    whose features equal those of the same samples cut into a file of their own and built as a
    folder tree's clip; default ids carry the times; a segment past the file's end fails as its
    clip's problem, naming the file and times; a recording split across splits is noted."""
    rec = np.concatenate([tone(1.0, freq=300, seed=1), tone(1.5, freq=1200, seed=2), tone(0.5, freq=700, seed=3)])
    sf.write(tmp_path / "rec.wav", rec, 16000)
    (tmp_path / "manifest.csv").write_text(
        "path,label,split,start,end\n"
        "rec.wav,low,train,0,1\n"
        "rec.wav,high,train,1,2.5\n"
        "rec.wav,mid,eval,2.5,\n"
        "rec.wav,low,eval,2.75,4\n")  # past the end (3 s)
    spec = prepare("manifest", tmp_path)
    assert [(c.id, c.source.start, c.source.end) for c in spec.clips["train"]] == [("rec_0_1", 0, 1), ("rec_1_2.5", 1, 2.5)]
    assert [c.id for c in spec.clips["eval"]] == ["rec_2.5_end", "rec_2.75_4"]
    assert spec.notes[0] == (f"1 recording(s) give clips to more than one split through different segments or "
                             f"channels (e.g. {tmp_path / 'rec.wav'}: eval, train): an evaluation then scores other "
                             "parts of recordings the model trained on (the same speaker, room, microphone), which "
                             "can flatter it")
    res = build_store(BuildConfig(dataset="manifest", root=tmp_path, out=tmp_path / "s", options={"target_frames": 160}))
    [problem] = [p for p in res.problems if p["reason"] != "short"]  # the 0.5-s segment is short of 160 frames
    assert problem["reason"] == "segment" and problem["fatal"] and problem["id"] == "rec_2.75_4"
    assert f"{tmp_path / 'rec.wav'} [2.75-4 s]: ends past the file's end (3.000 s)" in problem["detail"]
    # the same samples as files of their own, built as a folder tree: the same features
    for split, name, first, last in (("train", "a", 0, 16000), ("train", "b", 16000, 40000), ("eval", "c", 40000, 48000)):
        (tmp_path / "tree" / split / name).mkdir(parents=True)
        sf.write(tmp_path / "tree" / split / name / "x.wav", rec[first:last], 16000)
    build_store(BuildConfig(dataset="folder", root=tmp_path / "tree", out=tmp_path / "f", options={"target_frames": 160}))
    for split, rows in (("train", (0, 1)), ("eval", (0,))):
        seg, cut = StoreReader(tmp_path / "s", split), StoreReader(tmp_path / "f", split)
        for k in rows:
            assert seg.frames()[k] == cut.frames()[k]
            np.testing.assert_array_equal(seg[k][0], cut[k][0])


@pytest.mark.parametrize("times, message", [
    ("-1,2", "are no segment"), ("2,1", "are no segment"), ("1,1", "are no segment"), ("a,2", "must be numbers"),
    ("nan,", "are no segment"),
])
def test_times_that_are_no_segment_are_refused_naming_the_line(tmp_path, times, message):
    sf.write(tmp_path / "rec.wav", tone(3.0), 16000)
    (tmp_path / "manifest.csv").write_text(f"path,label,split,start,end\nrec.wav,a,train,0,1\nrec.wav,a,train,{times}\n")
    with pytest.raises(ValueError, match=rf"line 3: start .* {message}"):
        prepare("manifest", tmp_path)


def test_times_as_spreadsheets_and_lhotse_write_them(tmp_path):
    """A decimal comma (a ';'-separated spreadsheet) is a decimal point; an end up to 50 ms past the
    file's end (lhotse loads such cuts) reads to the end; further is refused."""
    from c2fdata.datasets.base import FileSource

    sf.write(tmp_path / "rec.wav", tone(3.0), 16000)
    (tmp_path / "manifest.csv").write_text("path;label;split;start;end\nrec.wav;a;train;1,5;3,04\n")
    [clip] = prepare("manifest", tmp_path).clips["train"]
    assert (clip.source.start, clip.source.end) == (1.5, 3.04)
    assert len(clip.source()[0]) == 24000  # 1.5 s to the end
    with pytest.raises(BadClip, match="ends past the file's end"):
        FileSource(str(tmp_path / "rec.wav"), 1.5, 3.06)()


def test_a_comma_is_a_decimal_comma_only_in_semicolon_files_and_minus_zero_is_zero(tmp_path):
    sf.write(tmp_path / "rec.wav", tone(3.0), 16000)
    (tmp_path / "manifest.csv").write_text('path,label,split,start,end\nrec.wav,a,train,"1,5",2\n')
    with pytest.raises(ValueError, match="must be numbers of seconds"):  # 1,5 could mean 15 there
        prepare("manifest", tmp_path)
    (tmp_path / "manifest.csv").write_text("path,label,split,start,end\nrec.wav,a,train,-0,1\n")
    assert [c.id for c in prepare("manifest", tmp_path).clips["train"]] == ["rec_0_1"]


def test_a_store_built_before_parts_were_fingerprinted_is_named_as_such():
    from c2fdata.store import _what_differs

    was = {"codec": "float16", "dataset": "manifest", "target_frames": 64, "block_clips": 32, "features": {},
           "multi_label": False, "vocabulary": ["a"], "splits": {"train": {"clips": 2}}}
    now = {**was, "parts": "abc"}
    assert "built by an earlier c2f" in _what_differs(was, now)
    assert "other segments or channels" in _what_differs({**was, "parts": "xyz"}, now)
    more = {**now, "splits": {"train": {"clips": 3}}}  # a clip added: said as such, not as other parts
    assert "segments" not in _what_differs({**was, "parts": "xyz"}, more)


def test_the_same_segment_twice_in_a_split_is_refused_two_segments_are_not(tmp_path):
    sf.write(tmp_path / "rec.wav", tone(3.0), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split,start,end\nrec.wav,a,train,0,1\nrec.wav,b,train,1,2\n")
    assert len(prepare("manifest", tmp_path).clips["train"]) == 2
    (tmp_path / "manifest.csv").write_text("path,label,split,start,end\nrec.wav,a,train,0,1\nrec.wav,a,train,0,1.0\n")
    with pytest.raises(ValueError, match=r"1 clip\(s\) listed more than once in one split: .*rec\.wav \[0-1 s\] "
                                         r"\(lines 2, 3\)"):
        prepare("manifest", tmp_path)


def test_a_channel_of_a_multi_channel_recording_is_a_clip_of_its_own(tmp_path):
    """channel column: channel 1 of a stereo file has the features of that channel written as a
    mono file of its own (a folder tree's clip); blank mixes both; a channel the file lacks fails
    as its clip's problem; a channel that is not a number is refused naming the line."""
    left, right = tone(1.0, freq=300, seed=1), tone(1.0, freq=1500, seed=2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split,channel\nst.wav,low,train,0\nst.wav,high,train,1\n"
                                           "st.wav,both,train,\nst.wav,none,train,2\n")
    spec = prepare("manifest", tmp_path)
    assert [c.id for c in spec.clips["train"]] == ["st_ch0", "st_ch1", "st", "st_ch2"]
    res = build_store(BuildConfig(dataset="manifest", root=tmp_path, out=tmp_path / "s", options={"target_frames": 128}))
    [problem] = res.problems
    assert problem["reason"] == "channel" and problem["id"] == "st_ch2"
    assert f"{tmp_path / 'st.wav'} [channel 2]: the file has 2 channel(s)" in problem["detail"]
    (tmp_path / "tree" / "train" / "high").mkdir(parents=True)
    sf.write(tmp_path / "tree" / "train" / "high" / "r.wav", right, 16000)
    build_store(BuildConfig(dataset="folder", root=tmp_path / "tree", out=tmp_path / "f", options={"target_frames": 128}))
    got = StoreReader(tmp_path / "s", "train")
    np.testing.assert_array_equal(got[1][0], StoreReader(tmp_path / "f", "train")[0][0])
    assert not np.array_equal(got[0][0], got[1][0]) and not np.array_equal(got[2][0], got[1][0])
    (tmp_path / "manifest.csv").write_text("path,label,split,channel\nst.wav,low,train,left\n")
    with pytest.raises(ValueError, match=r"line 2: channel 'left' must be a channel number from 0"):
        prepare("manifest", tmp_path)


@pytest.mark.parametrize("fmt, rate", [("FLAC", 16000), ("OGG", 22050), ("MP3", 22050), ("MP3", 16000)])
def test_a_segment_is_the_slice_of_the_whole_decoded_file_in_every_format(tmp_path, fmt, rate):
    """Segments of compressed files equal the same samples of the whole file as soundfile decodes
    it, starts near the end included (Vorbis, Opus and MP3 seek a few hundred samples off)."""
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile writes no {fmt}")
    from c2fdata.datasets.base import FileSource

    path = tmp_path / f"rec.{fmt.lower()}"
    sf.write(path, tone(10.05, sr=rate, freq=440, seed=3), rate, format=fmt)
    whole, sr = sf.read(path, dtype="float32")
    for start, end in ((0.5, 2.5), (3.33, 4.0), (9.7, 10.0), (9.9, None), (0.0, 1.0)):
        got, got_sr = FileSource(str(path), start, end)()
        first, last = round(start * sr), len(whole) if end is None else round(end * sr)
        assert got_sr == sr
        # (MP3 decodes differ from one decode of the file to the next by float rounding, 1e-8)
        np.testing.assert_allclose(got, whole[first:last], rtol=0, atol=1e-6, err_msg=f"{fmt} {start}-{end}")


def test_ids_and_notes_of_segments_and_channels_that_print_alike_or_leak(tmp_path):
    """Times too close for six digits keep distinct ids; the whole file in one split and a segment
    or another channel of it in another is noted as a recording in two splits; a channel written
    "1.0" (a table with blanks in the column) is channel 1."""
    sf.write(tmp_path / "st.wav", tone(3.0, channels=2), 16000)
    (tmp_path / "manifest.csv").write_text("path,label,split,start,end,channel\n"
                                           "st.wav,a,train,1.000001,2.5,\nst.wav,a,train,1.000002,2.5,\n"
                                           "st.wav,b,train,,,0\nst.wav,b,eval,0,3,1.0\n")
    spec = prepare("manifest", tmp_path)
    assert [c.id for c in spec.clips["train"]] == ["st_1.000001_2.5", "st_1.000002_2.5", "st_ch0"]
    assert [(c.id, c.source.channel) for c in spec.clips["eval"]] == [("st_0_3_ch1", 1)]
    assert any(n.startswith("1 recording(s) give clips to more than one split") for n in spec.notes)


def test_a_segment_changed_under_the_same_id_is_another_store(tmp_path):
    """The fingerprint covers which part of its file each clip is: a manifest whose times (or
    channel) change under the same ids is refused by the store built before, saying so; a store
    of whole files records no parts (its fingerprint as before); verify agrees with the build."""
    from c2fdata.reader import StoreFormatError
    from c2fdata.verify import verify_store

    sf.write(tmp_path / "rec.wav", tone(3.0, channels=2), 16000)
    manifest = "path,label,split,id,start,end,channel\nrec.wav,a,train,cut1,{},2,\nrec.wav,b,train,cut2,2,3,0\n"
    (tmp_path / "manifest.csv").write_text(manifest.format(0))
    build_store(BuildConfig(dataset="manifest", root=tmp_path, out=tmp_path / "s", options={"target_frames": 64}))
    assert verify_store(tmp_path / "s") == []
    (tmp_path / "manifest.csv").write_text(manifest.format(1))  # cut1 is now 1-2 s, under the same id
    with pytest.raises(StoreFormatError, match="other segments or channels of their files"):
        build_store(BuildConfig(dataset="manifest", root=tmp_path, out=tmp_path / "s", options={"target_frames": 64}))
    (tmp_path / "manifest.csv").write_text("path,label,split\nrec.wav,a,train\n")
    build_store(BuildConfig(dataset="manifest", root=tmp_path, out=tmp_path / "w", options={"target_frames": 64}))
    assert "parts" not in dict(zarr.open_group(str(tmp_path / "w"), mode="r").attrs)
