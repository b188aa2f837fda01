"""The phase-by-phase training loop: phases -> epochs -> steps.

`PhaseTrainer(recipe, phases, out_dir, label).run()` trains one model through a list of phases
(coarse-to-fine, or the full-resolution baseline), evaluates at full resolution after every
epoch, checkpoints atomically, and resumes exactly from its last checkpoint. How a phase starts
(resolution, optimiser, loader) is in phases.py; the learning rate in schedule.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from c2fdata.pipeline import PipelineConfig, make_loader, open_reader
from c2fdata.reader import StoreReader
from c2ftrain.checkpoint import load_checkpoint, save_checkpoint
from c2ftrain.distributed import Dist, gather_cat
from c2ftrain.evaluate import absolute_store, evaluate_loader
from c2ftrain.metrics import metric_name
from c2ftrain.init_weights import initialise
from c2ftrain.inputs import ModelInputs
from c2ftrain.model import AST, ASTConfig, ast_config
from c2ftrain.phases import (Resolution, batch_factor, compress_batch, flops_per_sample, full_resolution,
                             loader_phase, resolution, start_phase)
from c2ftrain.recipe import Phase, Recipe
from c2ftrain.schedule import EpochShape, Span, lr_at, spans

CHECKPOINT_FORMAT = "c2f-checkpoint-1"
LOG_EVERY_STEPS = 20  # a "step" event (loss, lr) for the console every so many steps
# Mixup draws come from a generator seeded by (seed, step): seed * MIXUP_SEED_STRIDE + step, a
# prime stride so that no two (seed, step) pairs of a realistic run share a generator.
MIXUP_SEED_STRIDE = 1_000_003


class StoreChangedError(ValueError):
    """A run taken up again (a checkpoint, a finished run, a run directory) against a store other
    than the one it was trained on."""


def check_same_store(recorded_in: Path, was: str | None, now: str | None, store) -> None:
    """StoreChangedError where `recorded_in` (config.json, outcome.json, a checkpoint) recorded the
    fingerprint `was` and the store at `store` has another (`now`, None for a store written
    before fingerprints: then it cannot be the recorded one). A record without one (written
    before fingerprints were) vouches for nothing and is let through. Mixing two stores in one run
    or one report would mix two datasets silently."""
    if was is None or was == now:
        return
    has = "has no fingerprint" if now is None else f"has fingerprint {now[:12]}"
    raise StoreChangedError(
        f"{recorded_in} was written from another store than {store} holds now: the store {has}, and "
        f"{Path(recorded_in).name} recorded {was[:12]} (the store was rebuilt with other clips or settings "
        f"since). Put the original store back at {store}, or train into a new directory (a sweep: a new --out)")


@dataclass
class PhaseRecord:
    """What one phase cost and reached; kept in checkpoints and in report.json."""

    index: int
    method: str
    factor: int
    label: str
    frames: int  # model input frames
    tokens: int  # sequence length (prefix tokens included)
    epochs: int = 0  # finished epochs
    steps: int = 0
    samples: int = 0
    flops: int = 0  # training FLOPs (3 x forward, analytic)
    wall_s: float = 0.0  # training time, evaluation and checkpoints excluded
    data_s: float = 0.0  # time waiting for the loader (inside wall_s)
    metric: float | None = None  # last full-resolution evaluation in this phase
    ended: str = ""  # "" while it runs; then "length" (its epochs/steps) or "plateau"

    @property
    def data_loading_share(self) -> float:
        return self.data_s / self.wall_s if self.wall_s else 0.0


@dataclass
class Progress:
    """Where the run is; with the records and history, all a checkpoint restores."""

    phase: int = 0
    epoch: int = 0  # finished epochs within the phase
    batch: int = 0  # next batch within the epoch
    phase_step: int = 0
    global_step: int = 0


@dataclass
class RunState:
    progress: Progress = field(default_factory=Progress)
    records: list[PhaseRecord] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    average: dict | None = None  # running mean of full-resolution weights (eval.average_epochs)
    averaged: int = 0  # epochs in it

    @property
    def record(self) -> PhaseRecord:
        return self.records[-1]

    @property
    def finished_epochs(self) -> int:
        return sum(r.epochs for r in self.records)

    def begin_phase(self, index: int, phase: Phase, res: Resolution) -> None:
        self.progress = Progress(phase=index, global_step=self.progress.global_step)
        self.records.append(PhaseRecord(index=index, method=phase.method, factor=phase.factor, label=phase.label,
                                        frames=res.frames, tokens=res.tokens))

    def to_dict(self) -> dict:
        return {"progress": asdict(self.progress), "records": [asdict(r) for r in self.records],
                "history": self.history, "average": self.average, "averaged": self.averaged}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(Progress(**d["progress"]), [PhaseRecord(**r) for r in d["records"]], list(d["history"]),
                   d.get("average"), d.get("averaged", 0))


@dataclass
class RunOutcome:
    label: str
    metric_name: str
    metric: float
    metrics: dict
    records: list[PhaseRecord]
    history: list[dict] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.records)

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.records)


def model_config(recipe: Recipe, reader: StoreReader) -> ASTConfig:
    m = recipe.model
    sizes = {k: getattr(m, k) for k in ("embed_dim", "depth", "num_heads") if getattr(m, k) is not None}
    return ast_config(
        m.preset, n_mels=reader.n_mels, target_frames=recipe.data.target_frames or reader.target_frames,
        patch_stride=tuple(m.patch_stride), drop_path_rate=m.drop_path_rate,
        num_classes=reader.n_classes, **sizes,
    )


def rank_batch(batch_size: int, dist: Dist) -> int:
    """Each rank's share of a global batch; an error when the ranks cannot share it evenly."""
    if batch_size % dist.world_size:
        raise ValueError(f"data.batch_size {batch_size} is the global batch and must divide among "
                         f"{dist.world_size} ranks; use a multiple of {dist.world_size}")
    return batch_size // dist.world_size


