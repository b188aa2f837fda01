"""Starting weights (c2ftrain/init_weights.py): AST's rules for an ImageNet DeiT and for its own
AudioSet checkpoints, checked against re-implementations written straight from AST's
src/models/ast_models.py; timm's absence, a missing file or an unreachable hub say what to do.
Everything here is made of random tensors: no download, no network."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from c2ftrain.init_weights import (InitError, adapt_pos_embed, initialise, load_checkpoint_file,
                                   load_pretrained)
from c2ftrain.model import AST, ast_config
from c2ftrain.recipe import ModelSpec, RecipeError, load_recipe, recipe_from_dict, shipped_recipes

DEIT = "deit_base_distilled_patch16_384"
OUR_HEAD = ["head.bias", "head.weight", "head_norm.bias", "head_norm.weight"]


# --- AST's rules, re-implemented from src/models/ast_models.py (ASTModel.__init__) ----------------


def ast_imagenet_pos(pos: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """imagenet_pretrain=True: cut from the middle or interpolate, time first (AST's lines)."""
    d = pos.shape[2]
    hw = int((pos.shape[1] - 2) ** 0.5)  # oringal_hw: 24 for DeiT-384
    new = pos[:, 2:, :].detach().reshape(1, hw * hw, d).transpose(1, 2).reshape(1, d, hw, hw)
    if t_dim <= hw:
        new = new[:, :, :, int(hw / 2) - int(t_dim / 2): int(hw / 2) - int(t_dim / 2) + t_dim]
    else:
        new = F.interpolate(new, size=(hw, t_dim), mode="bilinear")
    if f_dim <= hw:
        new = new[:, :, int(hw / 2) - int(f_dim / 2): int(hw / 2) - int(f_dim / 2) + f_dim, :]
    else:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    new = new.reshape(1, d, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos[:, :2, :].detach(), new], dim=1)


def ast_audioset_pos(pos: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """audioset_pretrain=True: AST's fixed 12 x 101 grid, its 50 / 6 middles and < / > tests."""
    d = pos.shape[2]
    new = pos[:, 2:, :].detach().reshape(1, 1212, d).transpose(1, 2).reshape(1, d, 12, 101)
    if t_dim < 101:
        new = new[:, :, :, 50 - int(t_dim / 2): 50 - int(t_dim / 2) + t_dim]
    else:
        new = F.interpolate(new, size=(12, t_dim), mode="bilinear")
    if f_dim < 12:
        new = new[:, :, 6 - int(f_dim / 2): 6 - int(f_dim / 2) + f_dim, :]
    elif f_dim > 12:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    new = new.reshape(1, d, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos[:, :2, :].detach(), new], dim=1)


# --- checkpoints in their real layouts, random values ----------------------------------------------


def deit_state(dim=768, depth=12, side=24, classes=1000, distilled=True, seed=0) -> dict:
    """timm's deit_base_distilled_patch16_384 layout (dim 768, depth 12, 24 x 24 grid), key by
    key as timm names it; written out here, not derived from our model."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    prefix = 2 if distilled else 1
    s = {"cls_token": r(1, 1, dim), "pos_embed": r(1, prefix + side * side, dim),
         "patch_embed.proj.weight": r(dim, 3, 16, 16), "patch_embed.proj.bias": r(dim)}
    if distilled:
        s["dist_token"] = r(1, 1, dim)
    for n in range(depth):
        b = f"blocks.{n}."
        s |= {b + "norm1.weight": r(dim), b + "norm1.bias": r(dim),
              b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": r(3 * dim),
              b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
              b + "norm2.weight": r(dim), b + "norm2.bias": r(dim),
              b + "mlp.fc1.weight": r(4 * dim, dim), b + "mlp.fc1.bias": r(4 * dim),
              b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim)}
    s |= {"norm.weight": r(dim), "norm.bias": r(dim), "head.weight": r(classes, dim), "head.bias": r(classes)}
    if distilled:
        s |= {"head_dist.weight": r(classes, dim), "head_dist.bias": r(classes)}
    return s


def ast_audioset_state(deit: dict, grid=(12, 101), classes=527, seed=1) -> dict:
    """audioset_10_10_0.4593.pth's layout: DataParallel's `module.`, timm's DeiT as `v.` (its
    ImageNet heads included, unused), one grey patch kernel, the learned 12 x 101 grid at stride
    10, and AST's mlp_head (LayerNorm, Linear 768 -> 527)."""
    g = torch.Generator().manual_seed(seed)
    dim = deit["cls_token"].shape[-1]
    v = dict(deit)
    v["patch_embed.proj.weight"] = torch.randn(dim, 1, 16, 16, generator=g)
    v["pos_embed"] = torch.randn(1, 2 + grid[0] * grid[1], dim, generator=g)
    state = {f"module.v.{k}": t for k, t in v.items()}
    state |= {"module.mlp_head.0.weight": torch.randn(dim, generator=g),
              "module.mlp_head.0.bias": torch.randn(dim, generator=g),
              "module.mlp_head.1.weight": torch.randn(classes, dim, generator=g),
              "module.mlp_head.1.bias": torch.randn(classes, generator=g)}
    return state


