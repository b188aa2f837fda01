"""Recipes: every shipped one loads; impossible ones fail with a message naming the problem."""

import dataclasses

import pytest

from c2ftrain.recipe import Phase, RecipeError, load_recipe, recipe_from_dict, shipped_recipes

BASE = {"name": "t", "store": "s", "phases": [{"method": "pool-avg", "factor": 4, "epochs": 2},
                                               {"method": "none", "factor": 1, "epochs": 1}]}


def test_shipped_recipes_load_and_end_at_full_resolution():
    names = shipped_recipes()
    assert {"demo", "audioset_balanced", "audioset_full", "vggsound", "voxceleb", "kinetics_sounds", "esc50"} <= set(names)
    for n in names:
        r = load_recipe(n)
        assert r.phases[-1].factor == 1 and r.baseline_phases[-1].factor == 1
        assert any(p.factor > 1 for p in r.phases), f"{n} has no coarse phase"


def test_demo_saves_47_percent_of_the_baselines_flops():
    """The demo spends 4.21 of the baseline's 8 full-resolution epochs (what 5 coarse + 3 full
    epochs cost); its coarse phase, at most 14 epochs at C = 4 (50 steps an epoch), always
    leaves the full-resolution phase at least half an epoch of that budget."""
    from c2ftrain.model import ast_config
    from c2ftrain.phases import flops_per_sample

    r = load_recipe("demo")
    cfg = ast_config("tiny", target_frames=256, patch_stride=(16, 16), num_classes=16)
    coarse, full = r.phases
    (base,) = r.baseline_phases
    per_full_epoch = 50 * flops_per_sample(cfg, base)
    assert 1 - r.budget_full_epochs * per_full_epoch / (base.epochs * per_full_epoch) == pytest.approx(0.47, abs=0.005)
    assert coarse.until == "plateau" and full.until == "budget"
    left = r.budget_full_epochs * per_full_epoch - coarse.epochs * 50 * flops_per_sample(cfg, coarse)
    assert left > 0.5 * per_full_epoch


def test_overrides():
    r = load_recipe("demo", {"optim.lr": 5e-4, "data.batch_size": 32})
    assert r.optim.lr == 5e-4 and r.data.batch_size == 32


def test_a_description_says_what_overrides_changed_since_it_was_written():
    written = load_recipe("demo").description
    assert "<= 14 epochs" in written  # a figure the overrides below make untrue
    changed = load_recipe("demo", {"phases.1.epochs": 2, "data.backend": "torch", "seed": 3}).description
    assert changed == written + ' (as written; since changed: phases.1.epochs=2, data.backend="torch")'
    assert load_recipe("demo", {"seed": 3}).description == written  # the seed is not a setting described
    assert load_recipe("demo", {"description": "mine", "optim.lr": 1e-4}).description == "mine"


def test_a_table_override_changes_its_keys_only():
    """`set = { optim.lr = 5e-4 }` in a grid file is TOML for {"optim": {"lr": 5e-4}}: the rest of
    [optim] must stay the recipe's (it went back to the defaults, adam without weight decay)."""
    demo = load_recipe("demo")
    r = load_recipe("demo", {"optim": {"lr": 5e-4}, "phases": {"1": {"epochs": 3}}, "data": {"batch_size": 8}})
    assert r.optim == dataclasses.replace(demo.optim, lr=5e-4)
    assert r.phases == (dataclasses.replace(demo.phases[0], epochs=3), demo.phases[1])
    assert r.data == dataclasses.replace(demo.data, batch_size=8)


