"""`bench handover`: what one batch costs the training process's main thread when the loader is ahead.

On a fast GPU a train step is short (AST base at C = 4, batch 12: about 30 ms on an H200), and the
data-loading share of a step is about (time inside next()) / (step time). The loader's worker
processes read and compress behind the step, but handing a finished batch over runs in the main
thread, between two steps: DALI feeds its external source the batches its reader processes
finished (shared memory), starts the next iteration and wraps the outputs (DLPack); the torch
DataLoader takes the batch off its queue, rebuilds the shared-memory tensors and, for a GPU, its
pin-memory thread (which needs the GIL) pins them. That cost does not shrink with the step.

Here the trainer's own loader of each phase of a recipe (augmentation, mixup and hand-over dtype as
the recipe has them) serves a consumer that stands in for a launch-bound GPU step: the main thread
busy in Python for `step_ms` (holding the GIL, as an eager step launching kernels does), then
next(). No model runs, so the figure is the loader's alone, on any machine.

Each next() is timed twice: wall time, and the main thread's own CPU time (a thread blocked on a
queue, a lock or the GIL uses none). The CPU time is the hand-over's work, the floor of the
data-loading share whatever the loader's speed: cpu / (cpu + step). The rest of the wall time is
waiting: for a batch the workers have not finished (the loader did not keep up with the step), or
for the GIL (another thread of the process holding it).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from c2ftrain.recipe import Recipe

__all__ = ["bench_handover", "spin"]

def spin(seconds: float) -> None:
    """Keep the main thread busy in Python for `seconds` (holding the GIL between the
    interpreter's switch intervals, as a thread launching CUDA kernels does)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> dict:
    return {"median": statistics.median(values) * 1e3, "p90": _percentile(values, 0.9) * 1e3,
            "mean": statistics.fmean(values) * 1e3, "max": max(values) * 1e3}


def _serve(loader, batches: int, warmup: int, step_s: float) -> dict:
    """next()'s wall and main-thread CPU time for `batches` batches after `warmup`, each next()
    after a step."""
    from bench.throughput import endless

    it = endless(loader)
    walls, cpus = [], []
    try:
        t0 = time.perf_counter()
        batch = next(it)  # the first batch waits for the pipeline to build and its workers to start
        first_s = time.perf_counter() - t0
        for k in range(warmup + batches):
            spin(step_s)
            t, c = time.perf_counter(), time.thread_time()
            batch = next(it)
            if k >= warmup:
                cpus.append(time.thread_time() - c)
                walls.append(time.perf_counter() - t)
    finally:
        it.close()
    steps = step_s * len(walls)
    return {
        "next_ms": _ms(walls),  # wall time inside next()
        "main_cpu_ms": _ms(cpus),  # the main thread's CPU time inside next(): the hand-over's work
        "waiting_ms": _ms([w - c for w, c in zip(walls, cpus)]),  # for the workers, or for the GIL
        "share_at_step": sum(walls) / (sum(walls) + steps),  # data-loading share, as measured
        "floor_share_at_step": sum(cpus) / (sum(cpus) + steps),  # what the hand-over's work alone costs
        "first_batch_s": first_s,
        "batch": {"shape": list(batch["features"].shape), "dtype": str(batch["features"].dtype).removeprefix("torch."),
                  "device": str(batch["features"].device)},
    }


def bench_handover(recipe: Recipe, phase_numbers: list[int], *, store: str | Path | None = None,
                   backends: tuple[str, ...] = ("dali", "torch"), device: str = "cpu",
                   batch_size: int | None = None, step_ms: float = 30.0, batches: int = 60,
                   warmup: int = 10) -> dict:
    """Per loader backend and phase of `recipe` (1-based numbers): next()'s time in the main
    thread when each batch follows a `step_ms` step that keeps the main thread busy (see the
    module's docstring). The loaders are the trainer's own, as `bench throughput` uses them
    (augmentation, mixup and the hand-over dtype as the recipe says). device: where the trainer
    would train (cpu | cuda); its loaders then hand over there."""
    import dataclasses
    import tempfile

    from bench.throughput import bench_recipe
    from c2fdata.pipeline import dali_available, resolve_backend
    from c2ftrain.trainer import PhaseTrainer

    if step_ms <= 0:
        raise ValueError(f"--step-ms must be > 0, got {step_ms}")
    if batches < 1 or warmup < 0:
        raise ValueError(f"--batches must be >= 1 and --warmup >= 0, got {batches} and {warmup}")
    if "dali" in backends and not dali_available():
        raise ImportError("--loader dali: DALI does not import here (pip install nvidia-dali-cuda130)")
    recipe = bench_recipe(recipe, phase_numbers, store=store, batch_size=batch_size, device=device)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for backend in backends:
            rec = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, backend=backend))
            for k in phase_numbers:
                phase = rec.phases[k - 1]
                trainer = PhaseTrainer(rec, rec.phases, Path(out_dir), "bench", device=device)
                try:
                    served = resolve_backend(trainer.base)
                    row = _serve(trainer.train_loader(phase), batches, warmup, step_ms / 1e3)
                finally:
                    trainer.close()
                rows.append({"loader": served, "loader_device": trainer.base.device, "phase": k,
                             "label": phase.label, "batch_size": phase.batch_size or rec.data.batch_size, **row})
    return {"recipe": recipe.name, "store": str(recipe.store), "device": device, "step_ms": step_ms,
            "batches": batches, "warmup": warmup, "rows": rows}
