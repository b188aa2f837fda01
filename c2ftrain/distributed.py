"""torch.distributed from torchrun's environment: gloo on CPU, NCCL on GPU; no cluster code."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def gather_cat(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor of any first dimension from every rank (on every rank), in rank order."""
    if not d.enabled:
        return tensor
    parts = [None] * d.world_size
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts)


def broadcast_object(d: Dist, obj):
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
