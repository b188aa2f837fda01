"""VGGSound and VoxCeleb as users' copies lay them out: a video listed at two start times with
one file named by its id, .mp4 downloads, start_end file names, FLAC-converted VoxCeleb, only
one of VoxCeleb1's two downloads, utterances longer than the stored length. Each expectation is
written out literally."""

import re

import pytest
import soundfile as sf
from conftest import tone

from c2fdata.build import BuildConfig, build_store
from c2fdata.datasets import prepare
from c2fdata.info import build_problems
from c2fdata.reader import StoreReader


def wav(path, seconds=0.3, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, seed=seed), 16000)
    return path


def csv_rows(root, *rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "vggsound.csv").write_text("".join(f"{y},{s},{label},{split}\n" for y, s, label, split in rows))


def layout(spec):
    return {s: [(c.id, c.labels, c.source.path) for c in v] for s, v in spec.clips.items()}


# VGGSound ---------------------------------------------------------------------------------------

def test_vggsound_one_file_named_by_the_video_is_not_shared_by_its_segments(tmp_path):
    """A video listed at two start times (one train, one test, other labels) and one file
    YTID.wav: it used to become both clips, the same features under two labels in both splits."""
    csv_rows(tmp_path, ("dupvideo001", 30, "dog", "train"), ("dupvideo001", 100, "cat", "test"),
             ("solovideo01", 40, "dog", "train"),
             ("bothvideo01", 10, "dog", "train"), ("bothvideo01", 50, "cat", "test"))
    a = tmp_path / "audio"
    wav(a / "dupvideo001.wav")
    wav(a / "solovideo01.wav", seed=1)  # listed once: its file may be named by the id alone
    wav(a / "bothvideo01_000010.wav", seed=2)  # a segment's own file, beside a bare one
    wav(a / "bothvideo01.wav", seed=3)
    spec = prepare("vggsound", tmp_path)
    assert layout(spec) == {
        "train": [("solovideo01_000040", ("dog",), str(a / "solovideo01.wav")),
                  ("bothvideo01_000010", ("dog",), str(a / "bothvideo01_000010.wav"))],
        "test": []}
    assert spec.missing == {"train": ["dupvideo001_000030"], "test": ["dupvideo001_000100", "bothvideo01_000050"]}
    note = next(n for n in spec.notes if "YouTube id alone" in n)
    assert note.startswith("3 row(s) of vggsound.csv were left out (counted as missing)")
    assert (f"dupvideo001: dupvideo001_000030 (train, 'dog'), dupvideo001_000100 (test, 'cat') -> "
            f"{a / 'dupvideo001.wav'}; bothvideo01: bothvideo01_000050 (test, 'cat') -> "
            f"{a / 'bothvideo01.wav'}") in note
    assert note.endswith("name each segment's file YTID_START.ext (e.g. dupvideo001_000030.wav) and build again (into a new --out where a store was built already: its clip lists change)")


def test_vggsound_mp4_downloads_are_named_in_the_error(tmp_path):
    """The Hugging Face / official layout, YTID_000030.mp4: libsndfile decodes none of them."""
    rows = [("vid00000001", 30, "dog", "train"), ("vid00000002", 0, "cat", "train"), ("vid00000003", 5, "dog", "test")]
    csv_rows(tmp_path, *rows)
    for ytid, start, _, _ in rows:
        (tmp_path / "video" / f"{ytid}_{start:06d}.mp4").parent.mkdir(exist_ok=True)
        (tmp_path / "video" / f"{ytid}_{start:06d}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ValueError) as err:
        prepare("vggsound", tmp_path)
    message = str(err.value)
    assert "none of the 3 clips of vggsound.csv has its audio below it" in message
    assert "found no audio file" in message
    assert message.endswith(f"3 files under {tmp_path} in formats c2f cannot decode were left out (3 .mp4); convert "
                            "them to flac or wav (e.g. `ffmpeg -i clip.m4a -ac 1 -ar 16000 clip.flac`) and build again (into a new --out where a store was built already: its clip lists change)")


def test_vggsound_start_end_namings(tmp_path):
    """YTID_STARTms_ENDms (AudioSet's) and YTID_START6_END6 (in s), the end 10 s after the start."""
    csv_rows(tmp_path, ("msvideo0001", 30, "dog", "train"), ("secvideo001", 30, "cat", "train"),
             ("zerovideo01", 0, "dog", "train"), ("endvideo001", 30, "cat", "train"))
    a = tmp_path / "a"
    wav(a / "msvideo0001_30000_40000.wav")
    wav(a / "secvideo001_000030_000040.flac", seed=1)
    wav(a / "zerovideo01_0_10000.wav", seed=2)
    wav(a / "endvideo001_000030_000045.wav", seed=3)  # not a 10-s segment of this row's
    spec = prepare("vggsound", tmp_path)
    assert layout(spec)["train"] == [
        ("msvideo0001_000030", ("dog",), str(a / "msvideo0001_30000_40000.wav")),
        ("secvideo001_000030", ("cat",), str(a / "secvideo001_000030_000040.flac")),
        ("zerovideo01_000000", ("dog",), str(a / "zerovideo01_0_10000.wav"))]
    assert spec.missing == {"train": ["endvideo001_000030"]}


def test_vggsound_nothing_found_names_what_is_there(tmp_path):
    csv_rows(tmp_path, ("vid00000001", 30, "dog", "train"), ("vid00000002", 0, "cat", "test"))
    for name in ("clip_a", "clip_b", "vid00000001-30"):
        wav(tmp_path / "a" / f"{name}.wav")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path}: none of the 2 clips of vggsound.csv has its audio below it; expected files named "
            "YTID_000030.ext, YTID_30.ext, YTID_30000_40000.ext (start and end in ms), YTID_000030_000040.ext (in s) "
            "or YTID.ext, .ext one of wav,flac,ogg,mp3,opus,aiff,aif (e.g. vid00000001_000030.wav); found 3 audio "
            "file(s), none named so: clip_a, clip_b, vid00000001-30")):
        prepare("vggsound", tmp_path)


