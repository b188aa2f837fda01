"""Pooling run directories (`c2ftrain report`): seeds trained in two directories give the report
one run of all the seeds gives; directories that are not comparable, repeated seeds, unfinished
and corrupt runs are refused with the directory or file named."""

import dataclasses
import json
import shutil

import pytest
from click.testing import CliRunner
from test_trainer import toy_recipe, toy_store  # noqa: F401  (fixture)

from c2ftrain.cli import main
from c2ftrain.experiment import run_experiment
from c2ftrain.pool import PoolError, pool
from c2ftrain.stats import ci95

# figures that depend on how fast the machine was, not on what was trained
TIMED = ("wall_s", "wall_s_mean", "data_loading_share")


def untimed(x):
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMED and k != "wall"}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


@pytest.fixture(scope="module")
def runs(toy_store, tmp_path_factory):  # noqa: F811
    """Seeds 3 and 4 in one directory, seed 5 in another, and 3, 4, 5 in one run (the reference)."""
    root = tmp_path_factory.mktemp("pool")
    recipe = toy_recipe(toy_store)
    run_experiment(recipe, root / "a", seeds=[3, 4], device="cpu")
    run_experiment(dataclasses.replace(recipe, seed=5), root / "b", device="cpu")  # one seed: flat layout
    reference = run_experiment(recipe, root / "all", seeds=[3, 4, 5], device="cpu")
    return root, reference


def test_two_directories_pool_to_the_report_of_one_run(runs):
    root, reference = runs
    pooled = pool([root / "b", root / "a"])  # order given does not matter: seeds ascending
    assert pooled.seeds == [3, 4, 5] and pooled.sources == {3: root / "a", 4: root / "a", 5: root / "b"}
    report = pooled.report()
    assert report["sources"] == {"3": str(root / "a"), "4": str(root / "a"), "5": str(root / "b")}
    assert untimed({k: v for k, v in report.items() if k != "sources"}) == untimed(reference)
    # the paired figures, recomputed here from the outcome files themselves
    metric = {(s, run): json.loads((root / "all" / f"seed-{s}" / run / "outcome.json").read_text())["metric"]
              for s in (3, 4, 5) for run in ("c2f", "baseline")}
    diffs = [metric[s, "c2f"] - metric[s, "baseline"] for s in (3, 4, 5)]
    paired = report["paired"]["c2f-baseline"]
    assert paired["per_seed"] == pytest.approx(diffs) and paired["ci95"] == pytest.approx(ci95(diffs))
    assert paired["median"] == pytest.approx(sorted(diffs)[1]) and paired["ahead"] == sum(d > 0 for d in diffs)
    assert paired["behind"] == sum(d < 0 for d in diffs)


def test_one_directory_gives_its_own_report_again(runs):
    root, _ = runs
    report = pool([root / "a"]).report()
    assert report.pop("sources") == {"3": str(root / "a"), "4": str(root / "a")}
    assert report == json.loads((root / "a" / "report.json").read_text())


