"""`c2ftrain cv`: one experiment per held-out fold on tiny ESC-50-shaped stores, in both layouts
of the [cv] table (fold splits of one store, as `c2fdata build --dataset esc50 --fold 0` makes;
one store per fold, the fold as `eval` and the others as `train`), the mean over folds, and a
cross-validation that crashes mid-fold resuming with its finished folds kept."""

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary
from c2ftrain.cli import main
from c2ftrain.cv import best_evaluation, fold_list, fold_recipe
from c2ftrain.recipe import RecipeError, load_recipe, recipe_from_dict

FOLDS, PER_FOLD, T = 3, 12, 64
CLASSES = Vocabulary.builtin("esc50").names  # ESC-50's 50 classes; the clips use the first 4


def clips_of(fold: int) -> dict:
    """PER_FOLD clips of one fold; class k shows stripes k+1 mel bins wide (learnable in steps)."""
    rng = np.random.default_rng(fold)
    feats = rng.normal(-6, 1, (PER_FOLD, T, 128)).astype(np.float32)
    labels = rng.integers(0, 4, PER_FOLD)
    for i, k in enumerate(labels):
        feats[i, :, (np.arange(128) // (k + 1)) % 2 == 0] += 4
    return dict(features=feats, frames=np.full(PER_FOLD, T), labels=[[CLASSES[k]] for k in labels],
                ids=[f"{fold}-{i}-A-{k}" for i, k in enumerate(labels)])  # ESC-50's {fold}-{clip}-{take}-{target}


def join(parts: list[dict]) -> dict:
    return {key: (np.concatenate([p[key] for p in parts]) if key in ("features", "frames")
                  else sum((list(p[key]) for p in parts), [])) for key in parts[0]}


@pytest.fixture(scope="module")
def fold_stores(tmp_path_factory):
    """stores/esc-fold{K}: what `c2fdata build --dataset esc50 --fold K` makes of the folds, and
    stores/esc-folds: what `--fold 0` makes (each fold its own split, statistics from fold1)."""
    root = tmp_path_factory.mktemp("esc")
    folds = {k: clips_of(k) for k in range(1, FOLDS + 1)}
    for k in folds:
        create_store_from_arrays(root / f"esc-fold{k}", dataset="esc50", vocabulary=Vocabulary.from_names(CLASSES),
                                 multi_label=False, block_clips=16,
                                 splits={"train": join([v for j, v in folds.items() if j != k]), "eval": folds[k]})
    create_store_from_arrays(root / "esc-folds", dataset="esc50", vocabulary=Vocabulary.from_names(CLASSES),
                             multi_label=False, block_clips=16, train_split="fold1",
                             splits={f"fold{k}": v for k, v in folds.items()})
    return root


# [cv] in its two layouts, and where fold K's store is
LAYOUTS = {"splits": ('store = "{root}/esc-folds"', 'split = "fold{{fold}}"', lambda root, k: root / "esc-folds"),
           "stores": ('store = "{root}/esc-fold1"', 'store = "{root}/esc-fold{{fold}}"',
                      lambda root, k: root / f"esc-fold{k}")}


def recipe_file(tmp_path, root, layout: str = "splits") -> str:
    store, cv, _ = LAYOUTS[layout]
    path = tmp_path / "esc_toy.toml"
    path.write_text(textwrap.dedent(f"""
        name = "esc_toy"
        {store.format(root=root)}
        seed = 1
        [model]
        preset = "tiny"
        embed_dim = 32
        depth = 1
        num_heads = 2
        [data]
        batch_size = 8
        backend = "torch"
        num_workers = 0
        freq_mask_bins = 8
        time_mask_frames = 16
        [optim]
        name = "adamw"
        lr = 3e-3
        [[phases]]
        method = "fshift"
        factor = 4
        epochs = 2
        [[phases]]
        method = "none"
        factor = 1
        epochs = 1
        [baseline]
        equal_flops = true
        [cv]
        folds = {FOLDS}
        {cv.format(root=root)}
    """))
    return str(path)


@pytest.mark.parametrize("layout", ["splits", "stores"])
def test_cv_reports_every_fold_and_the_mean_and_resumes_after_a_crash(fold_stores, tmp_path, monkeypatch, layout):
    import c2ftrain.experiment as experiment

    trained, read = [], {}
    real = experiment.PhaseTrainer.run

    def run(self, resume=False):  # count trainings; crash in fold 2's baseline (after its c2f run)
        fold = self.out.parent.name
        trained.append((fold, self.label))
        read.setdefault(fold, set()).add((self.reader.path, self.reader.split, self.eval_reader.split))
        if crash and fold == "fold-2" and self.label == "baseline":
            raise RuntimeError("killed")
        return real(self, resume)

    monkeypatch.setattr(experiment.PhaseTrainer, "run", run)
    out = tmp_path / "cv"
    crash = True
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, fold_stores, layout), "--out", str(out),
                                  "--device", "cpu"])
    assert isinstance(r.exception, RuntimeError), r.output
    assert (out / "fold-1" / "report.json").is_file() and (out / "fold-2" / "c2f" / "outcome.json").is_file()
    assert not (out / "report.json").exists()
    kept = {p: p.read_text() for p in (out / "fold-1").rglob("outcome.json")}
    assert len(kept) == 3

    crash, trained[:] = False, []
    r = CliRunner().invoke(main, ["cv", "--resume", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert trained == [("fold-2", "baseline"), ("fold-2", "equal_flops"),
                       ("fold-3", "c2f"), ("fold-3", "baseline"), ("fold-3", "equal_flops")]  # nothing twice
    assert all(p.read_text() == text for p, text in kept.items())
    assert "mean ± std" in r.output and "AST's" in r.output

    # what each fold's runs read: fold K held out, the other folds trained on
    store_of = LAYOUTS[layout][2]
    for k in (1, 2, 3):
        config = json.loads((out / f"fold-{k}" / "config.json").read_text())["recipe"]
        others = [f"fold{j}" for j in (1, 2, 3) if j != k]
        if layout == "splits":
            assert read[f"fold-{k}"] == {(str(store_of(fold_stores, k)), "+".join(others), f"fold{k}")}
            assert config["data"]["train_split"] == others and config["data"]["eval_split"] == f"fold{k}"
        else:
            assert read[f"fold-{k}"] == {(str(store_of(fold_stores, k)), "train", "eval")}
            assert config["data"]["train_split"] is None and config["data"]["eval_split"] == "eval"
        assert config["store"] == str(store_of(fold_stores, k))

    report = json.loads((out / "report.json").read_text())
    assert report["folds"] == [1, 2, 3] and report["metric_name"] == "accuracy"
    folds = {k: json.loads((out / f"fold-{k}" / "report.json").read_text()) for k in (1, 2, 3)}
    for run in ("c2f", "baseline", "equal_flops"):
        per_fold = [folds[k][run]["metric_mean"] for k in (1, 2, 3)]
        assert report["runs"][run]["per_fold"] == per_fold
        assert report["runs"][run]["mean"] == pytest.approx(sum(per_fold) / 3)
        curves = [folds[k][run]["eval_curve"] for k in (1, 2, 3)]
        assert report["runs"][run]["at_best_evaluation"] == best_evaluation(curves)
    assert [e["fold"] for e in report["per_fold"]] == [1, 2, 3]
    assert [e["store"] for e in report["per_fold"]] == [str(store_of(fold_stores, k)) for k in (1, 2, 3)]
    assert report["savings"]["flops"] == pytest.approx(sum(folds[k]["savings"]["flops"] for k in (1, 2, 3)) / 3)
    assert len(folds[1]["c2f"]["eval_curve"]) == 3  # one evaluation per epoch
    assert folds[1]["c2f"]["metric_mean"] == folds[1]["c2f"]["eval_curve"][-1]


def test_cv_resume_can_add_folds_and_not_drop_them(fold_stores, tmp_path, monkeypatch):
    from c2ftrain import experiment

    trained = []
    real = experiment.PhaseTrainer.run

    def run(self, resume=False):
        trained.append((self.out.parent.name, self.label))
        return real(self, resume)

    monkeypatch.setattr(experiment.PhaseTrainer, "run", run)
    out = tmp_path / "cv"
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, fold_stores), "--out", str(out), "--folds", "1",
                                  "--no-baseline", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    first = (out / "fold-1" / "c2f" / "outcome.json").read_text()
    trained[:] = []
    r = CliRunner().invoke(main, ["cv", "--resume", str(out), "--folds", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert trained == [("fold-2", "c2f"), ("fold-3", "c2f")]  # fold 1 read back, still without baselines
    assert (out / "fold-1" / "c2f" / "outcome.json").read_text() == first
    assert json.loads((out / "report.json").read_text())["folds"] == [1, 2, 3]
    assert json.loads((out / "cv.json").read_text())["folds"] == [1, 2, 3]
    r = CliRunner().invoke(main, ["cv", "--resume", str(out), "--folds", "2", "--device", "cpu"])
    assert r.exit_code == 2 and "not drop finished ones" in r.output
    r = CliRunner().invoke(main, ["cv", "--resume", str(out), "--seeds", "2", "--device", "cpu"])
    assert r.exit_code == 2 and "leave out --seeds" in r.output  # the other options stay refused


def test_best_evaluation_by_hand():
    curves = [[0.5, 0.7, 0.6], [0.6, 0.5, 0.9], [0.4, 0.6, 0.3, 0.99]]  # the longer one is cut to 3
    # means per evaluation: 0.5, 0.6, 0.6 -> the first of the best: the second evaluation
    assert best_evaluation(curves) == {"evaluation": 2, "mean": pytest.approx(0.6), "per_fold": [0.7, 0.5, 0.6]}


def test_cv_table_layouts():
    base = {"name": "x", "store": "s", "phases": [{"epochs": 1}]}

    def cv(**table):
        return recipe_from_dict({**base, "cv": table}).cv

    assert cv(folds=5, split="fold{fold}").store == "s"  # fold splits: the recipe's store ...
    assert cv(folds=5, split="fold{fold}", store="t").store_of(2) == "t"  # ... or one named
    assert cv(folds=5, store="s-{fold}").store_of(2) == "s-2"
    for table, match in [({"folds": 5, "store": "s"}, "with \\{fold\\} in exactly one of"),
                         ({"folds": 5}, "exactly one of"),
                         ({"folds": 5, "split": "f{fold}", "store": "s-{fold}"}, "exactly one of"),
                         ({"folds": 5, "split": "fold1", "store": "s-{fold}"}, "cv.split must name each fold"),
                         ({"folds": 1, "split": "f{fold}"}, "folds >= 2"),
                         ({"split": "f{fold}"}, "without cv.folds")]:
        with pytest.raises(RecipeError, match=match):
            cv(**table)
    with pytest.raises(RecipeError, match="cv.split is not set"):
        cv(folds=5, store="s-{fold}").split_of(1)


def test_shipped_esc50_cross_validates_fold_splits_of_one_store():
    esc = load_recipe("esc50")
    assert fold_list(esc) == [1, 2, 3, 4, 5] and esc.cv.split_of(3) == "fold3" and esc.cv.store_of(3) == esc.store
    assert (esc.data.train_split, esc.data.eval_split) == (("fold2", "fold3", "fold4", "fold5"), "fold1")  # `run`
    fold3 = fold_recipe(esc, 3)
    assert fold3.store == esc.store and fold3.name == "esc50-fold3"
    assert (fold3.data.train_split, fold3.data.eval_split) == (("fold1", "fold2", "fold4", "fold5"), "fold3")
    assert recipe_from_dict(esc.to_dict()) == esc  # what `cv --resume` reads back from cv.json
    stores = load_recipe("esc50", {"cv.split": "", "cv.store": "stores/esc50-fold{fold}",
                                   "data.train_split": "train", "data.eval_split": "eval"})
    assert fold_recipe(stores, 3).store == "stores/esc50-fold3" and fold_recipe(stores, 3).data.eval_split == "eval"
    assert recipe_from_dict(stores.to_dict()) == stores


def test_cv_errors(fold_stores, tmp_path):
    with pytest.raises(RecipeError, match="has no \\[cv\\] table"):
        fold_list(load_recipe("demo"))
    esc = load_recipe("esc50")
    with pytest.raises(RecipeError, match="--folds must be 1..5"):
        fold_list(esc, 6)
    r = CliRunner().invoke(main, ["cv", "esc50", "--set", f"cv.store=\"{tmp_path}/none-{{fold}}\"", "--set", "cv.split=\"\""])
    assert r.exit_code == 2 and "fold stores not found" in r.output and "--fold K" in r.output
    r = CliRunner().invoke(main, ["cv", "esc50", "--set", f"store=\"{tmp_path}/none\""])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"store {tmp_path}/none not found" in text and "--fold 0" in text
    # a store of fold splits that lacks one: fold 1 trains on all the others, so --folds 1 too
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, fold_stores), "--set", "cv.folds=4", "--folds", "1"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "has no split fold4" in text and "fold1, fold2, fold3" in text
    assert f"c2fdata build --dataset esc50 --root DIR --fold 0 --out {fold_stores}/esc-folds" in text
    # a store built with --fold K (train/eval) under the fold-splits layout
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, fold_stores), "--set", f"store=\"{fold_stores}/esc-fold1\""])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "has no split fold1, fold2, fold3" in text and "set cv.store" in text
    assert not any(tmp_path.glob("runs"))
    r = CliRunner().invoke(main, ["cv", "demo"])
    assert r.exit_code == 2 and "no [cv] table" in r.output


def test_cv_on_a_store_built_with_fold_0(esc50_root, tmp_path):
    """`c2fdata build --dataset esc50 --fold 0` then `c2ftrain cv`: fold K trains on the four other
    fold splits of that one store and is evaluated on its own."""
    from c2fdata.cli import main as c2fdata_main

    r = CliRunner().invoke(c2fdata_main, ["build", "--dataset", "esc50", "--root", str(esc50_root), "--fold", "0",
                                          "--target-frames", "64", "--out", str(tmp_path / "esc-folds")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "cv"
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, tmp_path), "--set", "cv.folds=5", "--folds", "2",
                                  "--no-baseline", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for k in (1, 2):
        data = json.loads((out / f"fold-{k}" / "config.json").read_text())["recipe"]["data"]
        assert data["train_split"] == [f"fold{j}" for j in range(1, 6) if j != k] and data["eval_split"] == f"fold{k}"
    report = json.loads((out / "report.json").read_text())
    assert report["folds"] == [1, 2] and list(report["runs"]) == ["c2f"]
    assert [e["store"] for e in report["per_fold"]] == [str(tmp_path / "esc-folds")] * 2
