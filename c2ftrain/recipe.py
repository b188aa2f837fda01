"""Recipes: readable TOML files -> validated, nested dataclasses.

A recipe = a store + a model + data/optimiser settings + a list of phases, coarse to fine, and
the full-resolution baseline it is compared with. Shipped recipes live in c2ftrain/recipes/;
copy one and edit it. `load_recipe("demo")` takes a shipped name or a path.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from c2fdata.compress import METHODS as LOADER_METHODS
from c2fdata.pipeline.config import MASK_VALUES, MIXUP_DOMAINS  # one home for the loader's choices

# The loader's compressions, plus the Patch method, which changes the model instead of the data.
METHODS = LOADER_METHODS + ("patch",)
SCHEDULES = ("cosine", "constant", "step")
LR_SCOPES = ("phase", "run")
UNTIL = ("length", "plateau", "budget")
MIXUP_PARTNERS = ("dataset", "batch")
# torch.compile's modes; "reduce-overhead" replays each step's kernels as CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class RecipeError(ValueError):
    """A recipe that cannot run, with the key at fault and what to do."""


def _check_number(name: str, value, *, at_least: float | None = None, above: float | None = None,
                  at_most: float | None = None, integer: bool = False, optional: bool = False) -> None:
    """A recipe number in its range (a bool is not a number here, though Python counts it as one)."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RecipeError(f"{name} must be {kind}, got {value!r}")
    if at_least is not None and not value >= at_least:
        raise RecipeError(f"{name} must be {kind} >= {at_least}, got {value!r}")
    if above is not None and not value > above:
        raise RecipeError(f"{name} must be {kind} > {above}, got {value!r}")
    if at_most is not None and not value <= at_most:
        raise RecipeError(f"{name} must be {kind} <= {at_most}, got {value!r}")


