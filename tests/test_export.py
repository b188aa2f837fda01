"""`c2fdata export-audio`: a split's clips as wav files with their labels, the samples the build
reads; an unreadable clip is listed in problems.csv and the others are written."""

import csv
import hashlib

import numpy as np
import soundfile as sf
from click.testing import CliRunner
from conftest import tone

from c2fdata.cli import main
from c2fdata.datasets import prepare


def test_the_embedded_dataset_is_written_as_the_build_reads_it(tmp_path):
    r = CliRunner().invoke(main, ["export-audio", "--dataset", "instruments", "--split", "eval_seen", "--limit", "3",
                                  "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "out" / "labels.csv").read_text().splitlines()))
    clips = prepare("instruments", None).clips["eval_seen"][:3]
    assert [(row["id"], row["labels"]) for row in rows] == [(c.id, c.labels[0]) for c in clips]
    for row, clip in zip(rows, clips):
        audio, sr = sf.read(tmp_path / "out" / row["file"], dtype="float32")
        want, want_sr = clip.source()
        assert sr == want_sr and row["file"] == clip.id.replace("/", "_") + ".wav"
        np.testing.assert_array_equal(audio, want)
    assert not (tmp_path / "out" / "problems.csv").exists()


def test_a_bad_clip_is_listed_and_the_others_written(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        sf.write(tmp_path / "data" / "train" / name / "0.wav", tone(0.5), 16000)
    (tmp_path / "data" / "train" / "b" / "1.wav").write_text("not audio")
    (tmp_path / "data" / "train" / "a_b").mkdir()  # clips a/b_0 and a_b/0: both a_b_0 as file names
    sf.write(tmp_path / "data" / "train" / "a" / "b_0.wav", tone(0.4, freq=300), 16000)
    sf.write(tmp_path / "data" / "train" / "a_b" / "0.wav", tone(0.4, freq=900), 16000)
    r = CliRunner().invoke(main, ["export-audio", "--dataset", "folder", "--root", str(tmp_path / "data"),
                                  "--split", "train", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "wrote 4 clips" in r.output and "1 clip(s) not written (unreadable, or what a build skips)" in r.output
    other = f"a_b_0-{hashlib.sha1(b'a_b/0').hexdigest()[:8]}.wav"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == sorted(["a_0.wav", "a_b_0.wav", other, "b_0.wav"])
    rows = {row["file"]: row for row in csv.DictReader((tmp_path / "out" / "labels.csv").read_text().splitlines())}
    assert (rows["a_b_0.wav"]["id"], rows[other]["id"], rows[other]["labels"]) == ("a/b_0", "a_b/0", "a_b")
    np.testing.assert_array_equal(sf.read(tmp_path / "out" / other, dtype="float32")[0],
                                  sf.read(tmp_path / "data" / "train" / "a_b" / "0.wav", dtype="float32")[0])
    [problem] = list(csv.DictReader((tmp_path / "out" / "problems.csv").read_text().splitlines()))
    assert problem["id"] == "b/1" and problem["reason"].startswith("unreadable: ")
    r = CliRunner().invoke(main, ["export-audio", "--dataset", "folder", "--root", str(tmp_path / "data"),
                                  "--split", "valid", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no split 'valid'; its splits are ['train']" in r.output


def test_what_a_build_skips_is_listed_not_written(tmp_path):
    """A clip the build would skip (NaN samples, shorter than one 25 ms window) is not written as
    if it were usable: it goes to problems.csv with the build's reason."""
    d = tmp_path / "data" / "train" / "a"
    d.mkdir(parents=True)
    sf.write(d / "ok.wav", tone(0.5), 16000)
    nan = tone(0.5)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "blip.wav", tone(0.01), 16000)  # 160 samples: less than one 400-sample window
    r = CliRunner().invoke(main, ["export-audio", "--dataset", "folder", "--root", str(tmp_path / "data"),
                                  "--split", "train", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["a_ok.wav"]
    problems = {row["id"]: row["reason"] for row in csv.DictReader((tmp_path / "out" / "problems.csv").open())}
    assert sorted(problems) == ["a/blip", "a/nan"]
    assert problems["a/nan"].startswith("non-finite: ") and problems["a/blip"].startswith("too-short: ")


def test_exported_splits_make_a_manifest_that_builds(tmp_path):
    """Two splits exported into one folder: its manifest.csv lists both, and builds as a store
    holding those clips with those labels."""
    from c2fdata.build import BuildConfig, build_store
    from c2fdata.reader import StoreReader

    out = tmp_path / "out"
    for split in ("train", "eval"):
        r = CliRunner().invoke(main, ["export-audio", "--dataset", "instruments", "--split", split, "--limit", "4",
                                      "--out", str(out)])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export-audio", "--dataset", "instruments", "--split", "eval", "--limit", "2",
                                  "--out", str(out)])  # the split exported again: its rows replaced, not added
    rows = list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))
    assert [r["split"] for r in rows] == ["train"] * 4 + ["eval"] * 2
    build_store(BuildConfig(dataset="manifest", root=out, out=tmp_path / "s", options={"target_frames": 256}))
    from c2fdata.datasets.base import limited

    spec = {s: prepare("instruments", None).clips[s] for s in ("train", "eval")}
    for split, n in (("train", 4), ("eval", 2)):
        reader = StoreReader(tmp_path / "s", split)
        want = {c.id: c.labels[0] for c in limited(spec[split], n)}  # what --limit exported
        assert dict(zip(reader.ids, (reader.vocabulary.names[int(k)] for k in reader.labels()))) == want