def pipeline_config(recipe: Recipe, split: str | tuple[str, ...], dist: Dist, device: str) -> PipelineConfig:
    """The training loader's config: the recipe's [data] settings that the pipeline shares by name,
    plus the run's seed, rank, device, and this rank's share of the global batch. The loader
    mixes only partners from the whole set (mixup_partner = "dataset"); "batch" is the trainer's."""
    data = recipe.data
    shared = {f.name for f in dataclasses.fields(PipelineConfig)} & {f.name for f in dataclasses.fields(data)}
    settings = {name: getattr(data, name) for name in shared - {"device", "batch_size"}}
    if data.mixup_partner != "dataset":
        settings["mixup"] = 0.0
    return PipelineConfig(
        store=recipe.store, split=split, shuffle=True, seed=recipe.seed, drop_last=dist.enabled,
        num_samples=data.samples_per_epoch, rank=dist.rank, world_size=dist.world_size,
        batch_size=rank_batch(data.batch_size, dist), device=device, **settings,
    )


def make_optimizer(recipe: Recipe, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam(W) with AST's betas; weight decay on every parameter (optim.decay = "all", AST) or not
    on biases, norms, tokens and the positional table ("matrices")."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or name in ("pos_embed", "cls_token", "dist_token")
        (no_decay if exempt and recipe.optim.decay == "matrices" else decay).append(p)
    o = recipe.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=tuple(o.betas), fused=True if o.fused else None)  # None: torch's default