@dataclass(frozen=True)
class Phase:
    method: str = "none"  # none | fshift | pool-avg | pool-max | patch
    factor: int = 1  # compression factor C along time (1 = full resolution)
    epochs: int | None = None  # length in epochs ...
    steps: int | None = None  # ... or in optimiser steps (exactly one of the two)
    lr: float | None = None  # peak learning rate (default: optim.lr); lr_scope "phase" only
    warmup_steps: int | None = None  # warm-up at the phase start (default: optim.warmup_steps); "phase" only
    reset_optimizer: bool = True  # fresh Adam moments at the phase start (False: carry them over)
    batch_size: int | None = None  # default: data.batch_size
    # Mixed resolution (FlexiViT-style): each batch draws its C from `factors` (weights:
    # `factor_weights`, default equal), e.g. [4, 2, 1], so the model never forgets full
    # resolution. `factor` must be the largest of them. Frame-Shift and Pooling only.
    factors: tuple[int, ...] = ()
    factor_weights: tuple[float, ...] = ()
    # How the phase ends: "length" (its epochs/steps); "plateau" (a coarse phase ends once its
    # own-resolution validation metric has not improved by min_delta for `patience` evaluations,
    # `epochs` at most); "budget" (the last phase: whatever the recipe's budget_full_epochs leaves)
    until: str = "length"
    patience: int = 2
    min_delta: float = 0.0

    def __post_init__(self):
        if self.until not in UNTIL:
            raise RecipeError(f"phase until must be one of {UNTIL}, got {self.until!r}")
        _check_number("phase lr", self.lr, above=0, optional=True)
        _check_number("phase warmup_steps", self.warmup_steps, at_least=0, integer=True, optional=True)
        _check_number("phase batch_size", self.batch_size, at_least=1, integer=True, optional=True)
        _check_number("phase min_delta", self.min_delta, at_least=0)
        if self.until == "budget":
            if self.epochs is not None or self.steps is not None:
                raise RecipeError("a phase with until = \"budget\" takes its length from budget_full_epochs: "
                                  "remove its epochs/steps")
            self._check_method()
            if self.factors or self.factor_weights:
                self._check_mixed()
            return
        if self.until == "plateau" and (self.epochs is None or not self.coarse):
            raise RecipeError("until = \"plateau\" is for a coarse phase (factor > 1, not mixed) with "
                              "epochs = the most it may last")
        if self.patience < 1:
            raise RecipeError(f"phase patience must be >= 1 evaluation, got {self.patience}")
        self._check_method()
        if (self.epochs is None) == (self.steps is None):
            raise RecipeError(f"a phase needs exactly one of epochs or steps, got epochs={self.epochs}, steps={self.steps}")
        if (self.epochs or self.steps or 0) < 1:
            raise RecipeError(f"phase length must be >= 1, got epochs={self.epochs}, steps={self.steps}")
        if self.factors or self.factor_weights:
            self._check_mixed()

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise RecipeError(f"phase method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise RecipeError(f"phase factor must be an integer >= 1, got {self.factor!r}")
        if self.method == "none" and self.factor != 1:
            raise RecipeError(f"method 'none' means full resolution; factor must be 1, got {self.factor}")

    def _check_mixed(self) -> None:
        where = f"phase {self.method} C={self.factor}"
        if self.method not in ("fshift", "pool-avg", "pool-max"):
            raise RecipeError(f"{where}: factors (mixed resolution) need method fshift, pool-avg or pool-max")
        if not self.factors or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.factors):
            raise RecipeError(f"{where}: factors must be a list of integers >= 1, got {list(self.factors)}")
        if self.factor != max(self.factors):
            raise RecipeError(f"{where}: factor must be the largest of factors {list(self.factors)}")
        if self.factor_weights and (len(self.factor_weights) != len(self.factors)
                                    or any(not w > 0 for w in self.factor_weights)):
            raise RecipeError(f"{where}: factor_weights must be {len(self.factors)} positive numbers, "
                              f"got {list(self.factor_weights)}")

    @property
    def mixed(self) -> bool:
        """Whether each batch draws its own C (the model then stays at full resolution)."""
        return bool(self.factors)

    @property
    def full_resolution(self) -> bool:
        return self.factor == 1

    @property
    def coarse(self) -> bool:
        """One coarse resolution for the whole phase (factor > 1, not mixed): the model trains at
        fewer tokens and can be evaluated as it trains."""
        return not self.full_resolution and not self.mixed

    @property
    def label(self) -> str:
        if self.mixed:
            return f"{self.method} C~{{{','.join(map(str, self.factors))}}}"
        return "full" if self.full_resolution else f"{self.method} C={self.factor}"


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"  # tiny | small | base (the paper's)
    embed_dim: int | None = None  # None: the preset's width / depth / heads
    depth: int | None = None
    num_heads: int | None = None
    patch_stride: tuple[int, int] = (16, 16)
    drop_path_rate: float = 0.0
    # Starting weights (c2ftrain/init_weights.py, docs/RECIPES.md): "none" (from scratch),
    # "timm:<model name>" (ImageNet through timm: pip install c2f[timm]), or the path of a
    # state_dict file (timm-named ViT/DeiT, AST AudioSet checkpoint). Files and timm are looked
    # for when training starts, not here: every recipe loads without the weights.
    init: str = "none"
    # Deprecated alias of `init`, read so that run directories made before `init` existed
    # (config.json keeps the recipe) still resume: "" means "none". Moved into `init` on load.
    init_checkpoint: str | None = None
    interpolation: str = "bilinear"  # pos-embed resampling between phases: bilinear | bicubic
    antialias: bool = True
    # torch.compile the train step's model in this mode, or "none". On a GPU at AST's batch of 12
    # an eager step is bound by launching kernels at every resolution, so a coarse phase saves
    # little time; "reduce-overhead" (CUDA graphs) made the C=4 step 2.9x faster than full
    # resolution on an H200 (docs/BENCHMARKS.md). Each phase compiles anew (its own shapes), and
    # so does an epoch's shorter last batch, once: that time counts as training time.
    # Evaluation stays eager.
    compile: str = "none"

    def __post_init__(self):
        if self.compile != "none" and self.compile not in COMPILE_MODES:
            raise RecipeError(f"model.compile must be \"none\" or one of {', '.join(COMPILE_MODES)}, "
                              f"got {self.compile!r}")
        init = self._init_from_alias() if self.init_checkpoint is not None else self.init
        if not isinstance(init, str) or not init.strip() or init != init.strip():
            raise RecipeError(
                f"model.init must be \"none\" (from scratch), \"timm:<model name>\" or the path of a "
                f"state_dict file; got {init!r}"
            )
        if init.startswith("timm:") and not init[len("timm:"):].strip():
            raise RecipeError("model.init = \"timm:\" names no model, e.g. \"timm:deit_base_distilled_patch16_384\"")
        object.__setattr__(self, "init", init)  # frozen: the alias is folded in once, here
        object.__setattr__(self, "init_checkpoint", None)

    def _init_from_alias(self) -> str:
        """`init` from the deprecated `init_checkpoint` ("" meant: no checkpoint), with a warning."""
        import warnings

        if not isinstance(self.init_checkpoint, str):
            raise RecipeError(f"model.init_checkpoint must be a string, got {self.init_checkpoint!r}")
        legacy = self.init_checkpoint.strip() or "none"
        if self.init != "none" and legacy not in ("none", self.init):
            raise RecipeError(f"model.init = {self.init!r} and the deprecated model.init_checkpoint = "
                              f"{self.init_checkpoint!r} disagree; keep only init")
        init = self.init if self.init != "none" else legacy
        warnings.warn(f"model.init_checkpoint is deprecated: write init = {init!r} in [model] instead "
                      f"(\"none\" = from scratch)", FutureWarning, stacklevel=2)
        return init


