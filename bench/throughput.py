"""`bench throughput`: for each phase of a recipe, how the time saved splits between loader and model.

Per phase, three rates in samples/s, all in one run:
- loader alone: batches pulled from the real pipeline (the trainer's own loader config) on the
  real store, nothing else running;
- model alone: the real train step (forward, loss, backward, clip, optimizer step) on fixed
  synthetic input of the phase's shape, no loader serving;
- end to end: real batches into real train steps, with the time spent waiting in `next()` on
  the loader giving the data-loading share of step time (as the trainer's own `data_s`).
  On CUDA also the GPU-busy share: the time the GPU spent inside train steps (CUDA events around
  each step, so a step whose launch waited for data does not count its wait) over the wall time
  of the end-to-end run, and NVML's utilisation sampled meanwhile (nvidia-smi's figure).
Each speed-up is against the recipe's full-resolution phase (C = 1) measured in the same run;
the FLOPs ratio is printed beside them as the ideal.

Order of work (what keeps the figures clean on a small, shared machine): the run goes in rounds
(`warmup` untimed, then `repeats` timed); one round takes every phase once: model alone, then
the phase's loader primed with train steps (untimed), timed alone, and timed end to end. Each
phase has its own loader, built in its first round and kept to the end, as the trainer keeps one
pipeline through a phase: building one costs seconds on a GPU (spawned reader processes), which
every round would otherwise pay again. After its end-to-end run a loader tops up its prefetch
queue (a few batches) and then waits, drawing nothing until its next round: the next phase's
untimed priming steps (synthetic input) are there to absorb that top-up, and the CPU time of all
loader processes during each model-alone run is recorded to show whether they did. A speed-up is the median over rounds of the ratio of the same round's
rates, so that a slow drift of the machine's load cancels out of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import torch

from bench.machine import describe
from bench.timing import Measurement, descendants_cpu_s, measure, sync
from c2fdata.datasets import missing_store
from c2fdata.pipeline import resolve_backend
from c2fdata.storage import as_location
from c2ftrain.model import AST
from c2ftrain.phases import Resolution, resolution
from c2ftrain.recipe import COMPILE_MODES, Phase, Recipe
from c2ftrain.trainer import PhaseTrainer, make_optimizer, train_step

FIGURES = ("loader", "model", "end_to_end")  # the three rates measured per phase

__all__ = ["endless", "bench_throughput", "ThroughputSettings", "TARGETS"]

PRIME_STEPS = 2  # untimed train steps before timing after a loader opens or closes (see _Steps.prime)

# The throughput targets for the demo recipe (AST tiny, demo store): see docs/BENCHMARKS.md.
TARGETS = {
    "model_speedup_at_c4_min": 3.0,  # model-only step at C = 4 at least 3x the C = 1 step
    "end_to_end_vs_model_speedup_min": 0.85,  # end-to-end speed-up within 15% of model-only
    "data_loading_share_max": 0.10,  # in every phase
}
# On a GPU the model step is far cheaper, so the loader must hide better (AST base, 1024 frames).
GPU_TARGETS = {
    "data_loading_share_max": 0.05,  # in every phase
    "gpu_busy_min": 0.90,  # in every phase: the GPU inside train steps for >= 90% of the wall time
    "end_to_end_speedup_at_c4_min": 3.0,
}
NVML_SAMPLE_S = 0.05  # NVML averages over its own window (1/6 s to 1 s); finer sampling adds nothing


def endless(loader) -> Iterator[dict]:
    """Batches of a loader across epoch boundaries (each pass advances the loader's epoch)."""
    if len(loader) == 0:
        raise ValueError("the loader serves no batch: fewer clips than one batch?")
    while True:
        yield from loader


@dataclass(frozen=True)
class ThroughputSettings:
    repeats: int = 5  # timed rounds: one value per figure and phase each (median and spread)
    warmup: int = 1  # untimed rounds before them (allocator, first touch of the store, caches)
    batches: int = 10  # train steps per repeat (model alone and end to end)
    loader_batches: int = 50  # batches per repeat of the loader alone

    def __post_init__(self):
        for name in ("repeats", "batches", "loader_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@dataclass
class _Phase:
    """What one phase's measurements need: its shape, model and optimizer."""

    number: int  # 1-based, as the recipe lists it
    phase: Phase
    resolution: Resolution
    batch_size: int
    model: AST
    opt: torch.optim.Optimizer
    rates: dict[str, list[float]] = field(default_factory=dict)  # per figure, one value per round
    net: torch.nn.Module | None = None  # what the step calls: the model, or torch.compile's wrapper of it
    builds: int | None = None  # pipelines its loader built (DALI; None for the torch loader)

    @property
    def frames(self) -> int:
        return self.resolution.frames


def _synthetic_batch(trainer: PhaseTrainer, p: _Phase) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(p.number)
    x = torch.randn(p.batch_size, p.frames, trainer.cfg.n_mels, generator=g)  # (B, T/C, F)
    k = trainer.cfg.num_classes
    if trainer.multi_label:
        y = (torch.rand(p.batch_size, k, generator=g) < 0.05).float()  # (B, K) multi-hot
    else:
        y = torch.randint(0, k, (p.batch_size,), generator=g)  # (B,)
    return x.to(trainer.device), y.to(trainer.device)


class _Steps:
    """The three timed runs of one phase; each returns samples processed, as `measure` wants."""

    def __init__(self, trainer: PhaseTrainer, p: _Phase, s: ThroughputSettings, host: PhaseTrainer):
        self.trainer, self.p, self.s = trainer, p, s
        self.host = host  # this phase's own trainer: its loader lives through every round
        self.served: list = []  # every loader opened for this phase (one, unless something rebuilt it)
        self.x, self.y = _synthetic_batch(trainer, p)
        self.batches: Iterator[dict] | None = None
        self.wait_s = 0.0  # time inside next() during the last end-to-end run
        self.busy_s = 0.0  # GPU time inside train steps during the last end-to-end run (CUDA)
        self.nvml: list[float] = []  # NVML utilisation samples (0-1) during the last end-to-end run
        self.stepped = False  # whether a step has run (a compiled model compiles at its first)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.stepped = True
        t = self.trainer  # the trainer's own step, so that the bench times what training runs
        net = self.p.model if self.p.net is None else self.p.net  # (a compiled module has no truth value)
        train_step(net, self.p.opt, x, y, t.multi_label, t.recipe.optim.clip_grad_norm)

    def model(self) -> int:
        for _ in range(self.s.batches):
            self.step(self.x, self.y)
        return self.s.batches * self.p.batch_size

    def loader(self) -> int:
        n = 0
        for _ in range(self.s.loader_batches):
            n += next(self.batches)["features"].shape[0]
        return n

    def end_to_end(self) -> int:
        n, self.wait_s = 0, 0.0
        device = self.trainer.device
        cuda = device.type == "cuda"
        events = []
        with NvmlSampler(device if cuda else None) as nvml:
            for _ in range(self.s.batches):
                t = time.perf_counter()
                batch = self.next_step_batch()  # its wait counts as data, a skipped batch's too
                x = batch["features"].to(device, non_blocking=True)  # (B, T/C, F)
                y = batch["labels"].to(device, non_blocking=True)
                self.wait_s += time.perf_counter() - t
                if cuda:
                    events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
                    events[-1][0].record()
                self.step(x, y)
                if cuda:
                    events[-1][1].record()
                n += x.shape[0]
            sync()
        self.nvml = nvml.samples
        self.busy_s = sum(a.elapsed_time(b) for a, b in events) / 1000
        return n

    def prime(self, real: bool = False) -> None:
        """A few untimed steps: on synthetic input before the model alone (no batch is drawn, so
        the loader has nothing to refill while the model is timed), on real batches after the
        loader opens. Starting reader processes (fork) makes the next write to every page of
        the model, optimizer and allocator a page fault; the trainer pays that once per phase,
        so it stays untimed here."""
        for _ in range(PRIME_STEPS):
            if not real:
                self.step(self.x, self.y)
            else:
                batch = self.next_step_batch()
                self.step(batch["features"].to(self.trainer.device), batch["labels"].to(self.trainer.device))
        sync()

    def next_step_batch(self) -> dict:
        """The loader's next batch for a train step. A compiled step takes full batches only: an
        epoch's shorter last batch would compile it again (another shape), inside a timed round."""
        batch, skipped = next(self.batches), 0
        while self.p.net is not None and batch["features"].shape[0] != self.p.batch_size:
            skipped += 1
            if skipped > len(self.served[-1]):  # a whole epoch without one: there is none
                raise ValueError(f"phase {self.p.number}: no full batch of {self.p.batch_size} in an epoch of its "
                                 f"split, and a compiled step takes full batches only; lower --batch-size")
            batch = next(self.batches)
        return batch

    def open_loader(self) -> None:
        """The trainer's own loader at this phase, built on first use and kept (untimed), primed."""
        if self.batches is None:
            loader = self.host.train_loader(self.p.phase)
            self.served.append(loader)
            self.batches = endless(loader)
        self.prime(real=True)

    def close_loader(self) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None
        self.host.close()  # stops the reader processes

    @property
    def builds(self) -> int | None:
        """Pipelines built for this phase by every loader it opened (DALI; None for torch)."""
        counts = [loader.builds for loader in self.served if hasattr(loader, "builds")]
        return sum(counts) if counts else None


def _round(steps: list[_Steps], timed: bool, say: Callable[[str], None] = lambda text: None) -> None:
    """Every phase once: model alone, then loader alone and end to end on the phase's own loader.
    say(text): what comes next, before each part (the CLI's progress line)."""
    for st in steps:
        what = f"phase {st.p.number} ({st.p.phase.label})"
        compiling = st.p.net is not None and not st.stepped
        say(f"{what}: model alone{', compiling' if compiling else ''}")
        st.prime()
        cpu0, t0 = descendants_cpu_s(), time.perf_counter()
        _timed(st, "model", st.model, timed)
        wall, cpu1 = time.perf_counter() - t0, descendants_cpu_s()
        if timed and cpu0 is not None and cpu1 is not None:  # what every loader's processes did behind it
            st.p.rates.setdefault("loader_cores_during_model", []).append(max(0.0, cpu1 - cpu0) / wall)
        say(f"{what}: {'building its loader' if st.batches is None else 'priming its loader'}")
        st.open_loader()
        say(f"{what}: loader alone")
        _timed(st, "loader", st.loader, timed)
        say(f"{what}: end to end")
        t0 = time.perf_counter()
        _timed(st, "end_to_end", st.end_to_end, timed)
        wall = time.perf_counter() - t0
        if timed:  # the share of the end-to-end run spent waiting in next()
            st.p.rates.setdefault("data_loading_share", []).append(st.wait_s / wall)
            if st.trainer.device.type == "cuda":
                st.p.rates.setdefault("gpu_busy", []).append(st.busy_s / wall)
                if st.nvml:
                    st.p.rates.setdefault("gpu_utilization_nvml", []).append(statistics.fmean(st.nvml))


class NvmlSampler:
    """NVML's GPU utilisation (what nvidia-smi shows), sampled from a thread while the block runs.
    `samples` stays empty without CUDA or without NVML (pip package nvidia-ml-py)."""

    def __init__(self, device: torch.device | None, every_s: float = NVML_SAMPLE_S):
        self.device, self.every_s = device, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self.device is not None and self._read() is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _read(self) -> float | None:
        try:
            return torch.cuda.utilization(self.device) / 100
        except Exception:  # noqa: BLE001  no NVML (nvidia-ml-py missing) or no driver: no samples, no failure
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            value = self._read()
            if value is not None:
                self.samples.append(value)


def _timed(st: _Steps, key: str, run, timed: bool) -> None:
    if not timed:
        run()
        sync()
        return
    st.p.rates.setdefault(key, []).extend(measure(run, repeats=1, warmup=0).rates)


def _paired_speedup(p: _Phase, ref: _Phase, key: str) -> float:
    """Median over rounds of (this phase's rate / the C = 1 rate of the same round)."""
    return statistics.median(a / b for a, b in zip(p.rates[key], ref.rates[key]))


def bench_recipe(recipe: Recipe, phase_numbers: list[int], *, store: str | Path | None = None,
                 batch_size: int | None = None, device: str = "cpu") -> Recipe:
    """The recipe a benchmark runs: its phases `phase_numbers` checked, another store and every
    phase's batch size (as --store and --batch-size give them), the store and CUDA checked."""
    n = len(recipe.phases)
    for k in phase_numbers:
        if not 1 <= k <= n:
            raise ValueError(f"--phase {k}: recipe {recipe.name!r} has phases 1..{n}")
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, batch_size=batch_size),
                                     phases=tuple(dataclasses.replace(p, batch_size=None) for p in recipe.phases))
    if store is not None:
        recipe = dataclasses.replace(recipe, store=str(store))
    if not as_location(recipe.store).exists():  # a folder or an s3:// URL
        raise FileNotFoundError(f"{missing_store(recipe.store)}, or make one of the dataset's shape "
                                "(`bench stand-in-store DIR`) and pass --store DIR")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available here")
    return recipe


