"""Starting weights of an AST, as a recipe's `[model] init` states them.

`initialise(model, spec)` is the one entry point; the trainer calls it right after building the
model. `spec.init` is one of

- `"none"`: train from scratch (the model's own initialisation; what the c2f paper does);
- `"timm:<model name>"`, e.g. `"timm:deit_base_distilled_patch16_384"`: ImageNet weights through
  timm (`pip install c2f[timm]`), imported only here and only then;
- the path of a state_dict file: a timm-named ViT/DeiT (ImageNet), an AST checkpoint (AudioSet,
  as AST publishes them), or a c2f model state dict.

Nothing is looked up when a recipe loads: a missing file or a missing timm is an error here,
when training starts, naming what to download or install.

How an ImageNet ViT/DeiT becomes an AST follows AST's src/models/ast_models.py (ASTModel,
`imagenet_pretrain=True`): the RGB patch kernel is summed into one channel, and the square
position grid is cut from its middle or bilinearly interpolated, time axis first, then frequency
(`ast_pos_grid`). An AST AudioSet checkpoint gets the same rule from its learned 12 x 101 grid
(ASTModel, `audioset_pretrain=True`); its head is kept only when the class count matches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from c2ftrain.model import AST, patch_grid
from c2ftrain.patch_embed import resize_patch_kernel

if TYPE_CHECKING:
    from c2ftrain.recipe import ModelSpec

# AST's released checkpoints, as its GitHub README ("Pretrained Models") links them.
AST_README = "https://github.com/YuanGongND/ast#pretrained-models"
AST_RELEASES = {
    "audioset_10_10_0.4593.pth": "https://www.dropbox.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1",
    "audioset_10_10_0.4495.pth": "https://www.dropbox.com/s/1tv0hovue1bxupk/audioset_10_10_0.4495.pth?dl=1",
    "audioset_10_10_0.4483.pth": "https://www.dropbox.com/s/6u5sikl4b9wo4u5/audioset_10_10_0.4483.pth?dl=1",
    "audioset_10_10_0.4475.pth": "https://www.dropbox.com/s/kt6i0v9fvfm1mbq/audioset_10_10_0.4475.pth?dl=1",
    "audioset_12_12_0.4467.pth": "https://www.dropbox.com/s/snfhx3tizr4nuc8/audioset_12_12_0.4467.pth?dl=1",
    "audioset_14_14_0.4431.pth": "https://www.dropbox.com/s/z18s6pemtnxm4k7/audioset_14_14_0.4431.pth?dl=1",
    "audioset_16_16_0.4422.pth": "https://www.dropbox.com/s/mdsa4t1xmcimia6/audioset_16_16_0.4422.pth?dl=1",
    "speechcommands_10_10_0.9812.pth": "https://www.dropbox.com/s/q0tbqpwv44pquwy/speechcommands_10_10_0.9812.pth?dl=1",
}
# DeiT's own release of the model AST starts from (a {"model": state_dict} file, timm naming).
DEIT_RELEASES = {
    "deit_base_distilled_patch16_384": "https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth",
}
TIMM_PREFIX = "timm:"

# Classifier parts of an ImageNet ViT/DeiT (and of the timm model AST wraps as `v`): never
# loaded, our head is new; reported as ignored.
_VIT_HEAD_PREFIXES = ("head.", "head_dist.", "fc_norm.", "pre_logits.")
# Our classifier: AST's mlp_head = LayerNorm -> Linear, named head_norm / head in c2ftrain.model.
_OUR_HEAD_PREFIXES = ("head_norm.", "head.")
_AST_HEAD = {"mlp_head.0.": "head_norm.", "mlp_head.1.": "head."}
# AST's checkpoints: 128 mel bins x 1024 frames, 16 x 16 patches, fstride = tstride (10..16).
_AST_INPUT = (128, 1024)


class InitError(RuntimeError):
    """Starting weights that cannot be had or do not fit, with what to download, install or set."""


def initialise(model: AST, spec: "ModelSpec") -> dict:
    """Give `model` the starting weights `spec.init` names; returns what happened:

    {"init": spec.init, "format": "scratch" | "vit" | "ast" | "c2f",
     "pos_grid": "24x24 -> 12x101" (the position grid's adaptation; "" from scratch),
     "loaded": [our keys set from the weights], "fresh": [our keys left as initialised],
     "ignored": [checkpoint keys not used]}

    Raises InitError, before touching the model, when the weights cannot be found or do not fit.
    """
    init = spec.init
    if init == "none":
        return dict(init=init, format="scratch", pos_grid="", loaded=[],
                    fresh=sorted(model.state_dict()), ignored=[])
    if init.startswith(TIMM_PREFIX):
        state = timm_state_dict(init[len(TIMM_PREFIX):])
    else:
        state = read_state_dict(init)
    return {"init": init, **load_pretrained(model, state, spec.interpolation, spec.antialias, init)}


def load_checkpoint_file(
    model: AST, path: str | Path, interpolation: str = "bilinear", antialias: bool = True
) -> dict:
    """`read_state_dict` + `load_pretrained`: a state_dict file on disk into `model`."""
    return load_pretrained(model, read_state_dict(path), interpolation, antialias, str(path))


# --- where the weights come from --------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from disk, unwrapped ({"model": ...} as DeiT and c2f save it) and without
    DataParallel's `module.` prefix (AST's checkpoints have it). Never downloads."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InitError(_missing_file_message(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, HTML error page saved as .pth, ...
        raise InitError(f"{path}: not a readable torch state_dict file ({type(err).__name__}: {_load_reason(err)}); "
                        "download it again (a checkpoint holding more than tensors is refused: c2f loads weights "
                        "only, never code)") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__
        raise InitError(f"{path}: expected a state_dict (names -> tensors), got a {kind}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_reason(err: Exception) -> str:
    """torch.load's reason, without its advice to load with weights_only=False (which runs the
    file's code, and does not mend a corrupt download): the unpickler's own words where it gave
    them ("Unsupported operand 103"), else the first line."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
        return f"the weights-only unpickler: {detail}"
    return text.splitlines()[0][:200] if text else "no message"


def _missing_file_message(path: Path) -> str:
    lead = f"model.init: no file {path} (resolved against {Path.cwd()})"
    if path.name in AST_RELEASES:
        return (f"{lead}. It is AST's AudioSet checkpoint: download {AST_RELEASES[path.name]} "
                f"(linked from AST's README, {AST_README}) to {path}, or set model.init to where "
                f"you keep it.")
    for name, url in DEIT_RELEASES.items():
        if path.name.startswith(name):
            return (f"{lead}. Download DeiT's release {url} to {path}, or set model.init = "
                    f"\"timm:{name}\" with timm installed (pip install c2f[timm]).")
    return (f"{lead}. Set model.init to an existing state_dict file, to \"timm:<model name>\" "
            f"(pip install c2f[timm]), or to \"none\" to train from scratch.")


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """timm.create_model(name, pretrained=True).state_dict(); timm is imported only here."""
    local = f"a local state_dict file of {name} (set model.init to its path)"
    if name in DEIT_RELEASES:
        local += f", e.g. DeiT's release {DEIT_RELEASES[name]}"
    try:
        import timm
    except Exception as err:  # not installed; or a torchvision built for another torch
        raise InitError(
            f"model.init = \"timm:{name}\" needs timm, which does not import here "
            f"({type(err).__name__}: {str(err).strip()[:200]}). Install it with "
            f"`pip install c2f[timm]` (with a torchvision built for this torch), or use {local}."
        ) from None
    is_model = getattr(timm, "is_model", None)
    if is_model is not None and not is_model(name):
        raise InitError(f"model.init = \"timm:{name}\": timm {timm.__version__} has no model "
                        f"{name!r} (see timm.list_models())")
    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as err:  # hub unreachable, no pretrained weights for this name, ...
        raise InitError(
            f"model.init = \"timm:{name}\": timm could not get the pretrained weights "
            f"({type(err).__name__}: {str(err).strip()[:300]}). Download them where there is "
            f"network access{_timm_source(timm, name)} and use {local}."
        ) from None
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    del net
    return state


def _timm_source(timm, name: str) -> str:
    """' (from <url or hub id>)' for the error message, when timm says where its weights live."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        where = getattr(cfg, "url", "") or getattr(cfg, "hf_hub_id", "")
        return f" (timm takes them from {where})" if where else ""
    except Exception:
        return ""


# --- which layout the weights have ------------------------------------------------------------


def checkpoint_format(state: dict, where: str = "state dict") -> str:
    """"ast": AST's checkpoints (timm's ViT wrapped as `v.`, head `mlp_head.0/1`); "c2f": this
    project's AST (head_norm/head); "vit": a timm-named ViT/DeiT (ImageNet). `where` names the
    checkpoint in the error."""
    if "v.pos_embed" in state:
        return "ast"
    if "pos_embed" in state and "head_norm.weight" in state:
        return "c2f"
    if all(k in state for k in ("pos_embed", "cls_token", "patch_embed.proj.weight")):
        return "vit"
    raise InitError(
        f"{where}: not a ViT/DeiT (timm naming), AST or c2f state dict: no pos_embed / cls_token / "
        f"patch_embed.proj.weight nor v.pos_embed; its keys begin {sorted(state)[:8]}"
    )


def _split(state: dict, fmt: str) -> tuple[dict, dict, list[str]]:
    """(backbone in our names, head in our names, ignored checkpoint keys)."""
    backbone, head, ignored = {}, {}, []
    for key, value in state.items():
        name = key
        if fmt == "ast":
            ast_head = next((p for p in _AST_HEAD if key.startswith(p)), None)
            if ast_head is not None:
                head[_AST_HEAD[ast_head] + key[len(ast_head):]] = value
                continue
            if not key.startswith("v."):
                ignored.append(key)
                continue
            name = key[2:]
        if fmt == "c2f" and name.startswith(_OUR_HEAD_PREFIXES):
            head[name] = value
        elif name.startswith(_VIT_HEAD_PREFIXES):  # ImageNet classifiers, also inside AST's v
            ignored.append(key)
        else:
            backbone[name] = value
    return backbone, head, ignored


# --- adapting the backbone ---------------------------------------------------------------------


def ast_pos_grid(grid: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """AST's rule for a position grid (1, D, Fo, To) -> (1, D, F, T), from AST's
    src/models/ast_models.py: time first, then frequency; an axis that shrinks (or stays) is cut
    from its middle, `[int(To/2) - int(T/2) : ... + T]`; one that grows is interpolated
    bilinearly (align_corners=False, no antialias: torch's defaults, as AST calls it).

    AST writes it twice, with "<=" for ImageNet's 24 x 24 grid and "<" / ">" around its AudioSet
    12 x 101 one; both give the same tensor at equality, which is what this does.
    """
    fo, to = grid.shape[-2:]
    f, t = new_grid
    if t <= to:  # 24 -> 16 (demo): columns [4:20]
        start = to // 2 - t // 2
        grid = grid[..., start : start + t]
    else:  # 24 -> 101 (AST AudioSet)
        grid = F.interpolate(grid, size=(fo, t), mode="bilinear", align_corners=False)
    if f <= fo:  # 24 -> 12 (128 mel bins at stride 10): rows [6:18]
        start = fo // 2 - f // 2
        grid = grid[..., start : start + f, :]
    else:
        grid = F.interpolate(grid, size=(f, t), mode="bilinear", align_corners=False)
    return grid


def adapt_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], prefix: int
) -> torch.Tensor:
    """(1, prefix + Fo*To, D) -> (1, 2 + F*T, D), freq-major as our tokens (and AST's). The
    prefix rows are kept; a plain ViT's single cls row is copied for the distillation token."""
    if pos.shape[1] != prefix + old_grid[0] * old_grid[1]:
        grid = f"{prefix} + {old_grid[0]}x{old_grid[1]}"
        raise InitError(f"pos_embed: {pos.shape[1]} rows, not {grid}")
    dim = pos.shape[2]
    grid = pos[:, prefix:].float().transpose(1, 2).reshape(1, dim, *old_grid)  # (1, D, Fo, To)
    grid = ast_pos_grid(grid, new_grid).reshape(1, dim, -1).transpose(1, 2)  # (1, F*T, D)
    head = pos[:, :prefix].float()
    if prefix == 1:
        head = torch.cat([head, head], dim=1)
    return torch.cat([head, grid], dim=1).contiguous()


def source_grid(n_tokens: int, fmt: str, model: AST) -> tuple[int, int]:
    """The checkpoint's (Fo, To) position grid, which a state dict does not record.

    vit: the square ImageNet grid. ast / c2f: one of AST's released layouts (128 x 1024 input,
    fstride = tstride = s: s = 10 gives 12 x 101); failing that, our own frequency rows (a model
    fine-tuned at another length, e.g. ESC-50's 12 x 50).
    """
    if fmt == "vit":
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise InitError(f"pos_embed: {n_tokens} grid rows are not a square ImageNet grid")
        return side, side
    for s in range(1, 17):
        grid = patch_grid(*_AST_INPUT, (16, 16), (s, s))
        if grid[0] * grid[1] == n_tokens:
            return grid
    fg = model.grid[0]
    if n_tokens % fg == 0:
        return fg, n_tokens // fg
    raise InitError(
        f"pos_embed: cannot tell the grid of {n_tokens} positions: not one of AST's 128 x 1024 "
        f"layouts, and not a multiple of this model's {fg} frequency rows"
    )


def _adapt_backbone(
    backbone: dict, model: AST, fmt: str, interpolation: str, antialias: bool
) -> tuple[dict, str]:
    """The three tensors whose form differs: patch kernel, distillation token, position table."""
    needed = [k for k in ("patch_embed.proj.weight", "pos_embed", "cls_token") if k not in backbone]
    if needed:
        raise InitError(f"not a complete ViT backbone: missing {needed}")
    backbone = dict(backbone)
    kernel = backbone["patch_embed.proj.weight"].float()  # (D, C, 16, 16); C = 3 for ImageNet
    kernel = kernel.sum(dim=1, keepdim=True)  # grey input: AST sums the RGB kernels
    size = tuple(model.patch_embed.proj.weight.shape[2:])  # PI-resized only if ours is not 16x16
    kernel = resize_patch_kernel(kernel, size, interpolation, antialias)
    backbone["patch_embed.proj.weight"] = kernel

    if "dist_token" not in backbone:  # plain ViT: the distillation token starts as cls
        backbone["dist_token"] = backbone["cls_token"].clone()
        prefix = 1
    else:
        prefix = 2
    pos = backbone["pos_embed"]
    old = source_grid(pos.shape[1] - prefix, fmt, model)
    backbone["pos_embed"] = adapt_pos_embed(pos, old, model.grid, prefix)
    return backbone, f"{old[0]}x{old[1]} -> {model.grid[0]}x{model.grid[1]}"


# --- loading ----------------------------------------------------------------------------------


def load_pretrained(
    model: AST, state: dict, interpolation: str = "bilinear", antialias: bool = True,
    where: str = "state dict",
) -> dict:
    """Load a ViT/DeiT, AST or c2f state dict into `model` at its current resolution.

    Every backbone key must fit: missing, unexpected or mismatched keys raise one InitError,
    before the model is touched, naming the checkpoint's width and depth against the model's and
    the first few keys of each kind with how many more. The head is loaded when the checkpoint has
    one of our shape (an AudioSet checkpoint into a 527-class model), otherwise left fresh.
    """
    fmt = checkpoint_format(state, where)
    backbone, head, ignored = _split(state, fmt)
    backbone, pos_grid = _adapt_backbone(backbone, model, fmt, interpolation, antialias)

    ours = model.state_dict()
    if not _head_fits(head, ours):  # other classes (or none): a new head, as AST fine-tunes
        ignored += [_checkpoint_name(k, fmt) for k in head]
        head = {}
    loaded = {**backbone, **head}
    fresh = sorted(k for k in ours if k not in loaded and k.startswith(_OUR_HEAD_PREFIXES))
    _check_fit(where, model, ours, loaded, fresh)
    model.load_state_dict({**ours, **loaded})
    return dict(format=fmt, pos_grid=pos_grid, loaded=sorted(loaded), fresh=fresh,
                ignored=sorted(ignored))


def _head_fits(head: dict, ours: dict) -> bool:
    """The checkpoint has our whole head (LayerNorm + Linear) with our shapes: same classes."""
    our_head = {k for k in ours if k.startswith(_OUR_HEAD_PREFIXES)}
    return set(head) == our_head and all(v.shape == ours[k].shape for k, v in head.items())


def _checkpoint_name(key: str, fmt: str) -> str:
    """Our head key -> the checkpoint's name for it (AST: mlp_head.0 / mlp_head.1)."""
    if fmt != "ast":
        return key
    return next(a + key[len(o):] for a, o in _AST_HEAD.items() if key.startswith(o))


def _check_fit(where: str, model: AST, ours: dict, loaded: dict, fresh: list[str]) -> None:
    missing = sorted(k for k in ours if k not in loaded and k not in fresh)
    unexpected = sorted(k for k in loaded if k not in ours)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
        for k, v in sorted(loaded.items())
        if k in ours and v.shape != ours[k].shape
    ]
    if missing or unexpected or mismatched:
        cfg = model.cfg
        blocks = {k.split(".")[1] for k in loaded if k.startswith("blocks.")}
        theirs = f" (width {loaded['pos_embed'].shape[-1]}, depth {len(blocks)})" if "pos_embed" in loaded else ""

        def some(keys: list[str]) -> str:  # a few names, and how many more: a wrong width names them all
            return f"{keys[:6]}" + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        raise InitError(
            f"{where}{theirs} does not fit this AST (width {cfg.embed_dim}, depth {cfg.depth}):"
            f"\n  missing: {some(missing)}\n  unexpected: {some(unexpected)}\n  mismatched: {some(mismatched)}"
        )
