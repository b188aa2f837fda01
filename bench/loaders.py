"""`bench loaders`: c2f's DALI and torch loaders against an AST-style loader, on the same clips.

One set of 10-s WAV clips is written, built into a store once, and then served by:
- c2f DALI and c2f torch: read the stored 10 ms fbank, crop/pad, compress by C, normalise;
- the AST-style loader (bench/ast_loader.py): decode the WAV and compute Kaldi fbank per
  sample, every epoch, in DataLoader workers. For Frame-Shift by C it computes fbank with a
  10*C ms hop directly (exactly what the store's every-C-th frame equals, and the cheapest way
  an AST-style loader gets that resolution); pooling it cannot skip, so its pooled rows would be
  its C = 1 cost plus the pooling, and are not run.
Same clips, batch size, worker processes and cores for all; shuffled order; augmentation off
(it costs the same for every loader). Loader-only samples/s: batches pulled and dropped.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.timing import Measurement, measure
from bench.throughput import endless

__all__ = ["bench_loaders", "PHASES"]

PHASES = (("none", 1), ("fshift", 2), ("fshift", 4), ("pool-avg", 2), ("pool-avg", 4))

# What c2f's loaders should reach, checked in every report (`targets`):
# - full resolution at least this many times the AST-style loader's samples/s: reading stored
#   features must beat decoding audio and computing fbank every epoch by an order of magnitude;
SPEEDUP_OVER_AST_AT_C1 = 10.0
# - at this factor, not slower than their own C = 1: compressing must never cost more than the
#   smaller batches it serves save, or coarse phases would not train faster.
COARSE_FACTOR = 4


def _pull(batches, n_batches: int) -> int:
    n = 0
    for _ in range(n_batches):
        n += next(batches)["features"].shape[0]  # (B, T/C, F)
    return n


def _c2f(store, reader, backend: str, method: str, factor: int, batch_size: int, workers: int,
         n_batches: int, repeats: int, warmup: int, device: str = "cpu") -> Measurement:
    from c2fdata.pipeline import PipelineConfig, make_loader

    cfg = PipelineConfig(store, "train", method=method, factor=factor, batch_size=batch_size, shuffle=True,
                         backend=backend, num_workers=workers, num_threads=workers, device=device)
    loader = make_loader(cfg, reader)
    batches = endless(loader)
    try:
        return measure(lambda: _pull(batches, n_batches), repeats, warmup)
    finally:
        batches.close()
        loader.close()


def _ast(files, labels, target_frames: int, mean: float, std: float, factor: int, batch_size: int,
         workers: int, n_batches: int, repeats: int, warmup: int) -> Measurement:
    from bench.ast_loader import ast_style_loader
    from c2fdata.features import FbankConfig

    loader = ast_style_loader(files, labels, target_frames // factor, mean, std, batch_size, workers)
    loader.dataset.cfg = _hop_config(FbankConfig(), factor)  # set before the workers start
    batches = _cycle(loader)
    try:
        return measure(lambda: _pull(batches, n_batches), repeats, warmup)
    finally:
        batches.close()


def _hop_config(cfg, factor: int):
    """AST's fbank settings with a 10*C ms hop: Frame-Shift by C computed directly (Kaldi at a
    10*C ms hop equals every C-th frame of the 10 ms features; tested in test_pipeline)."""
    return dataclasses.replace(cfg, frame_shift_ms=cfg.frame_shift_ms * factor)


def _cycle(loader):
    while True:
        for x, _ in loader:
            yield {"features": x}


def bench_loaders(clips: int = 1024, seconds: float = 10.0, batch_size: int = 64, workers: int = 2,
                  backends: tuple[str, ...] = ("dali", "torch"), phases=PHASES, batches: int = 16,
                  ast_batches: int = 4, repeats: int = 5, warmup: int = 1, ast: bool = True,
                  build_workers: int = 2, device: str = "cpu") -> dict:
    """Loader-only samples/s per (loader, method, C) on `clips` clips of `seconds` s, one run.

    batches: batches per timed repeat of the c2f loaders (default: one epoch of 1024 clips);
    ast_batches: the same for the AST-style loader (slower; fewer batches keep the run short).
    device: where c2f's loaders compress and normalise (cpu | gpu); the AST-style loader is CPU-only.
    """
    from bench.ast_loader import files_of_folder_store
    from bench.store import write_clips
    from c2fdata.build import BuildConfig, build_store
    from c2fdata.pipeline import dali_available
    from c2fdata.reader import StoreReader

    backends = tuple(b for b in backends if b != "dali" or dali_available())
    load_before = os.getloadavg()
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("--device gpu but CUDA is not available here")
    out: dict = {"clips": clips, "seconds": seconds, "batch_size": batch_size, "workers": workers, "device": device,
                 "batches_per_repeat": {"c2f": batches, "ast": ast_batches}, "repeats": repeats, "loaders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_clips(Path(tmp) / "audio", clips, seconds)
        t0 = time.perf_counter()
        built = build_store(BuildConfig(dataset="folder", root=root, out=Path(tmp) / "store", workers=build_workers))
        out["build"] = {"clips": built.computed, "seconds": time.perf_counter() - t0, "workers": build_workers}
        store = Path(tmp) / "store"
        reader = StoreReader(store, "train")
        out["target_frames"] = reader.target_frames
        for backend in backends:
            rows = {}
            for method, factor in phases:
                m = _c2f(store, reader, backend, method, factor, batch_size, workers, batches, repeats, warmup,
                         device)
                rows[f"{method}/{factor}"] = _row(method, factor, m)
            out["loaders"][f"c2f-{backend}"] = rows
        if ast:
            files = files_of_folder_store(root, reader.ids, "train")
            rows = {}
            for method, factor in phases:
                if method in ("none", "fshift"):
                    m = _ast(files, reader.labels(), reader.target_frames, reader.mean, reader.std, factor,
                             batch_size, workers, ast_batches, repeats, warmup)
                    rows[f"{method}/{factor}"] = _row(method, factor, m)
            out["loaders"]["ast-style"] = rows
    out["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    _ratios(out)
    return out


def _row(method: str, factor: int, m: Measurement) -> dict:
    return {"method": method, "factor": factor, "samples_per_s": m.median, "spread": m.spread, "repeats": m.rates}


def _ratios(out: dict) -> None:
    """Speed-up of each row against its own loader's C = 1, and c2f against AST-style at the
    same phase; the targets (SPEEDUP_OVER_AST_AT_C1, COARSE_FACTOR) where they apply."""
    loaders = out["loaders"]
    ast = loaders.get("ast-style", {})
    for name, rows in loaders.items():
        base = rows["none/1"]["samples_per_s"]
        for key, r in rows.items():
            r["vs_own_c1"] = r["samples_per_s"] / base
            if name != "ast-style" and key in ast:
                r["vs_ast_style"] = r["samples_per_s"] / ast[key]["samples_per_s"]
    targets = {}
    for name, rows in loaders.items():
        if name == "ast-style":
            continue
        if "none/1" in ast:
            key = f"{name}_ge_{SPEEDUP_OVER_AST_AT_C1:g}x_ast_at_c1"
            targets[key] = rows["none/1"]["vs_ast_style"] >= SPEEDUP_OVER_AST_AT_C1
        targets[f"{name}_c{COARSE_FACTOR}_not_slower_than_c1"] = {
            key: r["vs_own_c1"] >= 1.0 for key, r in rows.items() if r["factor"] == COARSE_FACTOR
        }
    out["targets"] = targets
