"""Describe the machine a benchmark ran on (printed with and saved beside every figure)."""

from __future__ import annotations

import os
import platform


def describe() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import nvidia.dali as dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": gpu, "torch": torch.__version__, "dali": dali_version, "python": platform.python_version(),
    }


def busy_warning(load_1min: float, cores: int) -> str | None:
    """A warning when more processes are runnable than there are cores before a benchmark starts:
    another job shares the machine, and its figures would come out slow and noisy (on the 2-core
    machine one such run had train steps 3-4x slower). A benchmark that just ended leaves a load
    of about its own core count, which is not warned about."""
    if load_1min <= cores:
        return None
    return (f"warning: the 1-minute load average is {load_1min:.2f} on {cores} cores: other processes are "
            f"running, and figures taken now will be slow and noisy; stop them or wait, then measure")