@pytest.mark.parametrize("change, message", [
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2}]}, "last phase must run at full resolution"),
    ({"phases": [{"method": "wavelet", "factor": 2, "epochs": 1}, {"epochs": 1}]}, "method 'wavelet' unknown"),
    ({"phases": [{"method": "fshift", "factor": 0, "epochs": 1}, {"epochs": 1}]}, "factor must be an integer >= 1"),
    ({"phases": [{"method": "fshift", "factor": 2}, {"epochs": 1}]}, "exactly one of epochs or steps"),
    ({"optim": {"schedule": "linear"}}, "optim.schedule"),
    ({"optim": {"lr_typo": 1}}, r"\[optim\]: unknown keys \['lr_typo'\]"),
    ({"phases": []}, "at least one"),
    # numbers out of range: each refused by name, none left to a fallback (0 meaning "the
    # default"), a ZeroDivisionError mid-run or an optimiser's own message
    ({"eval": {"every_epochs": 0}}, r"eval.every_epochs must be an integer >= 1, got 0"),
    ({"eval": {"every_epochs": -1}}, r"eval.every_epochs must be an integer >= 1, got -1"),
    ({"eval": {"batch_size": 0}}, r"eval.batch_size must be an integer >= 1, got 0"),
    ({"eval": {"checkpoint_every_steps": -3}}, r"eval.checkpoint_every_steps must be an integer >= 0"),
    ({"optim": {"lr": -1.0}}, r"optim.lr must be a number > 0, got -1"),
    ({"optim": {"lr": 0}}, r"optim.lr must be a number > 0, got 0"),
    ({"optim": {"weight_decay": -1e-4}}, r"optim.weight_decay must be a number >= 0"),
    ({"optim": {"warmup_steps": -5}}, r"optim.warmup_steps must be an integer >= 0"),
    ({"optim": {"min_lr_ratio": 1.5}}, r"optim.min_lr_ratio must be a number <= 1"),
    ({"optim": {"clip_grad_norm": -1.0}}, r"optim.clip_grad_norm must be a number >= 0"),
    ({"optim": {"betas": [0.9, 1.0]}}, r"optim.betas must be two numbers in \[0, 1\)"),
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2}, {"epochs": 1, "lr": -1.0}]},
     r"\[phases.2\] phase lr must be a number > 0, got -1"),
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2, "batch_size": 0}, {"epochs": 1}]},
     r"\[phases.1\] phase batch_size must be an integer >= 1, got 0"),
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2, "warmup_steps": -1}, {"until": "budget"}],
      "budget_full_epochs": 2.0}, r"\[phases.1\] phase warmup_steps must be an integer >= 0"),
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2}, {"until": "budget", "lr": -1.0}],
      "budget_full_epochs": 2.0}, r"\[phases.2\] phase lr must be a number > 0"),
    ({"baseline": {"phases": [{"epochs": 3, "lr": -1.0}]}}, r"\[baseline.phases.1\] phase lr must be a number > 0"),
])
def test_bad_recipes(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**BASE, **change})


def test_factor_that_leaves_no_patch():
    r = recipe_from_dict({**BASE, "phases": [{"method": "fshift", "factor": 32, "epochs": 1}, {"epochs": 1}]})
    with pytest.raises(RecipeError, match=r"256 frames / C = 8 frames, fewer than one 16-frame patch"):
        r.check_against(256, 128)
    r.check_against(1024, 128)  # 32 frames: fine
    patch = recipe_from_dict({**BASE, "phases": [{"method": "patch", "factor": 32, "epochs": 1}, {"epochs": 1}]})
    with pytest.raises(RecipeError, match="512-frame patch"):
        patch.check_against(256, 128)


def test_phase_loader_phase():
    from c2ftrain.phases import loader_phase

    assert loader_phase(Phase(method="patch", factor=2, epochs=1)) == ("none", 1)
    assert loader_phase(Phase(method="fshift", factor=2, epochs=1)) == ("fshift", 2)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="shipped recipes are"):
        load_recipe("nope")


