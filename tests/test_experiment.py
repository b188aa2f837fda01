"""Experiments over seeds (report.json's spread and paired deltas) and sweeps (shared baselines,
resumable), on the toy store of test_trainer."""

import dataclasses
import json

import pytest
from click.testing import CliRunner
from test_trainer import toy_recipe, toy_store  # noqa: F401  (fixture)

from c2ftrain.cli import main
from c2ftrain.experiment import run_experiment
from c2ftrain.stats import ci95
from c2ftrain.sweep import load_grid, run_sweep


def test_seeds_report_spread_and_paired_deltas(toy_store, tmp_path):  # noqa: F811
    recipe = toy_recipe(toy_store)
    report = run_experiment(recipe, tmp_path / "run", seeds=[3, 4], device="cpu")
    assert report["seeds"] == [3, 4]
    assert (tmp_path / "run" / "seed-3" / "c2f" / "outcome.json").is_file()
    assert (tmp_path / "run" / "seed-4" / "equal_flops" / "outcome.json").is_file()
    per_seed = {}
    for run in ("c2f", "baseline", "equal_flops"):
        r = report[run]
        per_seed[run] = [json.loads((tmp_path / "run" / f"seed-{s}" / run / "outcome.json").read_text())["metric"]
                         for s in (3, 4)]
        assert r["metric_per_seed"] == per_seed[run]
        assert r["metric_mean"] == pytest.approx(sum(per_seed[run]) / 2)
        assert r["metric"] == per_seed[run][0]  # the first seed's view under the plain keys
    for a, b in (("c2f", "baseline"), ("c2f", "equal_flops")):
        diffs = [x - y for x, y in zip(per_seed[a], per_seed[b])]
        paired = report["paired"][f"{a}-{b}"]
        assert paired["mean"] == pytest.approx(sum(diffs) / 2)
        assert paired["ci95"] == pytest.approx(ci95(diffs))
    assert 0 < report["savings"]["flops"] < 1
    assert json.loads((tmp_path / "run" / "report.json").read_text())["paired"] == report["paired"]
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000


def test_one_seed_keeps_the_flat_layout(toy_store, tmp_path):  # noqa: F811
    report = run_experiment(toy_recipe(toy_store), tmp_path / "run", baseline=False, device="cpu")
    assert report["seeds"] == [3] and (tmp_path / "run" / "c2f" / "outcome.json").is_file()
    assert "paired" not in report


def write_grid(path):
    path.write_text('[grid]\n"optim.lr_scope" = ["phase", "run"]\n'
                    '[[cells]]\nname = "kept-moments"\nset = { "phases.3.reset_optimizer" = false }\n')
    return path