def test_vggsound_classes_without_a_training_clip_are_named(tmp_path):
    csv_rows(tmp_path, ("vid00000001", 30, "dog", "train"), ("vid00000002", 0, "cat", "train"),
             ("vid00000003", 0, "cat", "test"), ("vid00000004", 0, "owl", "test"))
    for k, ytid in enumerate(("vid00000001", "vid00000003", "vid00000004")):  # the training cat is not downloaded
        wav(tmp_path / "a" / f"{ytid}_{0 if k else 30:06d}.wav", seed=k)
    spec = prepare("vggsound", tmp_path)
    assert spec.vocabulary.names == ("cat", "dog", "owl")
    assert spec.notes == [("2 of 3 classes have no clip in the training split 'train', so a model cannot learn "
                           "them: cat, owl")]


# VoxCeleb ---------------------------------------------------------------------------------------

def iden_split(root, *lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / "iden_split.txt").write_text("".join(f"{s} {rel}\n" for s, rel in lines))


def test_voxceleb_any_audio_extension(tmp_path):
    """A FLAC-converted copy (wav/id10001/1zcIwhmdeo4/00001.flac) is found under iden_split.txt's .wav names."""
    iden_split(tmp_path, (1, "id10001/1zcIwhmdeo4/00001.wav"), (1, "id10001/1zcIwhmdeo4/00002.wav"),
               (3, "id10002/vidB/00001.wav"))
    w = tmp_path / "wav"
    wav(w / "id10001" / "1zcIwhmdeo4" / "00001.flac")
    wav(w / "id10001" / "1zcIwhmdeo4" / "00002.wav", seed=1)
    wav(w / "id10002" / "vidB" / "00001.ogg", seed=2)
    spec = prepare("voxceleb", tmp_path)
    assert layout(spec) == {
        "train": [("id10001/1zcIwhmdeo4/00001", ("id10001",), str(w / "id10001" / "1zcIwhmdeo4" / "00001.flac")),
                  ("id10001/1zcIwhmdeo4/00002", ("id10001",), str(w / "id10001" / "1zcIwhmdeo4" / "00002.wav"))],
        "val": [],
        "test": [("id10002/vidB/00001", ("id10002",), str(w / "id10002" / "vidB" / "00001.ogg"))]}
    assert spec.missing == {}
    wav(w / "id10001" / "1zcIwhmdeo4" / "00001.wav")  # the original beside its FLAC copy: which one?
    with pytest.raises(ValueError, match=re.escape(
            f"1 duplicate clip ids: 'id10001/1zcIwhmdeo4/00001' ({w / 'id10001' / '1zcIwhmdeo4' / '00001.flac'} and "
            f"{w / 'id10001' / '1zcIwhmdeo4' / '00001.wav'})")):
        prepare("voxceleb", tmp_path)


