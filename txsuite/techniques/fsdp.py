"""Fully sharded data parallelism with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Parameters, gradients and optimizer state are sharded over the dp ranks (ZeRO-3 semantics):
each block's parameters are all-gathered just before its forward/backward and freed after,
gradients are reduce-scattered. Each block is its own unit (so only one block is gathered at a
time), then the root takes what is left (embeddings, final norm, head).

Ordering: last of the per-block techniques (after tensor parallel and checkpointing), as
torchtitan does: FSDP wraps whatever the block has become, and with tp > 1 it shards the
tensor-parallel DTensors over the dp dimension too (2-D). During gradient accumulation the
reduce-scatter is skipped until the step's last micro-batch."""
from __future__ import annotations

import contextlib

from torch.distributed.fsdp import fully_shard

from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    if cell.parallel.engine != "fsdp":
        return setup
    dp_mesh = setup.mesh["dp"]
    # Under pipeline parallelism a stage's parameters are needed again in its backward soon
    # after its forward; keeping them gathered avoids a second all-gather (torchtitan does so).
    reshard = cell.parallel.pp == 1
    for part in setup.parts:
        for block in part.blocks:
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard)
        fully_shard(part, mesh=dp_mesh, reshard_after_forward=reshard)
    setup.accumulation = _sync_on_last(setup.parts)
    setup.facts["fsdp_shards"] = cell.parallel.dp
    return setup


def _sync_on_last(parts):
    @contextlib.contextmanager
    def accumulation(last: bool):
        for part in parts:
            part.set_requires_gradient_sync(last)
        yield
    return accumulation