def test_sweep_shares_baselines_and_resumes(toy_store, tmp_path):  # noqa: F811
    recipe_path = tmp_path / "toy.json"
    cells = load_grid(write_grid(tmp_path / "grid.toml"))
    assert [c.name for c in cells] == ["optim.lr_scope=phase", "optim.lr_scope=run", "kept-moments"]
    # the sweep loads its recipe by name; here it gets the toy recipe with the cell's overrides
    events = []
    base = toy_recipe(toy_store).to_dict()
    from c2ftrain import sweep as sweep_mod

    def fake_load(_name, overrides, origins=None):
        from c2ftrain.recipe import apply_override, recipe_from_dict

        d = json.loads(json.dumps(base))
        for k, v in overrides.items():
            apply_override(d, k, v, (origins or {}).get(k, "--set"))
        return recipe_from_dict(d)

    real = sweep_mod.load_recipe
    sweep_mod.load_recipe = fake_load
    try:
        summary = run_sweep(recipe_path, cells, tmp_path / "sw", 2, device="cpu", on_event=events.append)
        starts = [e for e in events if e["event"] == "start"]
        shared = sorted(p.name.split("-")[0] for p in (tmp_path / "sw" / "shared").iterdir())
        # baseline: one per seed for all cells; equal-FLOPs: the cells' c2f FLOPs are equal -> one per seed
        assert shared == ["baseline", "baseline", "equal_flops", "equal_flops"]
        assert sum(e["run"] == "c2f" for e in starts) == 3 * 2
        assert sum(e["run"] == "baseline" for e in starts) == 2
        again = []
        run_sweep(recipe_path, cells, tmp_path / "sw", 2, device="cpu", on_event=again.append)
        assert [e for e in again if e["event"] == "start"] == []  # all finished: nothing retrained
        # run again with another setting for every cell: its old coarse-to-fine runs would be taken
        # up beside baselines trained anew (their keys change); refused, naming the setting
        changed = []
        recorded = (tmp_path / "sw" / "sweep.json").read_text()
        with pytest.raises(ValueError, match=r"sw was swept with --set \{\}; this run gives \{'optim.lr': 1e-05\}"):
            run_sweep(recipe_path, cells, tmp_path / "sw", 2, device="cpu", on_event=changed.append,
                      base_overrides={"optim.lr": 1e-5})
        # one seed keeps its runs in cells/X/c2f, several in cells/X/seed-S/c2f: seed 0 would train again
        with pytest.raises(ValueError, match=r"sw was swept with --seeds 2; one seed keeps each run in"):
            run_sweep(recipe_path, cells, tmp_path / "sw", 1, device="cpu", on_event=changed.append)
        assert [e for e in changed if e["event"] == "start"] == []
        assert (tmp_path / "sw" / "sweep.json").read_text() == recorded  # a refused sweep records nothing
        # a cell the store cannot serve is refused before any cell trains
        from c2ftrain.sweep import Cell

        with pytest.raises(ValueError, match=r"cell 'C=64': phase 1 \(pool-avg C=64\)"):
            run_sweep(recipe_path, cells + [Cell("C=64", {"phases.1.factor": 64})], tmp_path / "sw3", 1,
                      device="cpu", on_event=changed.append)
        assert [e for e in changed if e["event"] == "start"] == [] and not (tmp_path / "sw3").exists()
        # --json: stdout is the summary alone (progress and run lines go to stderr)
        grid = tmp_path / "one.toml"
        grid.write_text('[[cells]]\nname = "one"\nset = { "optim.lr" = 2e-3 }\n')
        r = CliRunner().invoke(main, ["sweep", str(recipe_path), "--grid", str(grid), "--seeds", "1", "--json",
                                      "--out", str(tmp_path / "sw1")])
        assert r.exit_code == 0, r.output
        one = json.loads(r.stdout)
        assert [c["cell"] for c in one["cells"]] == ["one"] and len(one["cells"][0]["c2f"]["per_seed"]) == 1
        from rich.console import Console

        from c2ftrain.sweep import summary_table

        console = Console(width=250, record=True)
        console.print(summary_table(one))
        assert "(1 seed)" in console.export_text() and "[" not in console.export_text().split("(1 seed)")[0][-30:]
    finally:
        sweep_mod.load_recipe = real
    rows = {r["cell"]: r for r in summary["cells"]}
    assert set(rows) == {c.name for c in cells}
    for r in rows.values():
        assert len(r["c2f"]["per_seed"]) == 2 and {"c2f-baseline", "c2f-equal_flops"} <= set(r["paired"])
    # the baseline is shared, so its figures are identical across cells
    assert len({json.dumps(r["baseline"]) for r in rows.values()}) == 1
    assert json.loads((tmp_path / "sw" / "summary.json").read_text())["cells"][0]["cell"] == cells[0].name
    # a cell records where its baselines live (so that `c2ftrain report` knows it is not a plain run)
    from c2ftrain.sweep import cell_dir

    config = json.loads((tmp_path / "sw" / "cells" / cell_dir(cells[0].name) / "config.json").read_text())
    assert config["shared_runs"] == str(tmp_path / "sw" / "shared")