def bench_throughput(recipe: Recipe, phase_numbers: list[int], *, store: str | Path | None = None,
                     backend: str | None = None, device: str = "cpu", batch_size: int | None = None,
                     compile_mode: str | None = None, settings: ThroughputSettings = ThroughputSettings(),
                     progress: Callable[[str], None] | None = None,
                     on_round: Callable[[dict], None] | None = None) -> dict:
    """Figures of the phases `phase_numbers` (1-based) of `recipe` and of its full-resolution
    phase, in one run. Returns the JSON payload (see docs/BENCHMARKS.md for the keys).
    batch_size: every phase's batch instead of the recipe's (how the split moves with the batch).
    compile_mode: torch.compile's mode for each phase's model ("default", "reduce-overhead": CUDA
    graphs, ...; default: the recipe's model.compile); compiling happens in the warm-up round,
    which must then be kept (warmup >= 1).
    progress(text): called before each part of the run with what comes next ("round 2/6 (timed):
    phase 1 (pool-avg C=4): end to end"), so that a caller can show it, and a stalled run shows
    where it stalled.
    on_round(payload): called after each timed round but the last with the payload so far
    ("finished": false, "timed_rounds": how many), so that a run cut short (a time limit) keeps its rounds."""
    say = progress or (lambda text: None)
    if compile_mode is None and recipe.model.compile != "none":
        compile_mode = recipe.model.compile
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if compile_mode is not None and settings.warmup < 1:
        raise ValueError("--compile needs --warmup >= 1: the first round compiles, and must not be timed")
    recipe = bench_recipe(recipe, phase_numbers, store=store, batch_size=batch_size, device=device)
    if backend is not None:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, backend=backend))
    ref_number = max(i + 1 for i, p in enumerate(recipe.phases) if p.full_resolution)
    numbers = sorted(set(phase_numbers) | {ref_number})
    load_before = os.getloadavg()
    say("building the phases' models")
    with tempfile.TemporaryDirectory() as out_dir:  # the trainer is only asked for its loaders
        trainer = PhaseTrainer(recipe, recipe.phases, Path(out_dir), "bench", device=device)
        torch.manual_seed(recipe.seed)
        phases = []
        for k in numbers:
            phase = recipe.phases[k - 1]
            res = resolution(trainer.cfg, phase)
            model = AST(trainer.cfg).to(trainer.device)
            res.apply(model, recipe.model)
            lr = phase.lr if phase.lr is not None else recipe.optim.lr
            phases.append(_Phase(k, phase, res, phase.batch_size or recipe.data.batch_size, model,
                                 make_optimizer(recipe, model, lr)))
        for p in phases:
            p.model.train()
            if compile_mode is not None:  # the optimizer keeps the model's own parameters
                p.net = torch.compile(p.model, mode=compile_mode)
        steps = [_Steps(trainer, p, settings, PhaseTrainer(recipe, recipe.phases, Path(out_dir), "bench",
                                                         device=device)) for p in phases]
        with contextlib.ExitStack() as open_loaders:  # each closed even if another's close fails
            for st in steps:
                open_loaders.callback(st.close_loader)
            def payload(timed_rounds: int) -> dict:
                for st in steps:  # DALI: one pipeline per phase, whatever the number of rounds
                    st.p.builds = st.builds
                ref = next(p for p in phases if p.number == ref_number)
                ref_flops = ref.resolution.train_flops_per_sample(trainer.cfg)
                rows = [_row(trainer, p, ref, ref_flops) for p in phases]
                return {
                    "machine": {**describe(), "torch_threads": torch.get_num_threads()},
                    "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
                    "recipe": recipe.name, "store": str(recipe.store), "device": str(trainer.device),
                    "loader": {"backend": resolve_backend(trainer.base),  # the backend that really served
                               "device": trainer.base.device, "num_workers": trainer.base.num_workers,
                               "num_threads": trainer.base.num_threads},
                    "settings": dataclasses.asdict(settings),
                    "finished": timed_rounds == settings.repeats, "timed_rounds": timed_rounds,
                    "compile": compile_mode, "optim_fused": recipe.optim.fused,
                    "reference_phase": ref_number,
                    "phases": rows,
                    "targets": _targets(rows, ref_number),
                    "gpu_targets": _gpu_targets(rows) if trainer.device.type == "cuda" else None,
                }

            rounds = settings.warmup + settings.repeats
            for r in range(rounds):
                kind = "timed" if r >= settings.warmup else "warm-up"
                _round(steps, timed=r >= settings.warmup,
                       say=lambda text, r=r, kind=kind: say(f"round {r + 1}/{rounds} ({kind}): {text}"))
                if on_round and r >= settings.warmup and r + 1 < rounds:
                    on_round(payload(r + 1 - settings.warmup))
            say("closing the loaders")
        result = payload(settings.repeats)
    return result


