"""Honest timing: warm-up excluded, CUDA synchronised, repeats summarised by median and spread."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Measurement:
    """Rates (items/s) of the timed repeats."""

    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """Half the range between the fastest and slowest repeat, as a share of the median."""
        return (max(self.rates) - min(self.rates)) / 2 / self.median if self.median else 0.0

    def to_dict(self) -> dict:
        return {"median": self.median, "spread": self.spread, "repeats": self.rates}


def measure(run: Callable[[], int], repeats: int = 5, warmup: int = 1) -> Measurement:
    """run() does a unit of work and returns how many items it processed."""
    for _ in range(warmup):
        run()
    sync()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = run()
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return Measurement(rates)