@pytest.mark.parametrize("override, message", [
    # TOML's booleans are lowercase: `--set` takes `False` as the string 'False', which is truthy
    ({"phases.2.reset_optimizer": "False"}, (r"\[phases.2\] reset_optimizer: expected true or false, got 'False' "
                                             r"\(TOML's booleans are lowercase")),
    ({"data.random_crop": "no"}, r"\[data\] random_crop: expected true or false, got 'no'"),
    ({"optim.lr": ".5"}, r"\[optim\] lr: expected a number, got '.5' \(a number as TOML writes it: 0.5"),
    ({"phases.1.factor": 2.5}, r"\[phases.1\] factor: expected an integer, got 2.5"),
    ({"phases.1.factor": True}, r"\[phases.1\] factor: expected an integer, got True"),
    ({"data.eval_split": float("nan")}, r"\[data\] eval_split: expected a string, got nan"),
    ({"model.patch_stride": [16, 16, 3]}, (r"\[model\] patch_stride: expected a list \[an integer, an integer\], "
                                           r"got \[16, 16, 3\]")),
    ({"data.extra_eval_splits": ["a", 1]}, r"\[data\] extra_eval_splits: expected a list of strings"),
    ({"optim.lr.x": 1}, r"--set optim.lr.x: optim.lr is a value, not a table"),
    ({"eval.phases.1.epochs": 3}, r"--set eval.phases.1.epochs: eval.phases has no list to index with 1"),
])
def test_override_values_of_the_wrong_type_are_named(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("vggsound", override)


def test_override_values_of_the_right_type_pass():
    r = load_recipe("demo", {"optim.lr": 1, "data.norm_mean": -4, "data.norm_std": 4, "phases.1.factor": 2,
                             "data.random_crop": True,
                             "data.train_split": ["train", "eval_seen"]})
    assert r.optim.lr == 1 and r.data.norm_mean == -4 and r.data.train_split == ("train", "eval_seen")


def test_a_budget_phase_is_checked_as_mixed():
    """factors on a budget phase are checked as on any phase: C = 4 batches at "full resolution"."""
    with pytest.raises(RecipeError, match="factor"):
        Phase(method="fshift", factor=1, factors=(4, 1), epochs=1)
    with pytest.raises(RecipeError, match="factor"):
        Phase(method="fshift", factor=1, factors=(4, 1), until="budget")


def test_whole_numbers_written_as_floats_are_integers():
    r = load_recipe("demo", {"optim.warmup_steps": 1e2, "eval.checkpoint_every_steps": 5.0})
    assert r.optim.warmup_steps == 100 and isinstance(r.optim.warmup_steps, int)
    assert r.eval.checkpoint_every_steps == 5
    with pytest.raises(RecipeError, match=r"\[optim\] warmup_steps: expected an integer, got 2.5"):
        load_recipe("demo", {"optim.warmup_steps": 2.5})


def test_a_phase_given_in_epochs_can_be_set_in_steps_and_back():
    """A phase's length is its epochs or its steps: the one --set (or a grid cell) gives replaces
    the other; both in one table is refused; other keys named steps are left alone."""
    r = load_recipe("audioset_balanced", {"phases.1.steps": 100, "phases.2": {"steps": 50}})
    assert [(p.epochs, p.steps) for p in r.phases] == [(None, 100), (None, 50), (5, None)]
    from c2ftrain.recipe import apply_override

    d = {"phases": [{"method": "none", "factor": 1, "steps": 5}], "baseline": {"phases": [{"steps": 5}]}}
    apply_override(d, "phases.1.epochs", 2)
    apply_override(d, "baseline.phases.1.epochs", 3)
    assert d == {"phases": [{"method": "none", "factor": 1, "epochs": 2}], "baseline": {"phases": [{"epochs": 3}]}}
    with pytest.raises(RecipeError, match=r"--set phases.2: a phase is as long as its epochs or its steps say, not both"):
        load_recipe("audioset_balanced", {"phases.2": {"steps": 50, "epochs": 3}})
    # as two keys, from a sweep's --set and its grid (one would silently undo the other): refused, both named
    with pytest.raises(RecipeError, match=r"^--set phases.1.epochs and g.toml \[grid\] phases.1.steps: a phase is as "
                                          r"long as its epochs or its steps say, not both"):
        load_recipe("audioset_balanced", {"phases.1.epochs": 3, "phases.1.steps": 9},
                    origins={"phases.1.steps": "g.toml [grid]"})
    with pytest.raises(RecipeError, match=r"exactly one of epochs or steps"):  # in a recipe file, both is an error
        recipe_from_dict({**load_recipe("demo").to_dict(), "phases": [{"method": "none", "factor": 1, "epochs": 2,
                                                                     "steps": 9}]})
    kept = load_recipe("demo", {"optim.warmup_steps": 7})  # not a phase: nothing else changes
    assert kept.optim.warmup_steps == 7 and kept.phases == load_recipe("demo").phases


def test_a_mask_wider_than_what_it_masks_is_refused():
    """AST's 48-bin frequency mask on a 40-mel store (or a time mask past the clip) would blank
    whole clips at random; refused against the store's shape, AST's own settings accepted."""
    r = load_recipe("audioset_balanced")
    r.check_against(1024, 128)
    with pytest.raises(RecipeError, match=r"data.freq_mask_bins 48 is not less than the store's 48 mel bins"):
        r.check_against(1024, 48)  # a width of 48 is drawn too: the whole spectrum
    with pytest.raises(RecipeError, match=r"data.time_mask_frames 192 is not less than the 128 frames a clip has"):
        load_recipe("audioset_balanced", {"model.patch_stride": [16, 16]}).check_against(128, 128)
