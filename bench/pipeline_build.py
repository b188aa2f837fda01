"""`bench pipeline-build`: what one DALI pipeline costs to start, build to first batch.

A DALI pipeline bakes in its phase, so every phase (and evaluation loader) builds one, and each
build starts the pipeline's reader processes. Where CUDA is up they must be spawned, not forked,
and a spawned process imports whatever unpickling its batch source needs (`--start-method spawn`
gives that cost on any machine, GPU or not).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.timing import Measurement

START_METHODS = ("spawn", "fork")


def bench_pipeline_build(store: str | Path | None = None, split: str = "balanced_train", workers: int = 2,
                         start_method: str = "spawn", repeats: int = 3, method: str = "fshift",
                         factor: int = 4, batch_size: int = 12) -> dict:
    """Seconds from making a DALI loader to holding its first batch, `repeats` times (a new
    pipeline each time). Without `store`, a 48-clip stand-in store of 10-s clips is built first."""
    from c2fdata.pipeline import PipelineConfig, dali, make_loader
    from c2fdata.reader import StoreReader

    if start_method not in START_METHODS:
        raise ValueError(f"start method must be one of {', '.join(START_METHODS)}, got {start_method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        if store is None:
            from bench.store import build_stand_in

            store = Path(tmp) / "store"
            build_stand_in(store, {split: 48}, classes=4, workers=1)
        reader = StoreReader(store, split)
        chosen = dali._start_method
        dali._start_method = lambda gpu: start_method  # what a GPU pipeline would do, on any machine
        seconds = []
        try:
            for rep in range(repeats):
                cfg = PipelineConfig(str(store), split, batch_size=batch_size, num_workers=workers, num_threads=1,
                                     seed=rep, backend="dali", method=method, factor=factor)
                t0 = time.perf_counter()
                with make_loader(cfg, reader) as loader:
                    next(iter(loader.epoch_batches(0)))
                    seconds.append(time.perf_counter() - t0)
        finally:
            dali._start_method = chosen
    m = Measurement([1 / s for s in seconds])  # builds per second: median and spread as elsewhere
    return {"store": str(store), "workers": workers, "start_method": start_method, "method": method,
            "factor": factor, "batch_size": batch_size, "seconds": seconds, "median_s": 1 / m.median,
            "spread": m.spread, "load_average": list(os.getloadavg())}
