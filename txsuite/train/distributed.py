"""Joining the process group of a distributed cell, and reductions over its ranks."""
from __future__ import annotations

import os

import torch

from txsuite.config.spec import CellConfig


def init_distributed(cell: CellConfig, device: torch.device) -> tuple[int, int]:
    """(rank, world size). Under torchrun join the process group: gloo on CPU, nccl on CUDA
    (DeepSpeed through its own init_distributed, which then shares the torch group). A cell
    that is not distributed, or a process not started by torchrun, is rank 0 of 1."""
    if "WORLD_SIZE" not in os.environ or not cell.parallel.distributed:
        return 0, 1
    import torch.distributed as dist
    backend = "nccl" if device.type == "cuda" else "gloo"
    if cell.parallel.engine == "deepspeed":
        import deepspeed
        deepspeed.init_distributed(dist_backend=backend)
    elif not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.get_world_size() != cell.parallel.world_size:
        raise RuntimeError(f"launched with {dist.get_world_size()} ranks but dp*tp*pp = {cell.parallel.world_size}")
    return dist.get_rank(), dist.get_world_size()


def global_mean(value: torch.Tensor, holds: bool) -> torch.Tensor:
    """Mean of `value` over the ranks where `holds` (e.g. the last pipeline stages)."""
    pair = torch.stack([value.float() * holds, torch.ones_like(value, dtype=torch.float32) * holds])
    torch.distributed.all_reduce(pair)
    return pair[0] / pair[1]


def leave_process_group() -> None:
    import sys
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