def small_cfg(frames=256, stride=16, classes=5, **kw):
    base = dict(target_frames=frames, patch_stride=(stride, stride), embed_dim=32, depth=2,
                num_heads=2, num_classes=classes)
    return ast_config("tiny", **{**base, **kw})


def small_model(frames=256, stride=16, classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return AST(small_cfg(frames, stride, classes, **kw)).eval()


def spec(init: str) -> ModelSpec:
    return ModelSpec(init=str(init))


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def deit384():
    return deit_state()


# --- the position rule itself ---------------------------------------------------------------------


@pytest.mark.parametrize("frames, stride, grid", [
    (1024, 10, (12, 101)),  # AST's AudioSet setting: time 24 -> 101 interpolated, freq rows [6:18]
    (256, 16, (8, 16)),  # the demo's: time columns [4:20], freq rows [8:16]
    (512, 10, (12, 50)),  # ESC-50 from ImageNet
    (100, 10, (12, 9)),
])
def test_imagenet_pos_rule_is_asts(frames, stride, grid):
    cfg = ast_config("base", target_frames=frames, patch_stride=(stride, stride))
    assert cfg.grid() == grid
    pos = torch.randn(1, 2 + 24 * 24, 768)
    ours = adapt_pos_embed(pos, (24, 24), grid, prefix=2)
    torch.testing.assert_close(ours, ast_imagenet_pos(pos, *grid), rtol=0, atol=0)


def test_imagenet_pos_rule_cuts_the_middle_rows():
    pos = torch.randn(1, 2 + 24 * 24, 4)
    ours = adapt_pos_embed(pos, (24, 24), (12, 16), prefix=2)[0, 2:].reshape(12, 16, 4)
    image = pos[0, 2:].reshape(24, 24, 4)  # (freq rows, time columns, D)
    torch.testing.assert_close(ours, image[6:18, 4:20], rtol=0, atol=0)


@pytest.mark.parametrize("grid", [(12, 50), (12, 101), (12, 128), (8, 64), (8, 20), (16, 101)])
def test_audioset_pos_rule_is_asts(grid):
    pos = torch.randn(1, 2 + 12 * 101, 24)
    ours = adapt_pos_embed(pos, (12, 101), grid, prefix=2)
    torch.testing.assert_close(ours, ast_audioset_pos(pos, *grid), rtol=0, atol=0)


# --- ImageNet DeiT-B-384 -> AST base ------------------------------------------------------------------


def test_deit_base_distilled_384_loads_into_ast_base(tmp_path, deit384):
    path = tmp_path / f"{DEIT}.pth"
    torch.save(deit384, path)
    torch.manual_seed(0)
    model = AST(ast_config("base", target_frames=1024, patch_stride=(10, 10), num_classes=527))
    fresh_head = model.head.weight.detach().clone()
    report = initialise(model, spec(path))

    assert report["init"] == str(path) and report["format"] == "vit"
    assert report["pos_grid"] == "24x24 -> 12x101"
    assert report["fresh"] == OUR_HEAD  # nothing else missing
    assert report["loaded"] == sorted(k for k in model.state_dict() if k not in OUR_HEAD)
    assert report["ignored"] == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    assert report["loaded"] == sorted(k for k in deit384 if not k.startswith("head"))  # timm's names

    w = deit384["patch_embed.proj.weight"]
    torch.testing.assert_close(model.patch_embed.proj.weight, torch.sum(w, dim=1).unsqueeze(1))
    torch.testing.assert_close(model.pos_embed, ast_imagenet_pos(deit384["pos_embed"], 12, 101))
    torch.testing.assert_close(model.dist_token, deit384["dist_token"], rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[11].mlp.fc2.weight, deit384["blocks.11.mlp.fc2.weight"])
    torch.testing.assert_close(model.head.weight, fresh_head, rtol=0, atol=0)


def test_deit_release_wrapping_and_plain_vit(tmp_path):
    """DeiT's own files hold {"model": state_dict}; a plain ViT has no distillation token."""
    model = small_model(frames=256, stride=10)  # 12 x 25
    state = deit_state(dim=32, depth=2, side=14, distilled=False)
    torch.save({"model": state}, tmp_path / "vit.pth")
    report = load_checkpoint_file(model, tmp_path / "vit.pth")
    assert report["pos_grid"] == "14x14 -> 12x25" and report["ignored"] == ["head.bias", "head.weight"]
    torch.testing.assert_close(model.dist_token, state["cls_token"])
    doubled = torch.cat([state["pos_embed"][:, :1], state["pos_embed"]], dim=1)  # cls row twice
    torch.testing.assert_close(model.pos_embed, ast_imagenet_pos(doubled, 12, 25))
    assert model(torch.randn(1, 256, 128)).shape == (1, 5)


def test_patch_method_model_gets_a_pi_resized_kernel(tmp_path):
    model = small_model()
    model.set_time_resolution(256, time_patch=32, time_stride=32)  # 8 x 8
    torch.save(deit_state(dim=32, depth=2), tmp_path / "deit.pth")
    report = initialise(model, spec(tmp_path / "deit.pth"))
    assert model.patch_embed.proj.weight.shape == (32, 1, 16, 32)
    assert model.pos_embed.shape == (1, 2 + 8 * 8, 32) and isinstance(model.pos_embed, nn.Parameter)
    assert report["pos_grid"] == "24x24 -> 8x8"


def test_errors_name_the_keys_and_leave_the_model_alone(tmp_path):
    model = small_model()
    before = snapshot(model)
    state = deit_state(dim=32, depth=2)
    del state["blocks.0.attn.qkv.weight"]
    state["blocks.0.ls1.gamma"] = torch.ones(32)  # something we would otherwise drop silently
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(InitError, match=r"blocks\.0\.attn\.qkv\.weight") as err:
        initialise(model, spec(tmp_path / "a.pth"))
    assert "blocks.0.ls1.gamma" in str(err.value)

    torch.save(deit_state(dim=64, depth=2), tmp_path / "b.pth")  # another width: every tensor mismatched
    with pytest.raises(InitError, match=rf"(?s)^{tmp_path / 'b.pth'} \(width 64, depth 2\) does not fit this AST \(width 32, "
                                        r"depth 2\):.*mismatched: \['blocks.0.attn.proj.bias: checkpoint \(64,\) vs "
                                        r"model \(32,\)'.* and \d+ more"):
        initialise(model, spec(tmp_path / "b.pth"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "c.pth")
    with pytest.raises(InitError, match=rf"^{tmp_path / 'c.pth'}: not a ViT/DeiT"):
        initialise(model, spec(tmp_path / "c.pth"))
    (tmp_path / "d.pth").write_text("<html>404</html>")  # a failed download saved as .pth
    with pytest.raises(InitError, match="not a readable torch state_dict file") as err:
        initialise(model, spec(tmp_path / "d.pth"))
    assert "weights_only` set to `False`" not in str(err.value)  # torch's advice: it would run the file's code
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# --- AST's AudioSet checkpoint -> fine-tuning ---------------------------------------------------------


def test_ast_audioset_checkpoint_for_esc50(tmp_path, deit384):
    """audioset_10_10_0.4593.pth into ESC-50's model: 512 frames (12 x 50), 50 classes."""
    state = ast_audioset_state(deit384)
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(state, path)
    del state
    torch.manual_seed(0)
    model = AST(ast_config("base", target_frames=512, patch_stride=(10, 10), num_classes=50))
    report = initialise(model, spec(path))
    ckpt = torch.load(path, weights_only=True)

    assert report["format"] == "ast" and report["pos_grid"] == "12x101 -> 12x50"
    assert report["fresh"] == OUR_HEAD  # 527 AudioSet classes vs 50: a new head, as AST
    assert report["loaded"] == sorted(k for k in model.state_dict() if k not in OUR_HEAD)
    assert report["ignored"] == ["mlp_head.0.bias", "mlp_head.0.weight", "mlp_head.1.bias",
                                 "mlp_head.1.weight", "v.head.bias", "v.head.weight",
                                 "v.head_dist.bias", "v.head_dist.weight"]
    torch.testing.assert_close(model.pos_embed, ast_audioset_pos(ckpt["module.v.pos_embed"], 12, 50))
    torch.testing.assert_close(model.patch_embed.proj.weight, ckpt["module.v.patch_embed.proj.weight"])
    torch.testing.assert_close(model.blocks[3].attn.qkv.bias, ckpt["module.v.blocks.3.attn.qkv.bias"])


def test_ast_checkpoint_head_is_kept_when_the_classes_match(tmp_path):
    deit = deit_state(dim=32, depth=2)
    state = ast_audioset_state(deit, classes=5)
    torch.save(state, tmp_path / "ast.pth")
    model = small_model(frames=1024, stride=10, classes=5)  # AudioSet's own grid, 12 x 101
    report = initialise(model, spec(tmp_path / "ast.pth"))
    assert report["fresh"] == [] and report["pos_grid"] == "12x101 -> 12x101"
    assert set(OUR_HEAD) <= set(report["loaded"])
    torch.testing.assert_close(model.head_norm.weight, state["module.mlp_head.0.weight"])
    torch.testing.assert_close(model.head.weight, state["module.mlp_head.1.weight"])
    torch.testing.assert_close(model.pos_embed, state["module.v.pos_embed"], rtol=0, atol=0)

    other = small_model(frames=1024, stride=16, classes=7)  # 8 x 64: rows [2:10] of the 12
    report = initialise(other, spec(tmp_path / "ast.pth"))
    assert report["fresh"] == OUR_HEAD and report["pos_grid"] == "12x101 -> 8x64"
    torch.testing.assert_close(other.pos_embed, ast_audioset_pos(state["module.v.pos_embed"], 8, 64))


def test_c2f_model_state_dict_as_a_start(tmp_path):
    """This project's own final.pt ({"model": state_dict, ...}) fine-tuned at another length."""
    donor = small_model(frames=256, stride=16, classes=5, seed=3)  # 8 x 16
    torch.save({"model": donor.state_dict(), "store": "s"}, tmp_path / "final.pt")
    model = small_model(frames=512, stride=16, classes=5)  # 8 x 32
    report = initialise(model, spec(tmp_path / "final.pt"))
    assert report["format"] == "c2f" and report["pos_grid"] == "8x16 -> 8x32" and report["fresh"] == []
    torch.testing.assert_close(model.head.weight, donor.head.weight)


# --- "none", timm, missing files --------------------------------------------------------------------


def test_none_changes_nothing():
    model = small_model()
    before = snapshot(model)
    report = initialise(model, spec("none"))
    assert report["format"] == "scratch" and report["loaded"] == [] and report["ignored"] == []
    assert report["fresh"] == sorted(before)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_missing_files_say_what_to_download(tmp_path):
    model = small_model()
    with pytest.raises(InitError, match=r"dropbox\.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0\.4593\.pth") as err:
        initialise(model, spec(tmp_path / "audioset_10_10_0.4593.pth"))
    assert "AST's README" in str(err.value)
    with pytest.raises(InitError, match=r"dl\.fbaipublicfiles\.com/deit/deit_base_distilled_patch16_384"):
        initialise(model, spec(tmp_path / "deit_base_distilled_patch16_384-d0272ac0.pth"))
    with pytest.raises(InitError, match=r'"timm:<model name>".*"none"'):
        initialise(model, spec(tmp_path / "mine.pth"))


def test_shipped_esc50_loads_without_its_checkpoint_and_fails_at_training_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    init = load_recipe("esc50").model  # loading checks nothing on disk
    assert init.init == "checkpoints/audioset_10_10_0.4593.pth"
    with pytest.raises(InitError, match="download https://www.dropbox.com/s/ca0b1v2nlxzyeb4"):
        initialise(small_model(), init)


def fake_timm(create_model) -> types.ModuleType:
    timm = types.ModuleType("timm")
    timm.__version__ = "0.0-fake"
    timm.is_model = lambda name: name in (DEIT, "deit_tiny")
    timm.create_model = create_model
    return timm


def test_timm_init_takes_the_pretrained_state_dict(monkeypatch):
    calls = []

    class Net(nn.Module):
        def state_dict(self, *a, **kw):
            return deit_state(dim=32, depth=2)

    def create_model(name, pretrained=False):
        calls.append((name, pretrained))
        return Net()

    monkeypatch.setitem(sys.modules, "timm", fake_timm(create_model))
    model = small_model()
    report = initialise(model, spec("timm:deit_tiny"))
    assert calls == [("deit_tiny", True)]
    assert report["init"] == "timm:deit_tiny" and report["format"] == "vit" and report["fresh"] == OUR_HEAD
    with pytest.raises(InitError, match="has no model 'vit_nonesuch'"):
        initialise(model, spec("timm:vit_nonesuch"))


def test_timm_hub_unreachable_says_download_and_set_the_path(monkeypatch):
    def create_model(name, pretrained=False):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setitem(sys.modules, "timm", fake_timm(create_model))
    with pytest.raises(InitError, match="could not get the pretrained weights") as err:
        initialise(small_model(), spec(f"timm:{DEIT}"))
    assert "set model.init to its path" in str(err.value)
    assert "deit_base_distilled_patch16_384-d0272ac0.pth" in str(err.value)


def test_timm_missing_says_install_or_use_a_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(InitError, match=r"pip install c2f\[timm\]") as err:
        initialise(small_model(), spec(f"timm:{DEIT}"))
    assert "local state_dict file" in str(err.value)


def test_timm_failing_on_torchvision_says_so(monkeypatch):
    """On the CPU machines timm's import pulls a CUDA torchvision, which fails like this."""

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "timm":
                raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(InitError, match=r"does not import here \(RuntimeError: operator torchvision::nms"):
        initialise(small_model(), spec(f"timm:{DEIT}"))


def test_real_timm_deit_layout_loads():
    try:
        import timm
    except Exception as err:  # not installed, or torchvision built for another torch
        pytest.skip(f"timm does not import here ({type(err).__name__}: {str(err)[:120]})")
    state = timm.create_model(DEIT, pretrained=False).state_dict()  # no download
    ref = deit_state()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    model = AST(ast_config("base", target_frames=1024, patch_stride=(10, 10), num_classes=527))
    report = load_pretrained(model, state)
    assert report["fresh"] == OUR_HEAD and len(report["ignored"]) == 4


# --- the recipe's [model] init ------------------------------------------------------------------------


def test_every_shipped_recipe_states_its_init():
    import tomllib
    from importlib import resources

    pretrained = {"audioset_balanced": f"timm:{DEIT}", "audioset_full": f"timm:{DEIT}",
                  "vggsound": f"timm:{DEIT}", "esc50": "checkpoints/audioset_10_10_0.4593.pth"}
    for name in shipped_recipes():
        text = resources.files("c2ftrain").joinpath("recipes", f"{name}.toml").read_text()
        model = tomllib.loads(text)["model"]
        assert "init" in model and "init_checkpoint" not in model, name
        assert load_recipe(name).model.init == pretrained.get(name, "none"), name


BASE = {"name": "t", "store": "s", "phases": [{"method": "none", "factor": 1, "epochs": 1}]}


@pytest.mark.parametrize("init", ["", " none", "timm:", 3])
def test_bad_init_values(init):
    with pytest.raises(RecipeError, match=r"model\.init|\[model\] init: expected a string"):
        recipe_from_dict({**BASE, "model": {"init": init}})


def test_init_checkpoint_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match="init_checkpoint is deprecated: write init = 'none'"):
        old = recipe_from_dict({**BASE, "model": {"init_checkpoint": ""}})  # old configs: scratch
    assert old.model.init == "none" and old.model.init_checkpoint is None
    with pytest.warns(FutureWarning, match="write init = 'x.pth'"):
        assert recipe_from_dict({**BASE, "model": {"init_checkpoint": "x.pth"}}).model.init == "x.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # round trip through to_dict: no alias left, no warning
        assert recipe_from_dict(old.to_dict()).model == old.model
    with pytest.raises(RecipeError, match="disagree; keep only init"):
        recipe_from_dict({**BASE, "model": {"init": "a.pth", "init_checkpoint": "b.pth"}})
