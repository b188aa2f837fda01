"""Recipes: readable TOML files -> validated, nested dataclasses.

A recipe = a store + a model + data/optimiser settings + a list of phases, coarse to fine, and
the full-resolution baseline it is compared with. Shipped recipes live in c2ftrain/recipes/;
copy one and edit it. `load_recipe("demo")` takes a shipped name or a path.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from c2fdata.compress import METHODS as LOADER_METHODS

METHODS = ("none", "fshift", "pool-avg", "pool-max", "patch")
SCHEDULES = ("cosine", "constant", "step")


class RecipeError(ValueError):
    """A recipe that cannot run, with the key at fault and what to do."""


@dataclass(frozen=True)
class Phase:
    method: str = "none"  # none | fshift | pool-avg | pool-max | patch
    factor: int = 1  # compression factor C along time (1 = full resolution)
    epochs: int | None = None  # length in epochs ...
    steps: int | None = None  # ... or in optimiser steps (exactly one of the two)
    lr: float | None = None  # peak learning rate (default: optim.lr)
    warmup_steps: int | None = None  # linear warm-up at the phase start (default: optim.warmup_steps)
    reset_optimizer: bool = True  # fresh Adam moments at the phase start (False: carry them over)
    batch_size: int | None = None  # default: data.batch_size

    def __post_init__(self):
        if self.method not in METHODS:
            raise RecipeError(f"phase method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise RecipeError(f"phase factor must be an integer >= 1, got {self.factor!r}")
        if self.method == "none" and self.factor != 1:
            raise RecipeError(f"method 'none' means full resolution; factor must be 1, got {self.factor}")
        if (self.epochs is None) == (self.steps is None):
            raise RecipeError(f"a phase needs exactly one of epochs or steps, got epochs={self.epochs}, steps={self.steps}")
        if (self.epochs or self.steps or 0) < 1:
            raise RecipeError(f"phase length must be >= 1, got epochs={self.epochs}, steps={self.steps}")

    @property
    def full_resolution(self) -> bool:
        return self.factor == 1

    @property
    def loader_method(self) -> tuple[str, int]:
        """What the loader serves: the Patch method keeps full-resolution input."""
        if self.method == "patch" or self.factor == 1:
            return "none", 1
        return self.method, self.factor

    @property
    def label(self) -> str:
        return "full" if self.full_resolution else f"{self.method} C={self.factor}"


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"  # tiny | small | base (the paper's)
    embed_dim: int | None = None  # None: the preset's width / depth / heads
    depth: int | None = None
    num_heads: int | None = None
    patch_stride: tuple[int, int] = (16, 16)
    drop_path_rate: float = 0.0
    init_checkpoint: str | None = None  # a DeiT/ViT state_dict on disk (never a download)
    interpolation: str = "bilinear"  # pos-embed resampling between phases: bilinear | bicubic
    antialias: bool = True


@dataclass(frozen=True)
class DataSpec:
    batch_size: int = 64
    eval_split: str = "eval"
    train_split: str | None = None  # default: the store's train split
    extra_eval_splits: tuple[str, ...] = ()  # also evaluated at the end of each run
    backend: str = "auto"  # dali | torch | auto
    device: str = "auto"  # cpu | gpu | auto (gpu where CUDA is)
    num_workers: int = 2
    num_threads: int = 2
    random_crop: bool = True
    random_offset: bool = True  # Frame-Shift: random first frame in [0, C)
    freq_mask_bins: int = 0  # SpecAugment (AST AudioSet: 48)
    time_mask_frames: int = 0  # in 10 ms frames, scaled by 1/C (AST AudioSet: 192)
    mixup: float = 0.0  # probability of mixing a batch (AST AudioSet: 0.5)
    mixup_alpha: float = 10.0  # Beta(alpha, alpha) mixing weights, as AST
    balanced: bool = False  # AudioSet balanced sampling (METHOD.md weights)
    samples_per_epoch: int | None = None  # with balanced sampling


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3
    betas: tuple[float, float] = (0.95, 0.999)  # AST's
    weight_decay: float = 5e-7  # AST's
    warmup_steps: int = 0
    schedule: str = "cosine"  # per phase: cosine | constant | step
    min_lr_ratio: float = 0.01  # cosine ends at lr * this
    step_decay_from_epoch: int = 2  # step: halve from this epoch of the phase on (AST full AudioSet)
    step_decay: float = 0.5
    clip_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class EvalSpec:
    every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    batch_size: int | None = None


@dataclass(frozen=True)
class BaselineSpec:
    phases: tuple[Phase, ...] = ()  # default: one full-resolution phase as long as all phases together
    equal_flops: bool = False  # also train full resolution for the FLOPs coarse-to-fine used


@dataclass(frozen=True)
class Recipe:
    name: str
    store: str
    phases: tuple[Phase, ...]
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    seed: int = 0
    description: str = ""

    def __post_init__(self):
        if not self.phases:
            raise RecipeError("a recipe needs at least one [[phases]] entry")
        if not self.phases[-1].full_resolution:
            raise RecipeError(
                f"the last phase must run at full resolution (factor 1) so that the final model is an "
                f"ordinary AST; it is {self.phases[-1].label}. Add a [[phases]] with method='none'."
            )
        if self.optim.schedule not in SCHEDULES:
            raise RecipeError(f"optim.schedule must be one of {SCHEDULES}, got {self.optim.schedule!r}")
        if self.optim.name not in ("adam", "adamw"):
            raise RecipeError(f"optim.name must be adam or adamw, got {self.optim.name!r}")
        if not 0.0 <= self.data.mixup <= 1.0:
            raise RecipeError(f"data.mixup is a probability, got {self.data.mixup}")
        if self.data.backend not in ("auto", "dali", "torch") or self.data.device not in ("auto", "cpu", "gpu"):
            raise RecipeError(f"data.backend/device invalid: {self.data.backend!r}, {self.data.device!r}")
        for p in self.phases + self.baseline.phases:
            if p.method != "patch" and p.method not in LOADER_METHODS:
                raise RecipeError(f"unknown method {p.method!r}")
        if self.baseline.phases and not self.baseline.phases[-1].full_resolution:
            raise RecipeError("the baseline's last phase must be full resolution")

    @property
    def baseline_phases(self) -> tuple[Phase, ...]:
        """The full-resolution run compared against: as many epochs/steps as all phases together."""
        if self.baseline.phases:
            return self.baseline.phases
        if all(p.epochs is not None for p in self.phases):
            return (Phase(method="none", factor=1, epochs=sum(p.epochs for p in self.phases)),)
        if all(p.steps is not None for p in self.phases):
            return (Phase(method="none", factor=1, steps=sum(p.steps for p in self.phases)),)
        raise RecipeError("phases mix epochs and steps: give [baseline] phases explicitly")

    def check_against(self, target_frames: int, n_mels: int, patch_size=(16, 16)) -> None:
        """Every phase leaves at least one patch of frames: a clear error naming the phase."""
        for i, p in enumerate(self.phases + self.baseline_phases):
            if p.method == "patch":
                frames, need = target_frames, patch_size[1] * p.factor
            else:
                frames, need = target_frames // p.factor, patch_size[1]
            if frames < need:
                raise RecipeError(
                    f"phase {i + 1} ({p.label}): {target_frames} frames / C = {frames} frames, fewer "
                    f"than one {need}-frame patch; use a smaller factor (at most {target_frames // patch_size[1]})"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"[{where}] must be a table, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise RecipeError(f"[{where}]: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and k not in ("phases",):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise RecipeError(f"[{where}]: {err}") from None


def recipe_from_dict(d: dict, base_dir: Path | None = None) -> Recipe:
    d = dict(d)
    try:
        phases = tuple(_build(Phase, p, f"phases.{i + 1}") for i, p in enumerate(d.pop("phases", [])))
        baseline = dict(d.pop("baseline", {}))
        baseline["phases"] = tuple(_build(Phase, p, f"baseline.phases.{i + 1}")
                                   for i, p in enumerate(baseline.get("phases", [])))
        parts = {
            "model": _build(ModelSpec, d.pop("model", {}), "model"),
            "data": _build(DataSpec, d.pop("data", {}), "data"),
            "optim": _build(OptimSpec, d.pop("optim", {}), "optim"),
            "eval": _build(EvalSpec, d.pop("eval", {}), "eval"),
            "baseline": _build(BaselineSpec, baseline, "baseline"),
        }
        recipe = _build(Recipe, {**d, "phases": phases}, "recipe")
        return dataclasses.replace(recipe, **parts)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(str(err)) from None


def shipped_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("c2ftrain").joinpath("recipes").iterdir()
                  if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path, overrides: dict | None = None) -> Recipe:
    """A shipped recipe by name ('demo', 'audioset_balanced', ...) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        res = resources.files("c2ftrain").joinpath("recipes", f"{name_or_path}.toml")
        if not res.is_file():
            raise RecipeError(f"no recipe {str(name_or_path)!r}: not a .toml path, and shipped recipes are "
                              f"{', '.join(shipped_recipes())}")
        text = res.read_text()
    else:
        if not path.is_file():
            raise RecipeError(f"recipe file {path} not found")
        text = path.read_text()
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{name_or_path}: invalid TOML: {err}") from None
    for key, value in (overrides or {}).items():
        section, _, leaf = key.rpartition(".")
        target = d
        for part in filter(None, section.split(".")):
            target = target.setdefault(part, {})
        target[leaf] = value
    return recipe_from_dict(d)