@dataclass(frozen=True)
class DataSpec:
    batch_size: int = 64  # global: under DDP each of W ranks takes batch_size / W (AST's 12 is global)
    eval_split: str = "eval"
    # default: the store's train split; a list trains on their union, read as one split
    # (AudioSet full: ["balanced_train", "unbalanced_train"]; sampling weights over the union)
    train_split: str | tuple[str, ...] | None = None
    extra_eval_splits: tuple[str, ...] = ()  # also evaluated at the end of each run
    backend: str = "auto"  # dali | torch | auto
    device: str = "auto"  # cpu | gpu | auto (gpu where CUDA is)
    num_workers: int = 2
    num_threads: int = 2
    random_crop: bool = True
    random_offset: bool = True  # Frame-Shift: random first frame in [0, C)
    freq_mask_bins: int = 0  # SpecAugment (AST AudioSet: 48)
    time_mask_frames: int = 0  # in 10 ms frames, scaled by 1/C (AST AudioSet: 192)
    # a masked cell: "ast", the normalised value of log-mel 0 (AST masks before normalising:
    # +0.467 with AudioSet's constants); "zero": 0 after normalisation (the mean)
    mask_value: str = "ast"
    mixup: float = 0.0  # probability of mixing a sample (AST AudioSet: 0.5)
    mixup_alpha: float = 10.0  # Beta(alpha, alpha) mixing weights, as AST
    # "dataset" (AST's): the partner is a clip drawn from the whole training set, mixed in the
    # loader before crop, compression, normalisation and SpecAugment; "batch": another sample of
    # the batch, mixed by the trainer on the served (compressed, normalised, masked) features
    mixup_partner: str = "dataset"
    # "features": l*a + (1-l)*b of log-mel values; "power": log(l e^a + (1-l) e^b), the mel power
    # spectra mixed, closer to AST's waveform mixing; "power" needs mixup_partner = "dataset"
    mixup_domain: str = "features"
    balanced: bool = False  # AudioSet balanced sampling: per label 1000 / (count + 0.01), as AST
    samples_per_epoch: int | None = None  # with balanced sampling
    # AST's normalisation (x - mean) / (2 std) with fixed constants (AudioSet -4.2677393 /
    # 4.5689974, ESC-50 -6.6268077 / 5.358466); unset: the store's own train-split statistics
    norm_mean: float | None = None
    norm_std: float | None = None
    # frames per training/eval clip at full resolution; unset: the store's length. Shorter than the
    # store: a random crop while training (random_crop), the first frames at evaluation
    target_frames: int | None = None
    # dtype of the features the loader hands over: float32, or float16 / bfloat16 (half the bytes
    # to copy; a bf16-autocast model on the GPU casts float32 input anyway)
    output_dtype: str = "float32"
    # a clip whose checksum fails: "skip" it (a warning; counted as skipped_clips) or "raise"
    on_corrupt: str = "skip"

    def __post_init__(self):
        self._check_augmentation()
        if self.train_split is not None:
            from c2fdata.pipeline.splits import split_names

            try:
                names = split_names(self.train_split)
            except ValueError as err:
                raise RecipeError(f"data.train_split: {err}") from None
            object.__setattr__(self, "train_split", names[0] if len(names) == 1 else names)
        if self.on_corrupt not in ("skip", "raise"):
            raise RecipeError(f"data.on_corrupt must be \"skip\" or \"raise\", got {self.on_corrupt!r}")
        if self.output_dtype not in ("float32", "float16", "bfloat16"):
            raise RecipeError(f"data.output_dtype must be float32, float16 or bfloat16, got {self.output_dtype!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise RecipeError("data.norm_mean and data.norm_std go together (or neither: the store's statistics)")
        if self.norm_std is not None and not self.norm_std > 0:
            raise RecipeError(f"data.norm_std must be > 0, got {self.norm_std}")
        if self.target_frames is not None and self.target_frames < 1:
            raise RecipeError(f"data.target_frames must be >= 1, got {self.target_frames}")
        if self.batch_size < 1:
            raise RecipeError(f"data.batch_size must be >= 1, got {self.batch_size}")

    def _check_augmentation(self) -> None:
        if self.mask_value not in MASK_VALUES:
            raise RecipeError(f"data.mask_value must be \"ast\" or \"zero\", got {self.mask_value!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise RecipeError(f"data.mixup is a probability, got {self.mixup}")
        if self.mixup and not self.mixup_alpha > 0:
            raise RecipeError(f"data.mixup_alpha must be > 0 (Beta(alpha, alpha)), got {self.mixup_alpha}")
        if self.mixup_partner not in MIXUP_PARTNERS:
            raise RecipeError(f"data.mixup_partner must be \"dataset\" or \"batch\", got {self.mixup_partner!r}")
        if self.mixup_domain not in MIXUP_DOMAINS:
            raise RecipeError(f"data.mixup_domain must be \"features\" or \"power\", got {self.mixup_domain!r}")
        if self.mixup_domain == "power" and self.mixup_partner != "dataset":
            raise RecipeError("data.mixup_domain = \"power\" mixes log-mel values before normalisation, in the "
                              "loader: it needs mixup_partner = \"dataset\" (\"batch\" mixes the served, "
                              "normalised features)")


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3
    betas: tuple[float, float] = (0.95, 0.999)  # AST's
    weight_decay: float = 5e-7  # AST's
    # which parameters decay: "matrices" (not biases, norms, tokens, the positional table: the
    # usual ViT practice) or "all" (AST's Adam: weight decay on every parameter)
    decay: str = "matrices"
    warmup_steps: int = 0  # linear warm-up over the first steps of the scope
    schedule: str = "cosine"  # cosine | constant | step
    # "phase": the schedule (warm-up included) restarts at every phase; "run": one schedule over
    # all phases together, warm-up once, so coarse-to-fine and its baseline see the same learning
    # rate at the same epoch when they train for as many epochs.
    lr_scope: str = "phase"
    min_lr_ratio: float = 0.01  # cosine ends at lr * this
    # step: AST's MultiStepLR(milestones=range(start, inf, every), gamma=step_decay), stepped after
    # each epoch: lr * step_decay ** (milestones <= finished epochs of the scope). AST full
    # AudioSet: 2 / 1 / 0.5; balanced AudioSet: 10 / 5 / 0.5; ESC-50: 5 / 1 / 0.85.
    step_decay_start: int = 2
    step_decay_every: int = 1
    step_decay: float = 0.5
    clip_grad_norm: float | None = 1.0  # 0: no clipping (AST clips nothing)
    # torch's fused Adam(W): the whole update in one kernel instead of a few per parameter group.
    # Fewer kernel launches on a GPU, where a small coarse step is launch-bound (docs/GPU.md); the
    # same update up to rounding. Off by default until measured to help.
    fused: bool = False

    def __post_init__(self):
        if not isinstance(self.fused, bool):
            raise RecipeError(f"optim.fused must be true or false, got {self.fused!r}")
        _check_number("optim.lr", self.lr, above=0)
        _check_number("optim.weight_decay", self.weight_decay, at_least=0)
        _check_number("optim.warmup_steps", self.warmup_steps, at_least=0, integer=True)
        _check_number("optim.min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1)
        _check_number("optim.clip_grad_norm", self.clip_grad_norm, at_least=0, optional=True)
        if len(self.betas) != 2:
            raise RecipeError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        for b in self.betas:
            _check_number("each of optim.betas", b, at_least=0)
            if not b < 1:
                raise RecipeError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.decay not in ("matrices", "all"):
            raise RecipeError(f"optim.decay must be \"matrices\" or \"all\", got {self.decay!r}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.lr_scope not in LR_SCOPES:
            raise RecipeError(f"optim.lr_scope must be one of {LR_SCOPES}, got {self.lr_scope!r}")
        if self.name not in ("adam", "adamw"):
            raise RecipeError(f"optim.name must be adam or adamw, got {self.name!r}")
        if self.step_decay_start < 1 or self.step_decay_every < 1:
            raise RecipeError(f"optim.step_decay_start and step_decay_every must be >= 1 (epochs), got "
                              f"{self.step_decay_start}, {self.step_decay_every}")
        if not 0 < self.step_decay <= 1:
            raise RecipeError(f"optim.step_decay must be in (0, 1], got {self.step_decay}")


@dataclass(frozen=True)
class EvalSpec:
    every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    batch_size: int | None = None
    # Weight averaging as AST reports it: the mean of the (full-resolution) weights at the end of
    # run epochs first..last, 1-based and inclusive (AST: balanced AudioSet [6, 25], full [1, 5]),
    # evaluated beside the final model ("averaged/..." metrics, final_averaged.pt). [] = off.
    average_epochs: tuple[int, ...] = ()
    # A coarse phase's evaluations measure the model twice: at the phase's own resolution (what
    # until = "plateau" watches) and as a full-resolution copy (how well it would transfer). The
    # second costs a full-resolution forward pass over the eval split, more than a coarse
    # training epoch where the eval split is as large as the training split (balanced AudioSet).
    # False: only the phase's last evaluation also runs at full resolution.
    full_resolution_during_coarse: bool = True

    def evaluates(self, phase_epoch: int, last: bool) -> bool:
        """Whether the trainer evaluates after epoch `phase_epoch` (1-based, within its phase)."""
        return last or phase_epoch % self.every_epochs == 0

    def at_full_resolution(self, phase: Phase, last: bool) -> bool:
        """Whether such an evaluation has its full-resolution pass (a coarse phase that ends at a
        plateau gets it too, once the plateau is known)."""
        return last or not phase.coarse or self.full_resolution_during_coarse

    def __post_init__(self):
        _check_number("eval.every_epochs", self.every_epochs, at_least=1, integer=True)
        _check_number("eval.checkpoint_every_steps", self.checkpoint_every_steps, at_least=0, integer=True)
        _check_number("eval.batch_size", self.batch_size, at_least=1, integer=True, optional=True)
        if not isinstance(self.full_resolution_during_coarse, bool):
            raise RecipeError(f"eval.full_resolution_during_coarse must be true or false, got "
                              f"{self.full_resolution_during_coarse!r}")
        if self.average_epochs and (len(self.average_epochs) != 2 or not 1 <= self.average_epochs[0]
                                    <= self.average_epochs[1]):
            raise RecipeError(f"eval.average_epochs must be [first, last] with 1 <= first <= last, "
                              f"got {list(self.average_epochs)}")


@dataclass(frozen=True)
class BaselineSpec:
    phases: tuple[Phase, ...] = ()  # default: one full-resolution phase as long as all phases together
    equal_flops: bool = False  # also train full resolution for the FLOPs coarse-to-fine used


@dataclass(frozen=True)
class CvSpec:
    """Cross-validation (`c2ftrain cv`): the experiment once per held-out fold K, the folds laid
    out in one of two ways; exactly one of `split` and `store` names fold K with "{fold}":

    - fold splits of one store, `split = "fold{fold}"`: fold K trains on the other folds' splits
      (its data.train_split) and evaluates on its own (data.eval_split), all in `store` (default:
      the recipe's; ESC-50: `c2fdata build --dataset esc50 --fold 0`, each clip stored once);
    - one store per fold, `store = "stores/esc50-fold{fold}"`: fold K reads its own store, which
      holds it out (`c2fdata build --dataset esc50 --fold K`), with the recipe's data splits.

    folds = 0: the recipe has no folds."""

    folds: int = 0  # folds 1..folds, each held out once (AST's ESC-50: 5)
    split: str = ""  # the split of fold K in the recipe's store, e.g. "fold{fold}"
    # the store of fold K, e.g. "stores/esc50-fold{fold}"; with `split`, the one store of every
    # fold, unset meaning the recipe's (filled in by Recipe: store_of names it in either layout)
    store: str = ""

    def __post_init__(self):
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 0:
            raise RecipeError(f"cv.folds must be an integer >= 0, got {self.folds!r}")
        if not isinstance(self.split, str) or not isinstance(self.store, str):
            raise RecipeError(f"cv.split and cv.store are strings, got {self.split!r}, {self.store!r}")
        if not self.folds:
            if self.store or self.split:
                raise RecipeError("cv.split or cv.store without cv.folds: say how many folds there are")
            return
        per_split, per_store = "{fold}" in self.split, "{fold}" in self.store
        if per_split == per_store:
            raise RecipeError(
                "[cv] names each fold with {fold} in exactly one of split = \"fold{fold}\" (fold splits "
                "of one store, `c2fdata build --dataset esc50 --fold 0`) or store = \"stores/esc50-fold{fold}\" "
                f"(one store per held-out fold, `--fold K`); got split = {self.split!r}, store = {self.store!r}")
        if self.split and not per_split:
            raise RecipeError(f"cv.split must name each fold's split with {{fold}}, e.g. \"fold{{fold}}\"; "
                              f"got {self.split!r}")
        if per_split and self.folds < 2:
            raise RecipeError(f"cv.split needs cv.folds >= 2: a fold trains on the other folds' splits; "
                              f"got {self.folds}")

    @property
    def fold_splits(self) -> bool:
        """Whether the folds are splits of one store (else: one store per fold)."""
        return bool(self.split)

    def _check_fold(self, fold: int) -> None:
        if not 1 <= fold <= self.folds:
            raise RecipeError(f"fold {fold} is not one of the recipe's folds 1..{self.folds}")

    def store_of(self, fold: int) -> str:
        self._check_fold(fold)
        return self.store.replace("{fold}", str(fold))

    def split_of(self, fold: int) -> str:
        """The split of fold K in the one store (fold-splits layout only)."""
        self._check_fold(fold)
        if not self.fold_splits:
            raise RecipeError("cv.split is not set: the folds are one store each (cv.store)")
        return self.split.replace("{fold}", str(fold))


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
    cv: CvSpec = field(default_factory=CvSpec)
    seed: int = 0
    description: str = ""
    # The run's training FLOPs in full-resolution epochs (e.g. 4.25: what 5 epochs at C = 4 and 3
    # at full resolution cost); the phase with until = "budget" gets what the others leave.
    budget_full_epochs: float | None = None

    def __post_init__(self):
        if not self.phases:
            raise RecipeError("a recipe needs at least one [[phases]] entry")
        if not self.phases[-1].full_resolution:
            raise RecipeError(
                f"the last phase must run at full resolution (factor 1) so that the final model is an "
                f"ordinary AST; it is {self.phases[-1].label}. Add a [[phases]] with method='none'."
            )
        if self.data.backend not in ("auto", "dali", "torch") or self.data.device not in ("auto", "cpu", "gpu"):
            raise RecipeError(f"data.backend/device invalid: {self.data.backend!r}, {self.data.device!r}")
        if self.optim.lr_scope == "run":
            for i, p in enumerate(self.phases + self.baseline.phases):
                if p.lr is not None or p.warmup_steps is not None:
                    raise RecipeError(
                        f"phase {i + 1} ({p.label}) sets lr/warmup_steps, but optim.lr_scope = \"run\" runs one "
                        f"schedule over all phases (optim.lr, optim.warmup_steps); remove them or use lr_scope = \"phase\""
                    )
        self._check_endings()
        self._fill_cv_store()
        if self.baseline.phases and not self.baseline.phases[-1].full_resolution:
            raise RecipeError("the baseline's last phase must be full resolution")

    def _fill_cv_store(self) -> None:
        """Fold splits without a cv.store are read from the recipe's store (frozen: set once)."""
        if self.cv.fold_splits and not self.cv.store:
            object.__setattr__(self, "cv", dataclasses.replace(self.cv, store=self.store))

    def _check_endings(self) -> None:
        budget = [i for i, p in enumerate(self.phases) if p.until == "budget"]
        # budget_full_epochs without a budget phase is inert (as mixup settings without mixup), so
        # that `--set phases=[...]` with fixed lengths works on a recipe that sets a budget
        if budget and self.budget_full_epochs is None:
            raise RecipeError("a last phase with until = \"budget\" needs budget_full_epochs (the run's "
                              "FLOPs, in full-resolution epochs)")
        if budget and budget != [len(self.phases) - 1]:
            raise RecipeError("only the last phase may take until = \"budget\"")
        if self.budget_full_epochs is not None and not self.budget_full_epochs > 0:
            raise RecipeError(f"budget_full_epochs must be > 0, got {self.budget_full_epochs}")
        adaptive = budget or any(p.until == "plateau" for p in self.phases)
        if adaptive and not self.baseline.phases:
            raise RecipeError("a recipe whose phases end by plateau or budget needs explicit [baseline] phases")
        if any(p.until == "plateau" for p in self.phases) and self.eval.every_epochs != 1:
            raise RecipeError("until = \"plateau\" watches every epoch's evaluation: set eval.every_epochs = 1")

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
        """Every phase leaves at least one patch of frames: a clear error naming the phase. A
        SpecAugment mask no wider than what it masks (a recipe's 48 bins on a 40-mel store
        would mask every bin of some clips, silently)."""
        if self.data.freq_mask_bins >= n_mels:  # widths are drawn from 0..max, max included
            raise RecipeError(f"data.freq_mask_bins {self.data.freq_mask_bins} is not less than the store's {n_mels} "
                              "mel bins: a mask as wide as the spectrum blanks whole clips; give a fraction of it "
                              "(AST: 48 of 128)")
        if self.data.time_mask_frames >= target_frames:
            raise RecipeError(f"data.time_mask_frames {self.data.time_mask_frames} is not less than the "
                              f"{target_frames} frames a clip has; give a fraction of it (AST: 192 of 1,024)")
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
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        if isinstance(v, list) and k not in ("phases",):
            v = tuple(v)
        if isinstance(v, float) and v.is_integer() and _fits(int(v), hints[k]) and not _fits(v, hints[k]):
            v = int(v)  # an integer written as 1e3 or 2.0
        if not _fits(v, hints[k]):
            shown = list(v) if isinstance(v, tuple) else v
            raise RecipeError(f"[{where}] {k}: expected {_type_name(hints[k])}, got {shown!r}{_toml_hint(v)}")
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise RecipeError(f"[{where}]: {err}") from None
    except RecipeError as err:
        if ".phases." in f".{where}":  # which of the phases (the run's or the baseline's): their checks cannot know
            raise RecipeError(f"[{where}] {err}") from None
        raise


def _fits(value, hint) -> bool:
    """Whether a recipe value has its field's type: a bool is no number and a number no bool,
    an int is a float, a list was made a tuple (checked element by element)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
            return f"a list of {plural.get(args[0], _type_name(args[0]))}"
        return f"a list [{', '.join(_type_name(a) for a in args)}]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "nothing (leave it out)"}.get(hint, getattr(hint, "__name__", str(hint)))


def _toml_hint(value) -> str:
    """What was probably meant, for a value that `--set` took as a bare string."""
    if not isinstance(value, str):
        return ""
    if value in ("True", "False", "TRUE", "FALSE", "yes", "no", "on", "off"):
        return " (TOML's booleans are lowercase: true or false)"
    try:
        float(value)
    except ValueError:
        return ""
    return " (a number as TOML writes it: 0.5, not .5 or 5.)"


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
            "cv": _build(CvSpec, d.pop("cv", {}), "cv"),
        }
        return _build(Recipe, {**d, "phases": phases, **parts}, "recipe")
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(str(err)) from None


def shipped_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("c2ftrain").joinpath("recipes").iterdir()
                  if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path, overrides: dict | None = None, *,
                origins: dict[str, str] | None = None) -> Recipe:
    """A shipped recipe by name ('demo', 'audioset_balanced', ...) or a TOML file by path, with
    `overrides` applied; `origins` names where an override key came from in its errors (default
    "--set"; a sweep's cell keys come from its grid file)."""
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
    origin = {k: (origins or {}).get(k, "--set") for k in overrides or {}}
    lengths: set[str] = set()  # a phase's epochs and steps in one set of overrides: the later would undo the other
    for key in overrides or {}:
        *path, leaf = key.split(".")
        if leaf in PHASE_LENGTHS and _is_phase(path):
            if (other := ".".join([*path, PHASE_LENGTHS[leaf]])) in lengths:
                raise RecipeError(f"{origin[other]} {other} and {origin[key]} {key}: a phase is as long as its epochs "
                                  "or its steps say, not both; give one (it replaces the other)")
            lengths.add(key)
    for key, value in (overrides or {}).items():
        apply_override(d, key, value, origin[key])
    changed = [k for k in overrides or {} if k not in NOT_COMPARED]  # a seed or name changes no setting
    if changed and d.get("description") and "description" not in (overrides or {}):
        # The description was written for the recipe's own settings ("<= 14 epochs"): printed
        # unchanged after `--set phases.1.epochs=2` it would describe a run that is not this one.
        d["description"] += " (as written; since changed: " + ", ".join(
            f"{k}={json.dumps(overrides[k], default=str)}" for k in changed) + ")"
    return recipe_from_dict(d)


def apply_override(d: dict, key: str, value, origin: str = "--set") -> None:
    """Set `key` ("optim.lr", "phases.1.factor": a 1-based index into a list of tables) in the
    recipe dict `d`; RecipeError naming the key when it does not address anything. A table value
    for a table (or list) already there is merged into it key by key: `set = { optim.lr = 5e-4 }`
    in a grid file (TOML's dotted key makes {"optim": {"lr": 5e-4}}) or `--set 'optim={lr=5e-4}'`
    change the learning rate only, and do not put the rest of [optim] back to its defaults.
    `origin` is where the key was given, for the error ("--set", a grid file's cell)."""
    if isinstance(value, dict) and value:
        if PHASE_LENGTHS.keys() <= value.keys() and _is_phase(key.split(".")):
            raise RecipeError(f"{origin} {key}: a phase is as long as its epochs or its steps say, not both; "
                              f"give one (it replaces the other)")
        existing = _addressed(d, key)
        if isinstance(existing, (dict, list)):
            for k, v in value.items():
                apply_override(d, f"{key}.{k}", v, origin)
            return
    *path, leaf = key.split(".")
    target = d
    for i, part in enumerate(path + [leaf]):
        where = ".".join(path[:i]) or "the recipe"
        if not isinstance(target, (list, dict)):
            raise RecipeError(f"{origin} {key}: {where} is a value, not a table")
        if isinstance(target, dict) and part.isdigit() and part not in target:
            # phases.1.x where no list is there yet: a table named "1" would be made silently
            raise RecipeError(f"{origin} {key}: {where} has no list to index with {part}; set the whole list, "
                              f"e.g. --set '{where}=[{{method = \"none\", factor = 1, epochs = 3}}]'")
        if i == len(path):
            break
        target = (target[_list_index(target, part, key, origin)] if isinstance(target, list)
                  else target.setdefault(part, {}))
    if isinstance(target, list):
        target[_list_index(target, leaf, key, origin)] = value
    elif isinstance(target, dict):
        target[leaf] = value
        if leaf in PHASE_LENGTHS and _is_phase(path):  # a phase is as long as one of them says: the
            target.pop(PHASE_LENGTHS[leaf], None)    # one set replaces the other (steps for epochs)
    else:
        raise RecipeError(f"{origin} {key}: {'.'.join(path)} is a value, not a table")


PHASE_LENGTHS = {"epochs": "steps", "steps": "epochs"}


def _is_phase(path: list[str]) -> bool:
    """Whether a key's path (without its last part) addresses one phase: phases.N, baseline.phases.N."""
    return path[-2:-1] == ["phases"] and path[-1].isdigit() and path[:-2] in ([], ["baseline"])


def _addressed(d: dict, key: str):
    """What `key` addresses in the recipe dict now, or None."""
    target = d
    for part in key.split("."):
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and 1 <= int(part) <= len(target):
            target = target[int(part) - 1]
        else:
            return None
    return target


def _list_index(items: list, part: str, key: str, origin: str) -> int:
    if not part.isdigit() or not 1 <= int(part) <= len(items):
        raise RecipeError(f"{origin} {key}: {part!r} is not an entry 1..{len(items)} of the list")
    return int(part) - 1


NOT_COMPARED = ("seed", "name", "description")  # what seeds of one experiment may differ in


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(a: Recipe, b: Recipe) -> list[str]:
    """`key: A vs B` for every setting (the seed, name and description apart) where b differs from a."""
    fa, fb = (_flat({k: v for k, v in r.to_dict().items() if k not in NOT_COMPARED}) for r in (a, b))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
