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


def descendants_cpu_s(root: int | None = None) -> float | None:
    """CPU seconds (user + system) spent so far by every live process below `root` (default:
    this one): a loader's reader or worker processes. Read from /proc, so None where there is
    none (not Linux). Threads inside this process (DALI's operator threads) are not included."""
    import os

    table = _process_table()
    if table is None:
        return None
    below = _below(table, os.getpid() if root is None else root)
    return sum(table[p][1] for p in below) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> set[int]:
    """Every live process below `root` (children, theirs, ...), read from /proc; empty where there
    is none. A process that has left its parent's session (torchrun's workers) is included while
    its parent lives: read before signalling, since an orphan is adopted by init."""
    table = _process_table()
    return set() if table is None else _below(table, root)


def _process_table() -> dict[int, tuple[int, int]] | None:
    """pid -> (parent pid, CPU clock ticks) of every live process; None without /proc."""
    import os

    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    table = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # "pid (comm) state ppid ..." where comm may hold spaces or parentheses
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        table[pid] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid; utime + stime (stat's 14, 15)
    return table


def _below(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    below, frontier = set(), {root}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier} - below
        below |= frontier
    return below