def _row(trainer: PhaseTrainer, p: _Phase, ref: _Phase, ref_flops: int) -> dict:
    m = {k: Measurement(v) for k, v in p.rates.items()}
    flops = p.resolution.train_flops_per_sample(trainer.cfg)
    return {
        "phase": p.number, "method": p.phase.method, "factor": p.phase.factor, "label": p.phase.label,
        "frames": p.frames, "tokens": p.resolution.tokens,
        "batch_size": p.batch_size,
        "pipeline_builds": p.builds,
        "loader_samples_per_s": m["loader"].median,
        "model_samples_per_s": m["model"].median,
        "end_to_end_samples_per_s": m["end_to_end"].median,
        "data_loading_share": m["data_loading_share"].median,
        # cores' worth of CPU that loader processes (every phase's) used while the model ran alone
        "loader_cores_during_model": (m["loader_cores_during_model"].median
                                      if "loader_cores_during_model" in m else None),
        "gpu_busy": m["gpu_busy"].median if "gpu_busy" in m else None,  # CUDA only
        "gpu_utilization_nvml": m["gpu_utilization_nvml"].median if "gpu_utilization_nvml" in m else None,
        "speedup": {**{k: _paired_speedup(p, ref, k) for k in FIGURES}, "flops": ref_flops / flops},
        "train_step_flops_per_sample": flops,
        "spread": {k: m[k].spread for k in FIGURES},
        "repeats": {k: list(v) for k, v in p.rates.items()},  # as they are now: later rounds add to p.rates
    }


