"""The phase-by-phase training loop: phases -> epochs -> steps.

One `train_phases` call trains one model through a list of phases (coarse-to-fine, or the
full-resolution baseline), evaluating at full resolution after every epoch, checkpointing
atomically, and resuming exactly from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from c2fdata.pipeline import PipelineConfig, make_loader
from c2fdata.reader import StoreReader
from c2ftrain.checkpoint import load_checkpoint, save_checkpoint
from c2ftrain.distributed import Dist, gather_cat
from c2ftrain.flops import tokens, train_step_flops
from c2ftrain.metrics import evaluate, metric_name
from c2ftrain.model import AST, ASTConfig, ast_config, load_vit_checkpoint
from c2ftrain.recipe import Phase, Recipe
from c2ftrain.schedule import lr_at

log = logging.getLogger(__name__)


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

    @property
    def data_loading_share(self) -> float:
        return self.data_s / self.wall_s if self.wall_s else 0.0


@dataclass
class Progress:
    phase: int = 0
    epoch: int = 0  # within the phase
    batch: int = 0  # next batch within the epoch
    phase_step: int = 0
    global_step: int = 0


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
        m.preset, n_mels=reader.n_mels, target_frames=reader.target_frames,
        patch_stride=tuple(m.patch_stride), drop_path_rate=m.drop_path_rate,
        num_classes=reader.n_classes, **sizes,
    )


def phase_resolution(cfg: ASTConfig, phase: Phase) -> dict:
    """Arguments of set_time_resolution for a phase."""
    if phase.method == "patch":
        return dict(frames=cfg.target_frames, time_patch=cfg.patch_size[1] * phase.factor,
                    time_stride=cfg.patch_stride[1] * phase.factor)
    _, factor = phase.loader_method
    return dict(frames=cfg.target_frames // factor, time_patch=None, time_stride=None)


def make_optimizer(recipe: Recipe, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam(W) with AST's betas; no weight decay on biases, norms, tokens and the pos-embed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in ("pos_embed", "cls_token", "dist_token") else decay).append(p)
    o = recipe.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=tuple(o.betas))


def swap_parameters(optimizer: torch.optim.Optimizer, replaced) -> None:
    """Put new parameters (a resampled pos-embed, a resized patch kernel) where the old ones were
    in the optimiser; their moments no longer fit the new shape, so they restart."""
    for old, new in replaced:
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
        optimizer.state.pop(old, None)


def mixup(x: torch.Tensor, y: torch.Tensor, prob: float, alpha: float, n_classes: int, gen: torch.Generator):
    """Mixup on the loaded (compressed, normalised) features: each sample, with probability
    `prob`, is mixed with another sample of the batch, lambda ~ Beta(alpha, alpha) per sample,
    and its (one-hot or multi-hot) target mixed with the same lambda. AST mixes waveforms before
    fbank; mixing log-mel features is the cheap stand-in that works at any compression."""
    if y.ndim == 1:
        y = F.one_hot(y, n_classes).float()
    if prob <= 0:
        return x, y
    b = x.shape[0]
    partner = torch.randperm(b, generator=gen)
    lam = torch.distributions.Beta(alpha, alpha).sample((b,)) if alpha > 0 else torch.ones(b)
    use = torch.rand(b, generator=gen) < prob
    lam = torch.where(use, lam, torch.ones(b)).to(x.device)
    x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[partner.to(x.device)]
    y = lam[:, None] * y + (1 - lam[:, None]) * y[partner.to(y.device)]
    return x, y


def loss_fn(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target)  # target: (B,) indices or (B, K) probabilities


@torch.no_grad()
def evaluate_model(model: AST, loader, multi_label: bool, device: torch.device, d: Dist) -> dict:
    """Scores of every clip of the loader's split (all ranks) -> metrics dict."""
    model.eval()
    scores, targets, index = [], [], []
    loader.set_epoch(0)
    for batch in loader:
        x = batch["features"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        scores.append((torch.sigmoid(logits) if multi_label else torch.softmax(logits.float(), -1)).float().cpu())
        targets.append(batch["labels"].cpu())
        index.append(batch["index"].cpu())
    s, t = gather_cat(d, torch.cat(scores)), gather_cat(d, torch.cat(targets))
    i = gather_cat(d, torch.cat(index))
    order = torch.argsort(i)  # rank shards interleave; every clip once
    return evaluate(s[order].numpy(), t[order].numpy(), multi_label)


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
        self.reader = StoreReader(recipe.store, data.train_split or self.eval_reader.attrs["train_split"])
        self.multi_label = self.reader.multi_label
        self.metric_name = metric_name(self.multi_label)
        self.cfg = model_config(recipe, self.reader)
        recipe.check_against(self.cfg.target_frames, self.cfg.n_mels, self.cfg.patch_size)
        loader_device = data.device if data.device != "auto" else ("gpu" if self.device.type == "cuda" else "cpu")
        self.base = PipelineConfig(
            store=recipe.store, split=self.reader.split, batch_size=data.batch_size, shuffle=True,
            seed=recipe.seed, drop_last=dist.enabled, balanced=data.balanced, num_samples=data.samples_per_epoch,
            random_crop=data.random_crop, random_offset=data.random_offset,
            freq_mask_bins=data.freq_mask_bins, time_mask_frames=data.time_mask_frames,
            rank=dist.rank, world_size=dist.world_size, device=loader_device, backend=data.backend,
            num_workers=data.num_workers, num_threads=data.num_threads,
        )
        self._loaders: dict[int, object] = {}

    # -- loaders -----------------------------------------------------------------------------
    def train_loader(self, phase: Phase):
        bs = phase.batch_size or self.recipe.data.batch_size
        if bs not in self._loaders:
            self._loaders[bs] = make_loader(self.base.replace(batch_size=bs), self.reader)
        loader = self._loaders[bs]
        loader.set_phase(*phase.loader_method)
        return loader

    def eval_loader(self, split: str | None = None):
        reader = self.eval_reader if split in (None, self.eval_reader.split) else StoreReader(self.recipe.store, split)
        cfg = self.base.for_evaluation().replace(
            split=reader.split, batch_size=self.recipe.eval.batch_size or 2 * self.recipe.data.batch_size,
        )
        return make_loader(cfg, reader)

    def close(self) -> None:
        for loader in self._loaders.values():
            loader.close()
        self._loaders.clear()

    # -- the model at full resolution, for evaluation ------------------------------------------
    def full_resolution_copy(self, model: AST) -> AST:
        m = copy.deepcopy(model)
        m.set_time_resolution(self.cfg.target_frames, interpolation=self.recipe.model.interpolation,
                              antialias=self.recipe.model.antialias)
        return m

    def evaluate(self, model: AST, loader) -> dict:
        return evaluate_model(self.full_resolution_copy(model), loader, self.multi_label, self.device, self.dist)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def save(self, model, optimizer, progress: Progress, records, history) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.ckpt_path, {
            "format": "c2f-checkpoint-1", "label": self.label,
            "model": model.state_dict(), "resolution": model.resolution_state(),
            "model_config": self.cfg.to_dict(), "optimizer": optimizer.state_dict(),
            "progress": asdict(progress), "records": [asdict(r) for r in records], "history": history,
            "rng": torch.get_rng_state(), "recipe": self.recipe.to_dict(),
            "phases": [asdict(p) for p in self.phases],
        })

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
        if self.recipe.model.init_checkpoint:
            load_vit_checkpoint(model, self.recipe.model.init_checkpoint)
        model.to(self.device)
        progress, records, history = Progress(), [], []
        optimizer, state = None, None
        if resume and self.ckpt_path.is_file():
            state = load_checkpoint(self.ckpt_path, map_location=self.device)
            model.set_time_resolution(**state["resolution"])
            model.load_state_dict(state["model"])
            progress = Progress(**state["progress"])
            records = [PhaseRecord(**r) for r in state["records"]]
            history = list(state["history"])
            torch.set_rng_state(state["rng"])
        elif self.dist.is_main and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()  # a fresh run: no stale metrics
        eval_loader = self.eval_loader()
        epochs_before = [0]
        for p in self.phases:  # loader epoch ids: distinct across phases, fixed for resumes
            epochs_before.append(epochs_before[-1] + self._phase_epochs(p))
        try:
            for pi in range(progress.phase, len(self.phases)):
                phase = self.phases[pi]
                res = phase_resolution(self.cfg, phase)
                fresh_phase = state is None or pi != progress.phase
                replaced = model.set_time_resolution(**res, interpolation=self.recipe.model.interpolation,
                                                     antialias=self.recipe.model.antialias)
                peak = phase.lr if phase.lr is not None else self.recipe.optim.lr
                if optimizer is None or phase.reset_optimizer:
                    optimizer = make_optimizer(self.recipe, model, peak)
                else:
                    swap_parameters(optimizer, replaced)
                if not fresh_phase:
                    optimizer.load_state_dict(state["optimizer"])
                if fresh_phase:
                    progress = Progress(phase=pi, global_step=progress.global_step)
                    records.append(PhaseRecord(
                        index=pi, method=phase.method, factor=phase.factor, label=phase.label,
                        frames=res["frames"], tokens=tokens(self.cfg, res["frames"], res["time_patch"], res["time_stride"]),
                    ))
                state = None
                self._train_phase(model, optimizer, phase, progress, records, history, eval_loader,
                                  epochs_before[pi], peak, res)
            final = history[-1]["metrics"] if history else self.evaluate(model, eval_loader)
            for split in self.recipe.data.extra_eval_splits:
                extra = self.eval_loader(split)
                final = {**final, **{f"{split}/{k}": v for k, v in self.evaluate(model, extra).items()}}
                extra.close()
        finally:
            eval_loader.close()
            self.close()
        if self.dist.is_main:
            save_checkpoint(self.out / "final.pt", {"model": model.state_dict(), "resolution": model.resolution_state(),
                                                     "model_config": self.cfg.to_dict(), "store": str(self.recipe.store)})
        return RunOutcome(self.label, self.metric_name, float(final[self.metric_name]), final, records, history)

    def _phase_epochs(self, phase: Phase) -> int:
        if phase.epochs is not None:
            return phase.epochs
        return math.ceil(phase.steps / max(len(self.train_loader(phase)), 1))

    def _train_phase(self, model, optimizer, phase, progress, records, history, eval_loader, epoch_base, peak, res):
        loader = self.train_loader(phase)
        record = records[-1]
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise ValueError(f"phase {phase.label}: the train split has fewer clips than one batch")
        total = phase.steps if phase.steps is not None else phase.epochs * steps_per_epoch
        n_epochs = self._phase_epochs(phase)
        warmup = phase.warmup_steps if phase.warmup_steps is not None else self.recipe.optim.warmup_steps
        flops_per_sample = train_step_flops(self.cfg, res["frames"], res["time_patch"], res["time_stride"], batch=1)
        net = model
        if self.dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        ckpt_every = self.recipe.eval.checkpoint_every_steps
        for epoch in range(progress.epoch, n_epochs):
            model.train()
            t_epoch = time.perf_counter()
            t_wait = time.perf_counter()
            data_s = 0.0
            for batch in loader.epoch_batches(epoch_base + epoch, progress.batch):
                if progress.phase_step >= total:
                    break
                x = batch["features"].to(self.device, non_blocking=True)  # (B, T/C, F)
                y = batch["labels"].to(self.device, non_blocking=True)
                data_s += time.perf_counter() - t_wait
                lr = lr_at(progress.phase_step, total, peak, warmup, self.recipe.optim, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                gen = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + progress.global_step)
                x, y_mix = mixup(x, y, self.recipe.data.mixup, self.recipe.data.mixup_alpha, self.cfg.num_classes, gen) \
                    if self.recipe.data.mixup > 0 else (x, y)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    logits = net(x)
                loss = loss_fn(logits.float(), y_mix, self.multi_label)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.recipe.optim.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.recipe.optim.clip_grad_norm)
                optimizer.step()
                progress.phase_step += 1
                progress.global_step += 1
                progress.batch += 1
                n = x.shape[0] * self.dist.world_size
                record.steps += 1
                record.samples += n
                record.flops += flops_per_sample * n
                if progress.global_step % 20 == 0:
                    self.on_event({"event": "step", "run": self.label, "phase": progress.phase,
                                   "step": progress.global_step, "loss": float(loss.detach()), "lr": lr})
                if ckpt_every and progress.global_step % ckpt_every == 0:
                    record.wall_s += time.perf_counter() - t_epoch
                    record.data_s += data_s
                    self.save(model, optimizer, progress, records, history)
                    t_epoch, data_s = time.perf_counter(), 0.0
                t_wait = time.perf_counter()
            record.wall_s += time.perf_counter() - t_epoch
            record.data_s += data_s
            record.epochs += 1
            progress.epoch, progress.batch = epoch + 1, 0
            last = epoch + 1 == n_epochs
            if last or (epoch + 1) % self.recipe.eval.every_epochs == 0:
                metrics = self.evaluate(model, eval_loader)
                record.metric = float(metrics[self.metric_name])
                entry = {"event": "eval", "run": self.label, "phase": progress.phase, "phase_label": phase.label,
                         "epoch": epoch + 1, "step": progress.global_step, "metrics": metrics,
                         "cum_flops": sum(r.flops for r in records), "cum_wall_s": sum(r.wall_s for r in records)}
                if not phase.full_resolution:
                    # also as the coarse model sees the data: shows whether the coarse phase learns,
                    # apart from how well it transfers to full resolution
                    eval_loader.set_phase(*phase.loader_method)
                    entry["metrics_at_phase_resolution"] = evaluate_model(
                        model, eval_loader, self.multi_label, self.device, self.dist)
                    eval_loader.set_phase("none", 1)
                history.append(entry)
                self._log(entry)
            self.save(model, optimizer, progress, records, history)
            if progress.phase_step >= total:
                break
