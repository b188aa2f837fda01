"""Each dataset adapter on small fixture datasets in the real formats, missing clips included."""

import json
import re

import numpy as np
import pytest

from c2fdata.build import BuildConfig, build_store
from c2fdata.datasets import NEEDS_ROOT, prepare
from c2fdata.datasets.audioset import read_segments_csv
from c2fdata.reader import StoreReader
from c2fdata.vocab import Vocabulary
from conftest import FORMATS


def test_builtin_audioset_vocabulary():
    v = Vocabulary.builtin("audioset")
    assert len(v) == 527
    assert v.index("/m/09x0r") == 0 and v.names[0] == "Speech"
    assert v.index("Speech") == 0


def test_segments_csv_parsing():
    rows = read_segments_csv(FORMATS / "balanced_train_segments_sample.csv")
    assert rows[0] == ("--PJHxphWEs", 30.0, 40.0, ["/m/09x0r", "/t/dd00088"])
    assert all(len(r[3]) >= 1 for r in rows)


def test_audioset_csv_namings_and_missing(audioset_root):
    spec = prepare("audioset", audioset_root)
    rows = read_segments_csv(audioset_root / "balanced_train_segments.csv")
    assert spec.multi_label and len(spec.vocabulary) == 527 and spec.target_frames == 1024
    assert len(spec.clips["balanced_train"]) == len(rows) - 2  # three namings all found
    assert spec.missing["balanced_train"] == [f"{y}_{s:.3f}" for y, s, _, _ in rows[-2:]]
    assert spec.clips["eval"] == [] and len(spec.missing["eval"]) == 1
    assert spec.train_split == "balanced_train"


def test_audioset_ast_json(audioset_root):
    entries = json.loads((FORMATS / "ast_data_json_sample.json").read_text())["data"]
    # point the first entry at a clip we have; the others stay missing (absolute paths elsewhere)
    have = sorted((audioset_root / "audio" / "balanced").iterdir())[0]
    entries[0]["wav"] = str(have)
    (audioset_root / "my_eval.json").write_text(json.dumps({"data": entries}))
    spec = prepare("audioset", audioset_root)
    assert [c.id for c in spec.clips["my_eval"]] == [have.stem]
    assert spec.clips["my_eval"][0].labels == tuple(entries[0]["labels"].split(","))
    assert len(spec.missing["my_eval"]) == len(entries) - 1


def test_audioset_build_multi_hot(audioset_root, tmp_path):
    res = build_store(BuildConfig(dataset="audioset", root=audioset_root, out=tmp_path / "as", workers=2))
    assert res.finalized and res.failed == 0
    r = StoreReader(tmp_path / "as", "balanced_train")
    spec = prepare("audioset", audioset_root)
    v = Vocabulary.builtin("audioset")
    for i, clip in enumerate(spec.clips["balanced_train"]):
        want = np.zeros(527, np.float32)
        want[[v.index(m) for m in clip.labels]] = 1
        np.testing.assert_array_equal(r.labels()[i], want)
        assert r.ids[i] == clip.id
    assert sum(p["reason"] == "missing" for p in res.problems) == 3
    assert r[0][0].shape == (1024, 128) and r[0][1] == 198  # 2-s clips, zero-padded


def test_vggsound(vggsound_root, tmp_path):
    spec = prepare("vggsound", vggsound_root)
    assert not spec.multi_label and set(spec.clips) == {"train", "test"}
    assert spec.vocabulary.names == tuple(sorted(spec.vocabulary.names))
    assert "female speech, woman speaking" in spec.vocabulary  # the quoted label with a comma
    assert sum(map(len, spec.missing.values())) == 1
    res = build_store(BuildConfig(dataset="vggsound", root=vggsound_root, out=tmp_path / "v"))
    r = StoreReader(tmp_path / "v", "train")
    assert res.finalized and len(r) == len(spec.clips["train"])
    assert r.vocabulary.names[int(r.labels()[0])] == spec.clips["train"][0].labels[0]


@pytest.mark.parametrize("fold", [1, 3])
def test_esc50_folds(esc50_root, fold):
    spec = prepare("esc50", esc50_root, fold=fold)
    assert len(spec.vocabulary) == 50 and spec.vocabulary.names[0] == "dog"
    assert spec.target_frames == 512
    rows = (esc50_root / "meta" / "esc50.csv").read_text().splitlines()[1:]
    in_fold = [r.split(",")[0][:-4] for r in rows if r.split(",")[1] == str(fold)]
    assert [c.id for c in spec.clips["eval"]] == in_fold
    assert len(spec.clips["train"]) + len(in_fold) == len(rows)


def test_esc50_bad_fold(esc50_root):
    with pytest.raises(ValueError, match="--fold must be 1..5"):
        prepare("esc50", esc50_root, fold=6)


def test_voxceleb_variable_length(voxceleb_root, tmp_path):
    spec = prepare("voxceleb", voxceleb_root, target_frames=200)
    assert len(spec.vocabulary) == 3 and set(spec.clips) == {"train", "val", "test"}
    assert spec.missing == {"val": ["id10003/gone/00009"]}
    build_store(BuildConfig(dataset="voxceleb", root=voxceleb_root, out=tmp_path / "vox",
                            options={"target_frames": 200}))
    r = StoreReader(tmp_path / "vox", "train")
    # 0.5 s -> 48 frames, 1.5 s -> 148, both stored with true counts; 2.5 s would be cropped
    assert sorted(set(r.frames().tolist())) == [48, 148]
    assert StoreReader(tmp_path / "vox", "test").frames().tolist() == [200] * 3  # 2.5 s cropped


def test_folder(folder_root, tmp_path):
    spec = prepare("folder", folder_root)
    assert spec.vocabulary.names == ("dog_barking", "playing_bass", "tapping_guitar")
    assert {s: len(c) for s, c in spec.clips.items()} == {"train": 6, "test": 6}
    build_store(BuildConfig(dataset="folder", root=folder_root, out=tmp_path / "f", options={"target_frames": 128}))
    assert len(StoreReader(tmp_path / "f", "test")) == 6


def test_root_required_and_unknown_dataset():
    with pytest.raises(ValueError, match="needs --root"):
        prepare("audioset", None)
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("librispeech", "/x")


def test_no_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no AudioSet metadata"):
        prepare("audioset", tmp_path)
    with pytest.raises(ValueError, match="vggsound.csv"):
        prepare("vggsound", tmp_path)


@pytest.mark.parametrize("name", sorted(NEEDS_ROOT))
def test_root_that_does_not_exist_is_named(name, tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(f"--root {root}: no such folder") + f".*{name}"):
        prepare(name, root)