def test_grid_file_errors(tmp_path):
    from c2ftrain.recipe import RecipeError

    bad = tmp_path / "g.toml"
    bad.write_text('[grid]\n"optim.lr" = 3\n')
    with pytest.raises(RecipeError, match="non-empty list"):
        load_grid(bad)
    bad.write_text('[[cells]]\nname = "a"\n[[cells]]\nname = "a"\n')
    with pytest.raises(RecipeError, match="repeat"):
        load_grid(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_grid(tmp_path / "none.toml")
    bad.write_text('[[cells]]\nname = "a"\nset = "optim.lr=1"\n')
    with pytest.raises(RecipeError, match=r"\[\[cells\]\] 1: set must be a table"):
        load_grid(bad)


def test_long_cell_names_fit_a_file_name():
    from c2ftrain.sweep import cell_dir, cell_name

    phases = [{"method": "fshift", "factor": 4, "epochs": 4}, {"method": "fshift", "factor": 2, "epochs": 2},
              {"method": "none", "factor": 1, "epochs": 2}]
    names = [cell_name({"phases": phases, "optim.lr": lr, "optim.lr_scope": "run", "model.interpolation": "bicubic",
                        "data.freq_mask_bins": 24, "data.time_mask_frames": 48}) for lr in (1e-3, 2e-3)]
    assert all(len(n) > 255 for n in names)
    dirs = [cell_dir(n) for n in names]
    assert all(len(d) <= 255 for d in dirs) and dirs[0] != dirs[1]
    assert cell_dir("optim.lr=0.001") == "optim.lr=0.001"  # short names are kept as they were


def test_the_documented_demo_grid_is_valid():
    """docs/sweeps/demo_schedules.toml regenerates docs/RESULTS.md's table: every cell must stay a
    valid demo recipe as the recipe format changes (a sweep checks them all before training)."""
    from pathlib import Path

    from c2ftrain.recipe import load_recipe

    cells = load_grid(Path(__file__).parents[1] / "docs" / "sweeps" / "demo_schedules.toml")
    assert len(cells) >= 15
    for cell in cells:
        recipe = load_recipe("demo", cell.overrides)
        assert recipe.phases[-1].method == "none" and recipe.phases[0].factor > 1, cell.name


def test_cli_validation_error_leaves_no_run_directory(toy_store, tmp_path):  # noqa: F811
    out = tmp_path / "never"
    r = CliRunner().invoke(main, ["run", "demo", "--set", f'store="{toy_store}"', "--set", "phases.1.factor=8",
                                  "--out", str(out)])  # the demo's extra split, eval_seen, is not in the toy store
    assert r.exit_code == 2 and "data.extra_eval_splits names the split 'eval_seen'" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["run", "demo", "--set", f'store="{toy_store}"', "--set", "phases.1.factor=8",
                                  "--set", "data.extra_eval_splits=[]", "--out", str(out)])
    assert r.exit_code == 2 and "fewer than one 16-frame patch" in " ".join(r.output.split())
    assert not out.exists()
    r = CliRunner().invoke(main, ["run", "demo", "--set", "phases.9.factor=2"])
    assert r.exit_code == 2 and "not an entry 1..2" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["run", "demo", "--set", "nonsense"])
    assert r.exit_code == 2 and "KEY=VALUE" in " ".join(r.output.split())


