"""torch.distributed from torchrun's environment: gloo on CPU, NCCL on GPU; no cluster code.
torch is imported where it is used: the command-line tools ask `launched_by_torchrun` at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    grouped: bool = False  # a process group exists (torchrun), even with one process

    @property
    def enabled(self) -> bool:
        """Whether ranks exchange anything: DDP wrapping, equal batches per rank, gathers."""
        return self.grouped

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes, else a single process. Under torchrun a group
    is created even for one process, so that a one-GPU machine runs NCCL exactly as a node does."""
    if not launched_by_torchrun():
        return Dist()
    import torch
    import torch.distributed as dist

    local = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(local)
            # device_id binds the group to this rank's GPU (eager NCCL init, no guessing of devices)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, grouped=True)


def close_distributed() -> None:
    """Leave the process group (torchrun expects it to be destroyed before the process exits)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def gather_cat(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor of any first dimension from every rank (on every rank), in rank order."""
    if not d.enabled:
        return tensor
    import torch
    import torch.distributed as dist

    parts = [None] * d.world_size
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)
