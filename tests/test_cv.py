"""`c2ftrain cv`: one experiment per held-out fold on tiny ESC-50-shaped stores (one store per
fold: the fold as `eval`, the others as `train`, ESC-50's classes), the mean over folds, and a
cross-validation that crashes mid-fold resuming with its finished folds kept."""

import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from c2fdata.store import create_store_from_arrays
from c2fdata.vocab import Vocabulary
from c2ftrain.cli import main
from c2ftrain.cv import best_evaluation, fold_list
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
    """stores/esc-fold{K}: what `c2fdata build --dataset esc50 --fold K` makes of the folds."""
    root = tmp_path_factory.mktemp("esc")
    folds = {k: clips_of(k) for k in range(1, FOLDS + 1)}
    for k in folds:
        create_store_from_arrays(root / f"esc-fold{k}", dataset="esc50", vocabulary=Vocabulary.from_names(CLASSES),
                                 multi_label=False, block_clips=16,
                                 splits={"train": join([v for j, v in folds.items() if j != k]), "eval": folds[k]})
    return root


def recipe_file(tmp_path, root) -> str:
    path = tmp_path / "esc_toy.toml"
    path.write_text(textwrap.dedent(f"""
        name = "esc_toy"
        store = "{root}/esc-fold1"
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
        store = "{root}/esc-fold{{fold}}"
    """))
    return str(path)


def test_cv_reports_every_fold_and_the_mean_and_resumes_after_a_crash(fold_stores, tmp_path, monkeypatch):
    import c2ftrain.experiment as experiment

    trained = []
    real = experiment.PhaseTrainer.run

    def run(self, resume=False):  # count trainings; crash in fold 2's baseline (after its c2f run)
        trained.append((self.out.parent.name, self.label))
        if crash and self.out.parent.name == "fold-2" and self.label == "baseline":
            raise RuntimeError("killed")
        return real(self, resume)

    monkeypatch.setattr(experiment.PhaseTrainer, "run", run)
    out = tmp_path / "cv"
    crash = True
    r = CliRunner().invoke(main, ["cv", recipe_file(tmp_path, fold_stores), "--out", str(out), "--device", "cpu"])
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
    assert [e["store"] for e in report["per_fold"]] == [str(fold_stores / f"esc-fold{k}") for k in (1, 2, 3)]
    assert report["savings"]["flops"] == pytest.approx(sum(folds[k]["savings"]["flops"] for k in (1, 2, 3)) / 3)
    assert len(folds[1]["c2f"]["eval_curve"]) == 3  # one evaluation per epoch
    assert folds[1]["c2f"]["metric_mean"] == folds[1]["c2f"]["eval_curve"][-1]


def test_best_evaluation_by_hand():
    curves = [[0.5, 0.7, 0.6], [0.6, 0.5, 0.9], [0.4, 0.6, 0.3, 0.99]]  # the longer one is cut to 3
    # means per evaluation: 0.5, 0.6, 0.6 -> the first of the best: evaluation 1
    assert best_evaluation(curves) == {"evaluation": 1, "mean": pytest.approx(0.6), "per_fold": [0.7, 0.5, 0.6]}


def test_cv_errors(fold_stores, tmp_path):
    with pytest.raises(RecipeError, match="has no \\[cv\\] table"):
        fold_list(load_recipe("demo"))
    esc = load_recipe("esc50")
    assert fold_list(esc) == [1, 2, 3, 4, 5] and esc.cv.store_of(3) == "stores/esc50-fold3"
    with pytest.raises(RecipeError, match="--folds must be 1..5"):
        fold_list(esc, 6)
    with pytest.raises(RecipeError, match="with \\{fold\\}"):
        recipe_from_dict({"name": "x", "store": "s", "phases": [{"epochs": 1}], "cv": {"folds": 5, "store": "s"}})
    r = CliRunner().invoke(main, ["cv", "esc50", "--set", f"cv.store=\"{tmp_path}/none-{{fold}}\""])
    assert r.exit_code == 2 and "fold stores not found" in r.output and "--fold K" in r.output
    assert not any(tmp_path.glob("runs"))
    r = CliRunner().invoke(main, ["cv", "demo"])
    assert r.exit_code == 2 and "no [cv] table" in r.output
