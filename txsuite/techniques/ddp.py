"""Data parallelism with DistributedDataParallel: every rank holds the whole model and a
1/dp share of each optimizer step's samples; gradients are averaged across ranks during
backward (bucketed all-reduce overlapping the backward pass).

Ordering: after precision (DDP's buckets capture parameter dtypes) and checkpointing, before
compile (torch.compile of a DDP module splits graphs at bucket boundaries: DDPOptimizer).
During gradient accumulation the all-reduce runs only on the step's last micro-batch."""
from __future__ import annotations

import contextlib

from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    if cell.parallel.engine != "ddp":
        return setup
    if cell.parallel.world_size > cell.parallel.dp:
        # tp/pp with a single replica (the plan rejects ddp with dp > 1 and tp/pp): there is
        # nothing to all-reduce over, and DDP cannot wrap DTensor shards or pipeline stages.
        setup.facts["ddp"] = "single replica: not wrapped"
        return setup
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():
        raise RuntimeError("engine 'ddp' needs the worker to be started by torchrun (the runner does this)")
    device_ids = [setup.device.index] if setup.device.type == "cuda" else None
    ddp = DistributedDataParallel(setup.model, device_ids=device_ids)
    setup.model = ddp
    setup.parts = [ddp.module]
    setup.accumulation = lambda last: contextlib.nullcontext() if last else ddp.no_sync()
    return setup