def text(result) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cli_prints_and_writes_the_pooled_report(runs, tmp_path):
    root, _ = runs
    result = CliRunner().invoke(main, ["report", str(root / "a"), str(root / "b"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "seeds [3, 4, 5] from 2 directories" in text(result) and "3 seeds, median" in text(result)
    written = json.loads((tmp_path / "p" / "report.json").read_text())
    assert written["seeds"] == [3, 4, 5] and (tmp_path / "p" / "report.png").stat().st_size > 10_000
    as_json = CliRunner().invoke(main, ["report", str(root / "a"), str(root / "b"), "--json"])
    assert untimed(json.loads(as_json.output)) == untimed(written)


def copy(root, name, to):
    shutil.copytree(root / name, to)
    return to


def edit_config(run_dir, change):
    path = run_dir / "config.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def test_a_different_recipe_is_refused_with_the_keys_named(runs, tmp_path):
    root, _ = runs
    other = copy(root, "b", tmp_path / "other")
    edit_config(other, lambda d: d["recipe"]["optim"].update(lr=1.0))
    with pytest.raises(PoolError, match=r"other is not the same experiment .*optim\.lr: .* vs 1\.0"):
        pool([root / "a", other])
    # name, description and seed are not compared
    renamed = copy(root, "b", tmp_path / "renamed")
    edit_config(renamed, lambda d: d["recipe"].update(name="x", description="y"))
    assert pool([root / "a", renamed]).seeds == [3, 4, 5]


def test_a_seed_is_pooled_once(runs, tmp_path):
    root, _ = runs
    with pytest.raises(PoolError, match=r"seed 3 has finished in both .*a and .*all"):
        pool([root / "a", root / "all"])
    with pytest.raises(PoolError, match=r"given twice"):
        pool([root / "a", root / "b", root / "a" / ".." / "a"])
    # a copy that has not finished is passed over where another directory has the seed finished
    part = copy(root, "all", tmp_path / "part")
    (part / "seed-5" / "equal_flops" / "outcome.json").unlink()
    pooled = pool([part, root / "b"])
    assert pooled.seeds == [3, 4, 5] and pooled.sources[5] == root / "b" and pooled.passed_over == {5: [part]}
    assert pooled.report()["passed_over"] == {"5": [str(part)]}
    result = CliRunner().invoke(main, ["report", str(part), str(root / "b")])
    assert result.exit_code == 0 and "seed 5: taken from" in text(result), result.output


def test_unfinished_seeds_stop_the_report_or_are_left_out_by_name(runs, tmp_path):
    root, _ = runs
    part = copy(root, "a", tmp_path / "part")
    (part / "seed-4" / "baseline" / "outcome.json").unlink()
    with pytest.raises(PoolError, match=r"seed 4 in .*part has not finished .*--resume .*--finished-only"):
        pool([part, root / "b"])
    pooled = pool([part, root / "b"], finished_only=True)
    assert pooled.seeds == [3, 5] and pooled.left_out == {4: part / "seed-4" / "baseline" / "outcome.json"}
    assert pooled.report()["left_out"] == {"4": str(part / "seed-4" / "baseline" / "outcome.json")}
    result = CliRunner().invoke(main, ["report", str(part), str(root / "b"), "--finished-only"])
    assert result.exit_code == 0 and "seed 4 left out: not finished" in text(result), result.output


def test_a_corrupt_outcome_is_never_pooled(runs, tmp_path):
    root, _ = runs
    bad = copy(root, "b", tmp_path / "bad")
    (bad / "c2f" / "outcome.json").write_text('{"label": "c2f", "metric": ')
    with pytest.raises(PoolError, match=r"bad/c2f/outcome.json is not a valid outcome"):
        pool([root / "a", bad])
    result = CliRunner().invoke(main, ["report", str(root / "a"), str(bad)])
    assert result.exit_code == 2 and "is not a valid outcome" in text(result)


def test_runs_that_not_every_directory_has_are_left_out(runs, tmp_path):
    root, _ = runs
    solo = copy(root, "b", tmp_path / "solo")
    edit_config(solo, lambda d: d.update(baseline=False))  # as `run --no-baseline` records it
    pooled = pool([root / "a", solo])
    assert pooled.runs_left_out == {"baseline": [solo], "equal_flops": [solo]}
    report = pooled.report()
    assert "paired" not in report and "baseline" not in report
    assert report["runs_left_out"] == {"baseline": [str(solo)], "equal_flops": [str(solo)]}
    assert set(pooled.per_seed[0]) == {"c2f"}
    result = CliRunner().invoke(main, ["report", str(root / "a"), str(solo)])
    assert "baseline left out: not trained in" in text(result), result.output
    # a seed that lacks only a run left out anyway counts as finished
    part = copy(root, "a", tmp_path / "part")
    (part / "seed-4" / "baseline" / "outcome.json").unlink()
    assert pool([part, solo]).seeds == [3, 4, 5]


def test_directories_that_are_not_run_directories(tmp_path):
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "cv.json").write_text("{}")
    with pytest.raises(PoolError, match="cross-validation directory"):
        pool([tmp_path / "cv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="config.json not found: .*empty is not a directory written by"):
        pool([tmp_path / "empty"])
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "config.json not found" in text(result)
    (tmp_path / "empty" / "config.json").write_text("[]")
    with pytest.raises(PoolError, match="config.json cannot be read"):
        pool([tmp_path / "empty"])


def test_sweep_cells_and_overwriting_a_source_are_refused(runs, tmp_path):
    root, _ = runs
    cell = copy(root, "a", tmp_path / "cell")
    edit_config(cell, lambda d: d.update(shared_runs=str(tmp_path / "shared")))  # as a sweep writes it
    with pytest.raises(PoolError, match="is a cell of a sweep"):
        pool([cell])
    (tmp_path / "sw" / "cells").mkdir(parents=True)
    (tmp_path / "sw" / "sweep.json").write_text("{}")
    old_cell = copy(root, "a", tmp_path / "sw" / "cells" / "x")  # a sweep from before shared_runs was written
    with pytest.raises(PoolError, match="is a cell of a sweep"):
        pool([old_cell])
    with pytest.raises(PoolError, match="is a sweep directory"):
        pool([tmp_path / "sw"])
    result = CliRunner().invoke(main, ["report", str(root / "a"), str(root / "b"), "--out", str(root / "b")])
    assert result.exit_code == 2 and "is one of the directories pooled" in text(result)


def test_the_store_is_compared_by_fingerprint_not_by_path(runs, toy_store, tmp_path):  # noqa: F811
    import zarr

    root, _ = runs
    recorded = json.loads((root / "a" / "config.json").read_text())["store_fingerprint"]
    assert recorded == zarr.open_group(str(toy_store), mode="r").attrs["fingerprint"]  # the store's own
    moved = copy(root, "b", tmp_path / "moved")  # the same store, mounted elsewhere on another machine
    edit_config(moved, lambda d: d["recipe"].update(store="/mnt/elsewhere/toy"))
    assert pool([root / "a", moved]).seeds == [3, 4, 5]
    rebuilt = copy(root, "b", tmp_path / "rebuilt")  # the same path, rebuilt from other clips
    edit_config(rebuilt, lambda d: d.update(store_fingerprint="f" * 64))
    with pytest.raises(PoolError, match=r"rebuilt is not the same experiment .*\(store fingerprint: "
                                        + recorded[:12] + r" .* vs ffffffffffff"):
        pool([root / "a", rebuilt])
    # directories written before fingerprints were recorded: the store's path decides, as it did
    old = copy(root, "b", tmp_path / "old")
    edit_config(old, lambda d: (d.pop("store_fingerprint"), d["recipe"].update(store="/mnt/elsewhere/toy")))
    with pytest.raises(PoolError, match=r"old is not the same experiment .*\(store: "):
        pool([root / "a", old])


def test_resume_refuses_a_store_rebuilt_since(runs, tmp_path):
    root, _ = runs
    same = copy(root, "b", tmp_path / "same")
    result = CliRunner().invoke(main, ["run", "--resume", str(same), "--device", "cpu"])
    assert result.exit_code == 0, result.output  # finished runs are kept: nothing to train
    rebuilt = copy(root, "b", tmp_path / "rebuilt")
    edit_config(rebuilt, lambda d: d.update(store_fingerprint="f" * 64))
    before = (rebuilt / "config.json").read_text()
    result = CliRunner().invoke(main, ["run", "--resume", str(rebuilt), "--device", "cpu"])
    assert result.exit_code != 0
    assert f"{rebuilt / 'config.json'} was written from another store than" in text(result)
    assert "recorded ffffffffffff" in text(result) and "Put the original store back at" in text(result)
    assert (rebuilt / "config.json").read_text() == before  # nothing rewritten


def test_resume_keeps_what_config_json_recorded(runs, tmp_path):
    """A directory written before fingerprints were recorded does not take on the store it is
    resumed with (its finished seeds may have read another); a recorded one is kept."""
    root, _ = runs
    old = copy(root, "b", tmp_path / "old")
    edit_config(old, lambda d: d.pop("store_fingerprint"))
    assert CliRunner().invoke(main, ["run", "--resume", str(old), "--device", "cpu"]).exit_code == 0
    assert json.loads((old / "config.json").read_text())["store_fingerprint"] is None
    unreadable = copy(root, "b", tmp_path / "unreadable")
    (unreadable / "config.json").write_text('{"recipe": ')  # cut short
    result = CliRunner().invoke(main, ["run", "--resume", str(unreadable), "--device", "cpu"])
    assert result.exit_code != 0 and "config.json" in text(result) and "Traceback" not in result.output
    cut = copy(root, "b", tmp_path / "cut")
    (cut / "baseline" / "outcome.json").write_text('{"label": ')  # cut short (written before writes were atomic)
    result = CliRunner().invoke(main, ["run", "--resume", str(cut), "--device", "cpu"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "baseline/outcome.json cannot be read" in text(result) and "delete it" in text(result)
    (cut / "baseline" / "outcome.json").unlink()  # as the message says: the run is taken up again
    result = CliRunner().invoke(main, ["run", "--resume", str(cut), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (json.loads((cut / "baseline" / "outcome.json").read_text())["metric"]
            == json.loads((root / "b" / "baseline" / "outcome.json").read_text())["metric"])


def test_a_finished_shared_run_from_a_rebuilt_store_is_not_reused(runs, toy_store):  # noqa: F811
    """A finished run records its store's fingerprint in outcome.json; reusing it (a sweep's shared
    baseline) from another store is refused with the file named."""
    import dataclasses as dc

    from c2ftrain.distributed import Dist
    from c2ftrain.experiment import _one_run
    from c2ftrain.trainer import StoreChangedError

    root, _ = runs
    done = root / "b" / "baseline" / "outcome.json"
    recorded = json.loads(done.read_text())["store_fingerprint"]
    assert recorded == json.loads((root / "b" / "config.json").read_text())["store_fingerprint"]
    recipe = dc.replace(toy_recipe(toy_store), seed=5)
    again = _one_run(recipe, recipe.baseline_phases, done.parent, "baseline", Dist(), "cpu", True, None, recorded)
    assert again.metric == json.loads(done.read_text())["metric"]
    with pytest.raises(StoreChangedError, match=r"outcome\.json was written from another store .* has fingerprint "
                                                 r"ffffffffffff, and outcome\.json recorded " + recorded[:12]):
        _one_run(recipe, recipe.baseline_phases, done.parent, "baseline", Dist(), "cpu", True, None, "f" * 64)
    with pytest.raises(StoreChangedError, match=r"the store has no fingerprint"):  # an old store: not the recorded one
        _one_run(recipe, recipe.baseline_phases, done.parent, "baseline", Dist(), "cpu", True, None, None)


def test_an_unfinished_run_is_not_taken_up_on_a_rebuilt_store(runs, toy_store, tmp_path):  # noqa: F811
    """A checkpoint records its store's fingerprint: a run cut short (a sweep's shared baseline,
    which no run directory of its own guards) is refused against another store, not continued."""
    import dataclasses as dc

    import torch

    from c2ftrain.checkpoint import save_checkpoint
    from c2ftrain.distributed import Dist
    from c2ftrain.experiment import _one_run
    from c2ftrain.trainer import StoreChangedError

    root, _ = runs
    recipe = dc.replace(toy_recipe(toy_store), seed=5)
    cut = copy(root, "b", tmp_path / "cut") / "baseline"
    (cut / "outcome.json").unlink()  # not finished: the run is taken up from its checkpoint
    ckpt = cut / "checkpoints" / "last.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["store_fingerprint"] == json.loads((root / "b" / "config.json").read_text())["store_fingerprint"]
    save_checkpoint(ckpt, {**saved, "store_fingerprint": "f" * 64})  # as if trained on a store since rebuilt
    with pytest.raises(StoreChangedError, match=r"last\.pt was written from another store .* last\.pt recorded "
                                                 r"ffffffffffff"):
        _one_run(recipe, recipe.baseline_phases, cut, "baseline", Dist(), "cpu", True, None, saved["store_fingerprint"])
    assert not (cut / "outcome.json").exists()
    save_checkpoint(ckpt, {k: v for k, v in saved.items() if k != "store_fingerprint"})  # written before fingerprints
    again = _one_run(recipe, recipe.baseline_phases, cut, "baseline", Dist(), "cpu", True, None, None)
    assert again.metric == json.loads((root / "b" / "baseline" / "outcome.json").read_text())["metric"]


def test_other_final_evaluations_are_summed_up_over_seeds():
    """The weight average's and the extra splits' headline metric, per seed, mean and spread:
    AST's balanced-AudioSet figure is the averaged model's."""
    from types import SimpleNamespace

    from c2ftrain.report import other_evaluations

    runs = [SimpleNamespace(metric_name="mAP", metrics={"mAP": 0.5, "averaged/mAP": a, "averaged/epochs": 6,
                                                        "eval_seen/mAP": e, "eval_seen/AUC": 0.9})
            for a, e in ((0.60, 0.40), (0.70, 0.50))]
    runs.append(SimpleNamespace(metric_name="mAP", metrics={"mAP": 0.5, "averaged/mAP": 0.65}))  # no extra split
    got = other_evaluations(runs)
    assert list(got) == ["averaged/mAP"]  # only what every seed has; the headline metric only
    assert got["averaged/mAP"]["per_seed"] == [0.60, 0.70, 0.65]
    assert got["averaged/mAP"]["mean"] == pytest.approx(0.65) and got["averaged/mAP"]["std"] == pytest.approx(0.05)
