"""Recipes: every shipped one loads; impossible ones fail with a message naming the problem."""

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


@pytest.mark.parametrize("change, message", [
    ({"phases": [{"method": "pool-avg", "factor": 4, "epochs": 2}]}, "last phase must run at full resolution"),
    ({"phases": [{"method": "wavelet", "factor": 2, "epochs": 1}, {"epochs": 1}]}, "method 'wavelet' unknown"),
    ({"phases": [{"method": "fshift", "factor": 0, "epochs": 1}, {"epochs": 1}]}, "factor must be an integer >= 1"),
    ({"phases": [{"method": "fshift", "factor": 2}, {"epochs": 1}]}, "exactly one of epochs or steps"),
    ({"optim": {"schedule": "linear"}}, "optim.schedule"),
    ({"optim": {"lr_typo": 1}}, r"\[optim\]: unknown keys \['lr_typo'\]"),
    ({"phases": []}, "at least one"),
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