def _targets(rows: list[dict], ref_number: int) -> dict:
    """The TARGETS, checked where they apply (None where they do not)."""
    t = TARGETS
    c4 = [r for r in rows if r["factor"] == 4]
    return {
        "model_speedup_at_c4_ge_3": (all(r["speedup"]["model"] >= t["model_speedup_at_c4_min"] for r in c4)
                                     if c4 else None),
        "end_to_end_speedup_within_15pct_of_model": {
            r["phase"]: r["speedup"]["end_to_end"] >= t["end_to_end_vs_model_speedup_min"] * r["speedup"]["model"]
            for r in rows if r["phase"] != ref_number
        },
        "data_loading_share_le_10pct": {r["phase"]: r["data_loading_share"] <= t["data_loading_share_max"]
                                        for r in rows},
    }


def _gpu_targets(rows: list[dict]) -> dict:
    """The GPU_TARGETS, checked (a run on the GPU only)."""
    t = GPU_TARGETS
    c4 = [r for r in rows if r["factor"] == 4]
    return {
        "data_loading_share_le_5pct": {r["phase"]: r["data_loading_share"] <= t["data_loading_share_max"]
                                       for r in rows},
        "gpu_busy_ge_90pct": {r["phase"]: r["gpu_busy"] >= t["gpu_busy_min"] for r in rows},
        "end_to_end_speedup_at_c4_ge_3": (all(r["speedup"]["end_to_end"] >= t["end_to_end_speedup_at_c4_min"]
                                              for r in c4) if c4 else None),
    }
