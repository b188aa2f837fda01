"""The ESC-50 adapter's two layouts of one dataset: `--fold 0` stores every fold as its own split
(fold1..fold5, each clip once), `--fold K` holds fold K out as `eval` (unchanged), both checked
against the metadata csv read here on its own."""

import csv
from collections import defaultdict

import pytest
from click.testing import CliRunner

from c2fdata.cli import main
from c2fdata.datasets import prepare
from c2fdata.reader import StoreReader


def folds_of(root) -> dict[int, list[tuple[str, str]]]:
    """fold -> [(clip id, category)] in csv order, straight from meta/esc50.csv."""
    out = defaultdict(list)
    with open(root / "meta" / "esc50.csv", newline="") as f:
        for r in csv.DictReader(f):
            out[int(r["fold"])].append((r["filename"].removesuffix(".wav"), r["category"]))
    return dict(out)


def test_fold_0_builds_one_store_with_every_fold_as_its_own_split(esc50_root, tmp_path):
    out = tmp_path / "esc50"
    r = CliRunner().invoke(main, ["build", "--dataset", "esc50", "--root", str(esc50_root), "--fold", "0",
                                  "--target-frames", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    expected = folds_of(esc50_root)
    assert sorted(expected) == [1, 2, 3, 4, 5]
    stored = []
    for k, clips in expected.items():
        reader = StoreReader(out, f"fold{k}")
        assert reader.ids == [c for c, _ in clips]
        assert [reader.vocabulary.names[int(i)] for i in reader.labels()] == [cat for _, cat in clips]
        stored += reader.ids
    assert sorted(stored) == sorted(c for clips in expected.values() for c, _ in clips)  # each clip once
    attrs = StoreReader(out, "fold1").attrs
    assert sorted(attrs["splits"]) == [f"fold{k}" for k in range(1, 6)]
    assert attrs["train_split"] == "fold1" and attrs["stats"]["split"] == "fold1"


def test_fold_0_reports_a_missing_clip_under_its_fold(esc50_root):
    folds = folds_of(esc50_root)
    gone = folds[3][0][0]
    (esc50_root / "audio" / f"{gone}.wav").unlink()
    spec = prepare("esc50", esc50_root, fold=0)
    assert spec.missing == {"fold3": [f"{gone}.wav"]} and spec.train_split == "fold1"
    assert [c.id for c in spec.clips["fold3"]] == [c for c, _ in folds[3][1:]]
    assert all(c.split == s for s, clips in spec.clips.items() for c in clips)


def test_fold_k_holds_fold_k_out_as_before(esc50_root):
    spec = prepare("esc50", esc50_root, fold=2)
    folds = folds_of(esc50_root)
    assert list(spec.clips) == ["train", "eval"] and spec.train_split == "train" and spec.notes == ["eval = fold 2"]
    assert [c.id for c in spec.clips["eval"]] == [c for c, _ in folds[2]]
    assert sorted(c.id for c in spec.clips["train"]) == sorted(c for k in folds if k != 2 for c, _ in folds[k])


@pytest.mark.parametrize("fold", [-1, 6])
def test_bad_fold_names_both_layouts(esc50_root, fold):
    with pytest.raises(ValueError, match=r"--fold must be 1..5 .* or 0 \(every fold its own split"):
        prepare("esc50", esc50_root, fold=fold)


def test_a_missing_store_is_met_with_the_command_that_builds_it(esc50_root, tmp_path, monkeypatch):
    """The command a missing store's error gives, run as given (with the dataset's folder for
    DIR), builds the store the recipe reads: the esc50 recipe needs every fold as its own split."""
    import re

    from c2ftrain.cli import main as train

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(train, ["plan", "esc50", "--no-measure", "--set", "model.init=none"])
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.split())
    assert f"looked for at {tmp_path / 'stores' / 'esc50'}: a relative store is taken from the current" in said
    given = re.search(r"`(c2fdata build [^`]*)`", said).group(1)
    assert given == "c2fdata build --dataset esc50 --root DIR --fold 0"
    built = CliRunner().invoke(main, given.replace("DIR", str(esc50_root)).split()[1:])
    assert built.exit_code == 0, built.output
    r = CliRunner().invoke(train, ["plan", "esc50", "--no-measure", "--set", "model.init=none", "--json"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("store, command", [
    ("stores/audioset", "c2fdata build --dataset audioset --root DIR"),
    ("stores/instruments", "c2fdata build --dataset instruments"),
    ("/data/stores/instruments", "c2fdata build --dataset instruments --out /data/stores/instruments"),
    ("stores/esc50-fold3", "c2fdata build --dataset esc50 --root DIR --fold 3 --out stores/esc50-fold3"),
    ("s3://bucket/feats/vggsound-full/", "c2fdata build --dataset vggsound --root DIR --out s3://bucket/feats/vggsound-full/"),
    ("stores/my-birds", "c2fdata build --dataset DATASET --root DIR --out stores/my-birds"),
])
def test_the_build_command_read_off_a_stores_name(store, command):
    from c2fdata.datasets import build_command

    assert build_command(store) == command


def test_the_build_command_of_a_known_dataset_and_fold():
    """Cross-validation knows what it needs whatever the store is named: the dataset and fold."""
    from c2fdata.datasets import build_command

    assert build_command("/data/folds", "esc50", 0) == "c2fdata build --dataset esc50 --root DIR --fold 0 --out /data/folds"
    assert build_command("stores/esc50-foldK", "esc50", "K") == (
        "c2fdata build --dataset esc50 --root DIR --fold K --out stores/esc50-foldK")