def mixup(x: torch.Tensor, y: torch.Tensor, prob: float, alpha: float, n_classes: int, gen: torch.Generator):
    """In-batch mixup (data.mixup_partner = "batch") on the served (compressed, normalised,
    masked) features: each sample, with probability `prob`, is mixed with another sample of the
    batch, lambda ~ Beta(alpha, alpha) per sample, and its (one-hot or multi-hot) target mixed
    with the same lambda. AST's mixup, a partner from the whole set mixed before everything else,
    is the loader's (c2fdata/pipeline/mixup.py)."""
    if y.ndim == 1:
        y = F.one_hot(y, n_classes).float()
    if prob <= 0:
        return x, y
    b = x.shape[0]
    partner = torch.randperm(b, generator=gen)
    if alpha > 0:  # Beta from numpy seeded by `gen`: torch's Beta draws from the global RNG, which
        # DataLoader iterators also draw from, so a resumed run would mix differently
        draws = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen))).beta(alpha, alpha, b)
        lam = torch.from_numpy(draws.astype(np.float32))
    else:
        lam = torch.ones(b)
    use = torch.rand(b, generator=gen) < prob
    lam = torch.where(use, lam, torch.ones(b)).to(x.device)
    xl = lam.to(x.dtype)[:, None, None]
    x = xl * x + (1 - xl) * x[partner.to(x.device)]
    y = lam[:, None] * y + (1 - lam[:, None]) * y[partner.to(y.device)]
    return x, y