def test_voxceleb_one_of_its_two_downloads(tmp_path):
    """--root at vox1_dev_wav with iden_split.txt beside its wav/: the 40 test speakers (two here)
    have no audio at all; a speaker with only evaluation clips on disk cannot be learnt either."""
    iden_split(tmp_path, (1, "id10001/v/00001.wav"), (3, "id10001/v/00002.wav"),
               (1, "id10002/v/00001.wav"), (3, "id10002/v/00002.wav"),
               (1, "id10270/v/00001.wav"), (2, "id10270/v/00002.wav"), (3, "id10270/v/00003.wav"),
               (1, "id10309/v/00001.wav"))
    w = tmp_path / "wav"
    wav(w / "id10001" / "v" / "00001.wav")
    wav(w / "id10001" / "v" / "00002.wav", seed=1)
    wav(w / "id10002" / "v" / "00002.wav", seed=2)  # its training utterance not downloaded
    spec = prepare("voxceleb", tmp_path)
    assert spec.vocabulary.names == ("id10001", "id10002", "id10270", "id10309")
    assert spec.missing == {"train": ["id10002/v/00001", "id10270/v/00001", "id10309/v/00001"],
                            "val": ["id10270/v/00002"], "test": ["id10270/v/00003"]}
    assert spec.notes == [(
        f"2 of 4 speakers have no audio at all in {w} (id10270, id10309: the speakers of the vox1_test_wav "
        "download), though iden_split.txt lists 4 utterances of theirs: VoxCeleb1 comes as two downloads, "
        "vox1_dev_wav (1,211 speakers) and vox1_test_wav (40 speakers, id10270 .. id10309), and iden_split.txt uses "
        "both; put the idXXXXX folders of both wav/ folders into one wav/ under --root and build again (into a new "
        "--out where a store was built already: its clip lists change)"), (
        "3 of 4 classes have no clip in the training split 'train', so a model cannot learn them: id10002, id10270, "
        "id10309")]
    (w / "id10002" / "v" / "00002.wav").rename(w / "id10002" / "v" / "00001.wav")  # now a training clip
    assert prepare("voxceleb", tmp_path).notes[-1] == (
        "2 of 4 classes have no clip in the training split 'train', so a model cannot learn them: id10270, id10309")


def test_voxceleb_audio_not_where_expected(tmp_path):
    iden_split(tmp_path / "vox1", (1, "id10001/v/00001.wav"))
    wav(tmp_path / "vox1" / "vox1_dev_wav" / "wav" / "id10001" / "v" / "00001.wav")
    (tmp_path / "vox1" / "vox1_test_wav" / "wav").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'vox1' / 'wav'} not found: VoxCeleb1 needs its audio in ROOT/wav/idXXXXX/VIDEO/NNNNN.wav "
            "next to iden_split.txt; found vox1_dev_wav/wav, vox1_test_wav/wav: put the idXXXXX folders of both of "
            "VoxCeleb1's downloads (vox1_dev_wav, vox1_test_wav) into one wav/ folder")):
        prepare("voxceleb", tmp_path / "vox1")
    w = tmp_path / "vox1" / "wav"
    wav(w / "v" / "00001.wav")  # the speaker folder left out
    (w / "id10001" / "v").mkdir(parents=True)
    (w / "id10001" / "v" / "00001.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'vox1'}: none of the 1 utterances of iden_split.txt is in {w} (expected "
            f"{w}/idXXXXX/VIDEO/NNNNN.ext, .ext one of wav,flac,ogg,mp3,opus,aiff,aif); found 1 audio file(s), none "
            f"of them listed: v/00001. 1 file under {w} in formats c2f cannot decode was left out (1 .m4a)")):
        prepare("voxceleb", tmp_path / "vox1")


def test_voxceleb_short_utterances_are_not_problems_and_cut_ones_are_counted(voxceleb_root, tmp_path):
    """Utterances of 0.5, 1.5 and 2.5 s at 200 frames: 48 and 148 frames are stored whole (no
    "short" problem: their length is the data's), 2.5 s (248 frames) is cut to 200, counted."""
    res = build_store(BuildConfig(dataset="voxceleb", root=voxceleb_root, out=tmp_path / "vox",
                                  options={"target_frames": 200}))
    assert [(p["split"], p["id"], p["reason"]) for p in res.problems] == [("val", "id10003/gone/00009", "missing")]
    assert [(p["split"], p["id"], p["reason"]) for p in build_problems(tmp_path / "vox")] == [
        ("val", "id10003/gone/00009", "missing")]
    assert ("3 of the 9 clips built are 200 frames or longer and were stored as their first 200 frames, the rest of "
            "each left out (a larger --target-frames, into another --out, keeps more)") in res.notes
    assert StoreReader(tmp_path / "vox", "train").frames().tolist() == [48, 148] * 3


def test_short_clips_of_other_datasets_are_still_flagged(tmp_path):
    """The variable-length exemption is VoxCeleb's: a folder's 0.5-s clip at 200 frames stays "short"."""
    wav(tmp_path / "data" / "train" / "dog" / "a.wav", seconds=0.5)
    res = build_store(BuildConfig(dataset="folder", root=tmp_path / "data", out=tmp_path / "s",
                                  options={"target_frames": 200}))
    assert [(p["id"], p["reason"], p["detail"]) for p in res.problems] == [
        ("dog/a", "short", "dog/a: 48 of 200 frames, zero-padded")]
    assert not any("stored as their first" in n for n in res.notes)