def test_plan_matches_what_the_trainer_does(toy_store, tmp_path, monkeypatch):  # noqa: F811
    """The plan's FLOPs, steps and learning rate at each epoch's first step, against a real run
    (the rate the optimiser really had, recorded inside train_step); its evaluation FLOPs against
    the clips each evaluation really served, at the resolution the model really had."""
    import c2ftrain.trainer as tr
    from c2ftrain.flops import forward_flops
    from c2ftrain.plan import plan_experiment
    from c2ftrain.recipe import Phase

    recipe = toy_recipe(toy_store)
    plan = plan_experiment(recipe, measure=True, device="cpu")
    seen, real_step = [], tr.train_step
    evaluated, real_evaluate = [], tr.evaluate_loader

    def recording_step(net, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_step(net, optimizer, *args, **kwargs)

    def recording_evaluate(model, loader, *args, **kwargs):  # the forward FLOPs of the clips served
        clips = sum(len(b["labels"]) for b in loader)
        evaluated.append(clips * forward_flops(model.cfg, **model.resolution_state()))
        return real_evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(tr, "train_step", recording_step)
    monkeypatch.setattr(tr, "evaluate_loader", recording_evaluate)
    report = run_experiment(recipe, tmp_path / "run", device="cpu")
    assert sum(evaluated) == sum(plan["runs"][k]["eval_flops"] for k in ("c2f", "baseline", "equal_flops"))
    for label in ("c2f", "baseline", "equal_flops"):
        planned = plan["runs"][label]
        assert planned["flops"] == report[label]["flops"], label
        assert planned["est_s"] > 0
    c2f = plan["runs"]["c2f"]
    assert len(seen) == sum(plan["runs"][k]["steps"] for k in ("c2f", "baseline", "equal_flops"))
    starts = [0]
    for e in c2f["epochs"][:-1]:
        starts.append(starts[-1] + e["steps"])
    assert [e["lr"] for e in c2f["epochs"]] == pytest.approx([seen[s] for s in starts], rel=1e-12)
    assert [e["label"] for e in c2f["epochs"]] == [r["label"] for r in report["phases"] for _ in range(r["epochs"])]
    assert plan["savings"]["flops"] == pytest.approx(report["savings"]["flops"])
    # every other epoch, a weight average that only coarse-to-fine reaches (epochs 5-6 of its 6;
    # the baseline lasts 3), coarse epochs at their own resolution but for the phase's last
    longer = dataclasses.replace(
        recipe, phases=(Phase(method="pool-avg", factor=4, epochs=4), Phase(epochs=2)),
        eval=dataclasses.replace(recipe.eval, every_epochs=2, average_epochs=(5, 6)))
    own = dataclasses.replace(longer, eval=dataclasses.replace(longer.eval, full_resolution_during_coarse=False))
    planned = plan_experiment(own, measure=False, device="cpu")["runs"]
    evaluated.clear()
    run_experiment(own, tmp_path / "own", device="cpu")
    assert sum(evaluated) == sum(planned[k]["eval_flops"] for k in ("c2f", "baseline", "equal_flops"))
    assert planned["c2f"]["final_eval_flops"] > 0 == planned["baseline"]["final_eval_flops"]
    both = plan_experiment(longer, measure=False, device="cpu")["runs"]["c2f"]
    full_pass = both["epochs"][-1]["eval_flops"]  # a full-resolution epoch's evaluation
    # what the setting leaves out: the full-resolution pass after coarse epoch 2 (of 2, 4)
    assert both["coarse_full_eval_flops"] == full_pass == both["eval_flops"] - planned["c2f"]["eval_flops"]


def test_run_key_leaves_out_what_does_not_change_the_run():
    """Shared runs are found by key: settings that change nothing in a run (the mask value
    without masks, mixup's partner and domain without mixup, the cv folds) keep the key that
    runs trained before those settings existed have."""
    from c2ftrain.experiment import run_key
    from c2ftrain.recipe import CvSpec, Phase, load_recipe

    demo = load_recipe("demo")
    key = run_key(demo, demo.baseline_phases)
    assert key == "3b46d2f87cd5"  # the demo baseline's key before these settings existed
    inert = dataclasses.replace(demo, data=dataclasses.replace(demo.data, mask_value="zero", mixup_partner="batch"),
                                cv=CvSpec(folds=2, store="s{fold}"))
    assert run_key(inert, demo.baseline_phases) == key
    fused = dataclasses.replace(demo, optim=dataclasses.replace(demo.optim, fused=True))
    assert run_key(fused, demo.baseline_phases) != key  # another update's rounding: another run
    compiled = dataclasses.replace(demo, model=dataclasses.replace(demo.model, compile="reduce-overhead"))
    assert run_key(compiled, demo.baseline_phases) != key  # other kernels' rounding: another run
    assert run_key(demo, demo.phases) == "0829d51a527f"  # the demo's c2f key before eval.full_resolution_during_coarse
    coarse_only = dataclasses.replace(demo, eval=dataclasses.replace(demo.eval, full_resolution_during_coarse=False))
    assert run_key(coarse_only, demo.baseline_phases) == key  # no coarse phase: nothing changes
    assert run_key(coarse_only, demo.phases) != run_key(demo, demo.phases)  # its history differs
    # Frame-Shift's offset and the resampling settings: nothing to a full-resolution run from
    # random weights (a sweep over them trains one baseline), something to a run that uses them
    fixed_start = dataclasses.replace(demo, data=dataclasses.replace(demo.data, random_offset=False))
    bicubic = dataclasses.replace(demo, model=dataclasses.replace(demo.model, interpolation="bicubic", antialias=False))
    for other in (fixed_start, bicubic):
        assert run_key(other, demo.baseline_phases) == key
    assert run_key(bicubic, demo.phases) != run_key(demo, demo.phases)  # pooling at C=4 -> full: resampled
    fshift = (Phase(method="fshift", factor=2, epochs=2), Phase(epochs=2))
    assert run_key(fixed_start, fshift) != run_key(demo, fshift)
    assert run_key(fixed_start, demo.phases) == run_key(demo, demo.phases)  # the demo pools: no offset drawn
    pretrained = dataclasses.replace(bicubic, model=dataclasses.replace(bicubic.model, init="weights.pt"))
    assert run_key(pretrained, demo.baseline_phases) != run_key(
        dataclasses.replace(pretrained, model=dataclasses.replace(pretrained.model, interpolation="bilinear")),
        demo.baseline_phases)  # loading weights of another grid resamples them
    masked = dataclasses.replace(demo, data=dataclasses.replace(demo.data, freq_mask_bins=8))
    assert run_key(masked, demo.baseline_phases) != run_key(
        dataclasses.replace(masked, data=dataclasses.replace(masked.data, mask_value="zero")), demo.baseline_phases)


def test_flops_budgets_count_the_partial_last_batch(toy_store, tmp_path):  # noqa: F811
    """64 clips in batches of 24 make epochs of 24 + 24 + 16 samples: the budget phase, the
    equal-FLOPs control and the plan count samples, not steps x batch (which overstated an
    epoch by 8 clips, an eighth)."""
    from c2fdata.reader import StoreReader
    from c2ftrain.phases import full_resolution
    from c2ftrain.plan import plan_experiment
    from c2ftrain.recipe import Phase
    from c2ftrain.trainer import model_config

    recipe = dataclasses.replace(toy_recipe(toy_store, batch_size=24), budget_full_epochs=2.0,
                                 phases=(Phase(method="pool-avg", factor=4, epochs=2), Phase(until="budget")))
    cfg = model_config(recipe, StoreReader(toy_store, "train"))
    full = full_resolution(cfg).train_flops_per_sample(cfg)
    plan = plan_experiment(recipe, measure=False, device="cpu")["runs"]
    report = run_experiment(recipe, tmp_path / "run", device="cpu")
    for label in ("c2f", "baseline", "equal_flops"):
        assert plan[label]["flops"] == report[label]["flops"], label
    # within half a batch of what was asked for: the nearest step count, in samples
    assert abs(report["c2f"]["flops"] - 2.0 * 64 * full) <= 12 * full
    assert abs(report["equal_flops"]["flops"] - report["c2f"]["flops"]) <= 12 * full


def test_a_resumed_directory_may_find_its_store_moved(tmp_path):
    """The store is compared by fingerprint, so a store that moved (and cv.store, filled in from
    it) is no difference; any other setting is, named, with the way to go on."""
    from c2ftrain.experiment import _check_resumable
    from c2ftrain.recipe import load_recipe

    started = load_recipe("esc50", {"store": "stores/esc50", "cv.split": "fold{fold}"})
    assert started.cv.store == "stores/esc50"
    (tmp_path / "config.json").write_text(json.dumps({"recipe": started.to_dict(), "store_fingerprint": "f0"}))
    moved = load_recipe("esc50", {"store": "/data/esc50", "cv.split": "fold{fold}"})
    assert _check_resumable(tmp_path, moved, "f0") == "f0"
    changed = load_recipe("esc50", {"store": "/data/esc50", "cv.split": "fold{fold}", "optim.lr": 1e-4})
    with pytest.raises(ValueError, match=r"started vs now: optim.lr: 1e-05 vs 0.0001\).*c2ftrain run --resume"):
        _check_resumable(tmp_path, changed, "f0")


def test_a_sweep_wide_setting_a_cell_would_undo_is_refused(tmp_path):
    from c2ftrain.recipe import RecipeError
    from c2ftrain.sweep import Cell

    cells = [Cell("three", {"phases": [{"method": "fshift", "factor": 4, "epochs": 2}, {"epochs": 1}]})]
    with pytest.raises(RecipeError, match=r"--set phases.1.factor would be lost in cell 'three', whose phases replaces"):
        run_sweep("demo", cells, tmp_path / "sw", 1, base_overrides={"phases.1.factor": 2})
    assert not (tmp_path / "sw").exists()


def test_a_grid_files_bad_key_is_named_where_it_was_written(tmp_path):
    """A cell's override that addresses nothing is reported as the grid file's (not as a --set the
    user never gave), with the --set ones still called --set; the cells bar is not left drawn."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\n"phases.9.factor" = [2]\n')
    r = CliRunner().invoke(main, ["sweep", "demo", "--grid", str(grid), "--out", str(tmp_path / "sw")])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{grid} [grid] phases.9.factor: '9' is not an entry 1..2 of the list" in text, text
    assert "--set" not in text and "0/1" not in text
    grid.write_text('[[cells]]\nset = { "optim.lr" = 1e-4 }\n')
    r = CliRunner().invoke(main, ["sweep", "demo", "--grid", str(grid), "--set", "phases.7.factor=2"])
    assert r.exit_code == 2 and "--set phases.7.factor: '7' is not an entry" in " ".join(r.output.split()), r.output
    grid.write_text('[[cells]]\nset = { "optim.lr.x" = 1 }\n')
    r = CliRunner().invoke(main, ["sweep", "demo", "--grid", str(grid), "--out", str(tmp_path / "sw")])
    assert r.exit_code == 2 and f"{grid} [[cells]] 1: set optim.lr.x: optim.lr is a value" in " ".join(r.output.split())


def test_a_run_directory_is_never_overwritten_and_resume_takes_no_new_settings(tmp_path):
    held = tmp_path / "held"
    (held / "fold-1" / "c2f" / "checkpoints").mkdir(parents=True)
    (held / "config.json").write_text("{}")
    (held / "cv.json").write_text("{}")
    # a start that failed before its first checkpoint holds no trained work: it may be redone
    from c2ftrain.cli import trained_work

    assert trained_work(held) is None
    (held / "fold-1" / "c2f" / "checkpoints" / "last.pt").write_bytes(b"x")
    for command in (["run", "demo", "--out", str(held)], ["cv", "esc50", "--out", str(held)]):
        r = CliRunner().invoke(main, command)
        assert r.exit_code == 2 and f"{held} already holds a run" in r.output, r.output
        assert f"c2ftrain {command[0]} --resume {held}" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["run", "--resume", str(held), "--set", "optim.lr=0.5", "--seeds", "3"])
    assert r.exit_code == 2 and "leave out --seeds, --set" in r.output
    r = CliRunner().invoke(main, ["cv", "esc50", "--resume", str(held), "--folds", "2"])
    assert r.exit_code == 2 and "leave out RECIPE, or" in r.output  # --folds may add folds: not refused here


def test_a_cell_named_dot_dot_is_refused(tmp_path):
    from c2ftrain.recipe import RecipeError
    from c2ftrain.sweep import load_grid

    grid = tmp_path / "g.toml"
    grid.write_text('[[cells]]\nname = ".."\nset = { "optim.lr" = 1e-4 }\n')
    with pytest.raises(RecipeError, match=r"\[\[cells\]\] 1: name '..' is not a directory name"):
        load_grid(grid)