def loss_fn(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)  # target: (B,) indices or (B, K) probabilities


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               multi_label: bool, clip_grad_norm: float | None, any_length: bool = False) -> torch.Tensor:
    """One optimiser step: forward (bf16 autocast on CUDA), loss in float32, backward, gradient
    clipping, update. x: (B, T/C, F). The trainer and `bench throughput` both call this.
    any_length: x may be shorter than the model's set resolution (a mixed-resolution batch)."""
    autocast = x.device.type == "cuda"
    if not autocast:
        x = x.float()  # a float16/bfloat16 hand-over (data.output_dtype) meets float32 weights
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = net(x, any_length=True) if any_length else net(x)  # (B, K)
    loss = loss_fn(logits.float(), y, multi_label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
    optimizer.step()
    return loss.detach()


class PhaseTrainer:
    """Trains one model through `phases`, checkpointing into `out_dir`; `.run()` -> RunOutcome."""

    def __init__(self, recipe: Recipe, phases: tuple[Phase, ...], out_dir: Path, label: str, *,
                 dist: Dist = Dist(), device: str | None = None,
                 on_event: Callable[[dict], None] | None = None):
        self.recipe, self.phases, self.label = recipe, phases, label
        self.out = Path(out_dir)
        self.dist = dist
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.on_event = on_event or (lambda e: None)
        data = recipe.data
        self.eval_reader = StoreReader(recipe.store, data.eval_split)
        # several training splits are read as one (their union: indices, weights, mixup partners)
        self.reader = open_reader(recipe.store, data.train_split or self.eval_reader.attrs["train_split"])
        self.multi_label = self.reader.multi_label
        self.metric_name = metric_name(self.multi_label)
        self.cfg = model_config(recipe, self.reader)
        recipe.check_against(self.cfg.target_frames, self.cfg.n_mels, self.cfg.patch_size)
        # what the model is fed, recorded with its weights (for `c2ftrain eval` and `predict`)
        self.inputs = ModelInputs.of_store(self.eval_reader, self.cfg.target_frames, data.norm_mean, data.norm_std)
        loader_device = data.device if data.device != "auto" else ("gpu" if self.device.type == "cuda" else "cpu")
        self.base = pipeline_config(recipe, data.train_split or self.reader.split, dist, loader_device)
        self._loaders: dict[int, object] = {}
        self.skipped_clips = 0  # corrupt clips skipped by this process's loaders (never trained on)
        self.store_fingerprint = self.eval_reader.attrs.get("fingerprint")  # the store, whatever its path

    # -- loaders -----------------------------------------------------------------------------
    def train_loader(self, phase: Phase):
        """The training loader at `phase`: one per batch size, kept across phases."""
        bs = rank_batch(phase.batch_size or self.recipe.data.batch_size, self.dist)
        if bs not in self._loaders:
            self._loaders[bs] = make_loader(self.base.replace(batch_size=bs), self.reader)
        loader = self._loaders[bs]
        loader.set_phase(*loader_phase(phase))
        return loader

    def eval_loader(self, split: str | None = None):
        reader = self.eval_reader if split in (None, self.eval_reader.split) else StoreReader(self.recipe.store, split)
        cfg = self.base.for_evaluation().replace(
            split=reader.split, batch_size=self.recipe.eval.batch_size or 2 * self.base.batch_size,
        )
        return make_loader(cfg, reader)

    def close(self) -> None:
        for loader in self._loaders.values():
            self._count_skipped(loader)
            loader.close()
        self._loaders.clear()

    def _count_skipped(self, loader) -> None:
        """Corrupt clips a loader skipped (each with a warning), kept for the run's report."""
        self.skipped_clips += len(getattr(loader, "skipped_clips", ()))

    def spans(self, state: RunState | None = None) -> list[Span]:
        """Every phase's first step and epoch and its length, from its loader's batches per epoch.
        Phases that have ended count at their real length (a plateau may end one early), and a
        last phase with until = "budget" gets the training FLOPs the others leave. Where that
        changed the run's length, each span records the total planned when its phase started
        (a run-wide learning-rate decay continues from there: schedule.run_progress)."""
        ended = {r.index: r for r in state.records if r.ended} if state else {}
        now = self._spans(ended)
        total = sum(s.steps for s in now)
        planned = [sum(s.steps for s in self._spans({j: r for j, r in ended.items() if j < i}))
                   for i in range(len(now))] if ended else [total] * len(now)
        if planned == [total] * len(now):
            return now
        return [dataclasses.replace(s, planned_total=t) for s, t in zip(now, planned)]

    def _spans(self, ended: dict) -> list[Span]:
        phases = list(self.phases)
        for i, r in ended.items():
            phases[i] = dataclasses.replace(phases[i], until="length", epochs=None, steps=r.steps)
        shapes = [self.epoch_shape(p) for p in phases]
        if phases[-1].until == "budget":
            phases[-1] = dataclasses.replace(phases[-1], until="length", steps=self._budget_steps(phases, ended, shapes))
        return spans(tuple(phases), [s.steps for s in shapes])

    def epoch_shape(self, phase: Phase) -> EpochShape:
        """The steps and samples (all ranks) of an epoch of `phase`'s loader."""
        loader = self.train_loader(phase)
        return EpochShape(len(loader), loader.samples_per_epoch * self.dist.world_size,
                          phase.batch_size or self.recipe.data.batch_size)

    def run_notes(self) -> list[str]:
        """What a recipe written for a larger dataset (or shrunk with --set) does here that it
        likely does not mean: a batch larger than an epoch of the training split (each step takes
        the whole split; in a distributed run that is an error, spans), a warm-up longer than what
        it warms, a weight-average window past the run's last epoch."""
        notes = []
        for i, phase in enumerate(() if self.dist.enabled else self.phases):
            shape = self.epoch_shape(phase)
            if shape.batch > shape.samples:
                notes.append(f"phase {i + 1} ({phase.label}): batch {shape.batch} is more than the {shape.samples} "
                             f"clips of an epoch of the training split, so every step takes all {shape.samples} "
                             "(one step an epoch); give a smaller data.batch_size (or the phase's batch_size) if "
                             "that is not meant")
        run_spans = self.spans()
        optim = self.recipe.optim
        if optim.lr_scope == "run" and optim.warmup_steps > sum(s.steps for s in run_spans):
            notes.append(f"optim.warmup_steps {optim.warmup_steps} is more than the run's "
                         f"{sum(s.steps for s in run_spans)} steps: the learning rate never reaches optim.lr")
        elif optim.lr_scope == "phase":  # each phase warms up anew, with its own warmup_steps where it sets them
            for i, s in enumerate(run_spans):
                own = s.phase.warmup_steps is not None
                warmup = s.phase.warmup_steps if own else optim.warmup_steps
                if warmup > s.steps:
                    key = f"phases.{i + 1}.warmup_steps" if own else "optim.warmup_steps"
                    notes.append(f"phase {i + 1} ({s.phase.label}): {key} {warmup} is more than its {s.steps} steps: "
                                 "its learning rate never reaches its peak")
        window, epochs = self.recipe.eval.average_epochs, sum(s.epochs for s in run_spans)
        most = "at most " if any(s.phase.until == "plateau" for s in run_spans) else ""
        if window and window[0] > epochs:
            notes.append(f"eval.average_epochs {list(window)} starts after the run's last epoch ({most}{epochs}): no "
                         "weight average will be made")
        elif window and window[1] > epochs:
            notes.append(f"eval.average_epochs {list(window)} ends after the run's last epoch ({most}{epochs}): "
                         f"epochs {window[0]}-{epochs}{' at most' if most else ''} are averaged")
        return notes

    def _budget_steps(self, phases: list[Phase], ended: dict, shapes: list[EpochShape]) -> int:
        """Steps of the last phase: the recipe's budget (in full-resolution epochs) minus what
        the other phases spent (ended) or will spend (planned), counted in samples (an epoch's
        last batch may be partial)."""
        full = full_resolution(self.cfg).train_flops_per_sample(self.cfg)
        spent = 0.0
        for i, p in enumerate(phases[:-1]):
            planned = shapes[i].samples_in(p.steps or p.epochs * shapes[i].steps) * flops_per_sample(self.cfg, p)
            spent += ended[i].flops if i in ended else planned
        rest = self.recipe.budget_full_epochs * shapes[-1].samples * full - spent
        return shapes[-1].steps_for(rest / full)

    def steps_for_flops(self, flops: float) -> int:
        """Full-resolution steps whose samples cost `flops` training FLOPs (the equal-FLOPs
        control's length)."""
        full = full_resolution(self.cfg).train_flops_per_sample(self.cfg)
        return self.epoch_shape(Phase(method="none", factor=1, steps=1)).steps_for(flops / full)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_full_resolution(self, model: AST, loader) -> dict:
        """Metrics of a full-resolution copy of `model` (the training model keeps its resolution)."""
        full = copy.deepcopy(model)
        full_resolution(self.cfg).apply(full, self.recipe.model)
        return evaluate_loader(full, loader, self.multi_label, self.device, self.dist,
                               progress=self._eval_progress(f"full resolution, {loader.cfg.split}"))

    def _eval_progress(self, what: str) -> Callable[[int, int], None]:
        """An evaluation's batches, as events for the console (an AudioSet evaluation takes minutes)."""
        return lambda done, total: self.on_event({"event": "eval_batch", "run": self.label, "what": what,
                                                  "batch": done, "batches": total})

    def _eval_entry(self, model: AST, eval_loader, phase: Phase, state: RunState, full: bool = True) -> dict:
        """One evaluation: of a coarse phase, also as the coarse model sees the data (whether
        the phase learns, apart from how well it transfers to full resolution); `full=False`
        leaves the full-resolution pass out (`add_full_resolution` can add it later)."""
        p = state.progress
        entry = {"event": "eval", "run": self.label, "phase": p.phase, "phase_label": phase.label,
                 "epoch": p.epoch, "step": p.global_step,
                 "cum_flops": sum(r.flops for r in state.records), "cum_wall_s": sum(r.wall_s for r in state.records)}
        if full:
            self.add_full_resolution(entry, model, eval_loader, state)
        if phase.coarse:
            eval_loader.set_phase(*loader_phase(phase))
            entry["metrics_at_phase_resolution"] = evaluate_loader(
                model, eval_loader, self.multi_label, self.device, self.dist, progress=self._eval_progress(phase.label))
            eval_loader.set_phase("none", 1)
        return entry

    def add_full_resolution(self, entry: dict, model: AST, eval_loader, state: RunState) -> None:
        """The full-resolution metrics into `entry`; they are also the phase's metric so far
        (its row in the report)."""
        entry["metrics"] = self.evaluate_full_resolution(model, eval_loader)
        state.record.metric = float(entry["metrics"][self.metric_name])

    # -- checkpoints and logs ----------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def model_record(self, model: AST) -> dict:
        """What every checkpoint (last.pt, final.pt, final_averaged.pt) holds of a model: its
        weights at their resolution and config, what it must be fed (`c2ftrain eval`, `predict`),
        and the store it was trained on."""
        return {"model": model.state_dict(), "resolution": model.resolution_state(), "model_config": self.cfg.to_dict(),
                "inputs": self.inputs.to_dict(), "store": str(self.recipe.store),
                # a relative store is the working directory's: `c2ftrain eval` run from elsewhere finds it here
                "store_absolute": absolute_store(self.recipe.store),
                "store_fingerprint": self.store_fingerprint, "eval_split": self.recipe.data.eval_split}

    def save(self, model: AST, optimizer, state: RunState) -> None:
        if not self.dist.is_main:
            return
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.ckpt_path, {
            "format": CHECKPOINT_FORMAT, "label": self.label, **self.model_record(model),
            "optimizer": optimizer.state_dict(), **state.to_dict(), "rng": rng, "recipe": self.recipe.to_dict(),
            "phases": [asdict(p) for p in self.phases],
        })

    def _restore(self, model: AST) -> tuple[RunState, dict]:
        """Model weights, run state and RNG from the last checkpoint; the optimiser's state is
        returned, to load once the phase's optimiser exists."""
        ckpt = load_checkpoint(self.ckpt_path)  # on the CPU: RNG states must stay CPU tensors
        # the weights were trained on the store the checkpoint recorded (a sweep's shared run is
        # taken up by whichever cell comes to it first, with no run directory of its own to check)
        check_same_store(self.ckpt_path, ckpt.get("store_fingerprint"), self.store_fingerprint, self.recipe.store)
        model.set_time_resolution(**ckpt["resolution"])
        model.load_state_dict(ckpt["model"])
        rng = ckpt["rng"] if isinstance(ckpt["rng"], dict) else {"cpu": ckpt["rng"]}
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        return RunState.from_dict(ckpt), ckpt["optimizer"]

    def _log(self, entry: dict) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.on_event(entry)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RunOutcome:
        torch.manual_seed(self.recipe.seed)
        model = AST(self.cfg)
        state, opt_state = RunState(), None
        if resume and self.ckpt_path.is_file():  # the checkpoint holds every weight: no init needed
            state, opt_state = self._restore(model)
            p = state.progress
            self.on_event({"event": "resumed", "run": self.label, "checkpoint": str(self.ckpt_path),
                           "phase": p.phase, "epoch": p.epoch, "batch": p.batch, "step": p.global_step})
        else:
            init = initialise(model, self.recipe.model)
            self.on_event({"event": "init", "run": self.label, "init": init["init"], "format": init["format"],
                           "loaded": len(init["loaded"]), "fresh": len(init["fresh"])})
            if self.dist.is_main and (self.out / "metrics.jsonl").exists():
                (self.out / "metrics.jsonl").unlink()  # a fresh run: no stale metrics
            for note in self.run_notes():
                self.on_event({"event": "note", "run": self.label, "text": note})
        model.to(self.device)
        eval_loader, optimizer = self.eval_loader(), None
        try:
            for pi in range(state.progress.phase, len(self.phases)):
                run_spans = self.spans(state)  # again at each phase: an earlier one may have ended early
                phase = run_spans[pi].phase
                loader = self.train_loader(phase)
                res, optimizer = start_phase(phase, model, optimizer, loader,
                                             lambda: make_optimizer(self.recipe, model, self.recipe.optim.lr),
                                             self.recipe.model)
                if opt_state is not None:  # resumed inside this phase
                    optimizer.load_state_dict(opt_state)
                    opt_state = None
                else:
                    state.begin_phase(pi, phase, res)
                self._train_phase(model, optimizer, loader, eval_loader, run_spans, state, res)
            final = state.history[-1].get("metrics") if state.history else None
            final = final or self.evaluate_full_resolution(model, eval_loader)
            final = {**final, **self._extra_eval_splits(model), **self._averaged_metrics(model, eval_loader, state)}
        finally:
            self._count_skipped(eval_loader)
            eval_loader.close()
            self.close()
        final["skipped_clips"] = int(gather_cat(self.dist, torch.tensor([self.skipped_clips])).sum())
        if self.dist.is_main:
            save_checkpoint(self.out / "final.pt", self.model_record(model))
        return RunOutcome(self.label, self.metric_name, float(final[self.metric_name]), final, state.records,
                          state.history)

    def _averaged_metrics(self, model: AST, eval_loader, state: RunState) -> dict:
        """Metrics of the weight average (and final_averaged.pt), when one was kept."""
        if not state.averaged:
            return {}
        averaged = copy.deepcopy(model)
        full_resolution(self.cfg).apply(averaged, self.recipe.model)
        averaged.load_state_dict({k: v.to(self.device) for k, v in state.average.items()})
        if self.dist.is_main:
            save_checkpoint(self.out / "final_averaged.pt", {**self.model_record(averaged), "epochs": state.averaged})
        metrics = evaluate_loader(averaged, eval_loader, self.multi_label, self.device, self.dist,
                                  progress=self._eval_progress("weight average"))
        return {f"averaged/{k}": v for k, v in metrics.items()} | {"averaged/epochs": state.averaged}

    def _extra_eval_splits(self, model: AST) -> dict:
        out = {}
        for split in self.recipe.data.extra_eval_splits:
            loader = self.eval_loader(split)
            try:
                out.update({f"{split}/{k}": v for k, v in self.evaluate_full_resolution(model, loader).items()})
            finally:
                self._count_skipped(loader)
                loader.close()
        return out

    def _train_phase(self, model: AST, optimizer, loader, eval_loader, run_spans: list[Span],
                     state: RunState, res: Resolution) -> None:
        """The phase's remaining epochs: train, then evaluate (every `eval.every_epochs` and at
        the phase's end) and checkpoint."""
        span, p = run_spans[state.progress.phase], state.progress
        net = model
        if self.dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        if self.recipe.model.compile != "none":  # anew each phase: its resolution has its own shapes
            # what earlier phases compiled fits their shapes only: dropped, so that a run's phases
            # do not add up to dynamo's limit of recompiles per function (past it, eager again)
            torch._dynamo.reset()
            net = torch.compile(net, mode=self.recipe.model.compile)
        # p.batch > 0: an epoch begun before a resume is ended (counted, evaluated, checkpointed)
        # even when its last step is behind it, as when a checkpoint fell on the phase's last step
        while not state.record.ended and (p.batch > 0 or (p.epoch < span.epochs and p.phase_step < span.steps)):
            self._train_epoch(net, model, optimizer, loader, run_spans, state, res)
            state.record.epochs += 1
            p.epoch, p.batch = p.epoch + 1, 0
            last = p.epoch == span.epochs or p.phase_step >= span.steps
            plateau = False
            if self.recipe.eval.evaluates(p.epoch, last):
                full = self.recipe.eval.at_full_resolution(span.phase, last)
                entry = self._eval_entry(model, eval_loader, span.phase, state, full=full)
                state.history.append(entry)
                plateau = not last and self._plateaued(span.phase, state)
                # without full-resolution evaluations along a coarse phase, its end still gets
                # one: at a plateau, known only once the phase-resolution metric has decided
                if plateau and "metrics" not in entry:
                    self.add_full_resolution(entry, model, eval_loader, state)
                self._log(entry)
            if last:
                state.record.ended = "length"
            elif plateau:
                state.record.ended = "plateau"
            self._accumulate_average(model, state)
            self.save(model, optimizer, state)

    def _clock(self) -> float:
        """perf_counter once the device has finished the queued work: CUDA runs asynchronously,
        so an unsynchronised clock would stop before the last steps ran."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _plateaued(self, phase: Phase, state: RunState) -> bool:
        """until = "plateau": the phase's own-resolution metric has not improved by min_delta over
        its best before the last `patience` evaluations."""
        if phase.until != "plateau":
            return False
        values = [h["metrics_at_phase_resolution"][self.metric_name] for h in state.history
                  if h["phase"] == state.progress.phase and "metrics_at_phase_resolution" in h]
        if len(values) <= phase.patience:
            return False
        return max(values[-phase.patience:]) < max(values[:-phase.patience]) + phase.min_delta

    def _accumulate_average(self, model: AST, state: RunState) -> None:
        """Add this epoch's full-resolution weights to the running mean when the run epoch is in
        eval.average_epochs (a coarse epoch contributes its full-resolution copy)."""
        span = self.recipe.eval.average_epochs
        if not span or not span[0] <= state.finished_epochs <= span[1]:
            return
        full = copy.deepcopy(model)
        full_resolution(self.cfg).apply(full, self.recipe.model)
        weights = {k: v.detach().float().cpu() for k, v in full.state_dict().items()}
        n = state.averaged + 1
        if state.average is None:
            state.average = weights
        else:  # running mean: avg += (w - avg) / n
            for k, v in weights.items():
                state.average[k] += (v - state.average[k]) / n
        state.averaged = n

    def _train_epoch(self, net, model: AST, optimizer, loader, run_spans: list[Span], state: RunState,
                     res: Resolution) -> None:
        """Batches p.batch.. of the current epoch, or until the phase's last step."""
        p, record, rc = state.progress, state.record, self.recipe
        span = run_spans[p.phase]
        ckpt_every = rc.eval.checkpoint_every_steps
        t_start = t_wait = time.perf_counter()
        data_s = 0.0
        phase_flops = res.train_flops_per_sample(self.cfg)  # per sample; a mixed batch has its own
        for batch in loader.epoch_batches(span.first_epoch + p.epoch, p.batch):
            if p.phase_step >= span.steps:
                break
            x = batch["features"].to(self.device, non_blocking=True)  # (B, T/C, F)
            y = batch["labels"].to(self.device, non_blocking=True)
            data_s += time.perf_counter() - t_wait
            lr = lr_at(rc.optim, run_spans, p.phase, p.global_step, span.first_epoch + p.epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            flops_per_sample = phase_flops
            if span.phase.mixed:  # this batch's own C; the model resamples its table to fit
                c = batch_factor(span.phase, rc.seed, span.first_epoch + p.epoch, p.batch)
                x = compress_batch(x, span.phase, c, rc.seed, span.first_epoch + p.epoch, p.batch,
                                   rc.data.random_offset)  # (B, T/C, F)
                flops_per_sample = resolution(self.cfg, span.phase, c).train_flops_per_sample(self.cfg)
            if rc.data.mixup > 0 and rc.data.mixup_partner == "batch":  # "dataset": mixed by the loader
                gen = torch.Generator().manual_seed(rc.seed * MIXUP_SEED_STRIDE + p.global_step)
                x, y = mixup(x, y, rc.data.mixup, rc.data.mixup_alpha, self.cfg.num_classes, gen)
            loss = train_step(net, optimizer, x, y, self.multi_label, rc.optim.clip_grad_norm,
                              any_length=span.phase.mixed)
            p.phase_step, p.global_step, p.batch = p.phase_step + 1, p.global_step + 1, p.batch + 1
            n = x.shape[0] * self.dist.world_size
            record.steps, record.samples, record.flops = record.steps + 1, record.samples + n, record.flops + flops_per_sample * n
            if p.global_step % LOG_EVERY_STEPS == 0:  # not every step: float(loss) waits for the GPU
                self.on_event({"event": "step", "run": self.label, "phase": p.phase, "step": p.global_step,
                               "loss": float(loss), "lr": lr, "phase_label": span.phase.label, "epoch": p.epoch,
                               "batch": p.batch, "batches": min(span.steps_per_epoch,
                                                                span.steps - p.epoch * span.steps_per_epoch)})
            if ckpt_every and p.global_step % ckpt_every == 0:
                record.wall_s += self._clock() - t_start  # checkpoint time is not training time
                record.data_s += data_s
                self.save(model, optimizer, state)
                t_start, data_s = time.perf_counter(), 0.0
            t_wait = time.perf_counter()
        record.wall_s += self._clock() - t_start
        record.data_s += data_s
