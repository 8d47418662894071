"""Activation checkpointing: keep only block inputs in the forward pass and recompute each
checkpointed block's activations during backward (memory for ~1 extra forward of FLOPs).

none      nothing
full      every transformer block
every_k   blocks 0, k, 2k, ... (k = memory.checkpoint_every): a memory/compute middle ground
"""
from __future__ import annotations

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)

from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    mode = cell.memory.activation_checkpointing
    recomputed = 0
    for part in setup.parts:  # the whole model, or this rank's pipeline stages
        blocks = part.blocks
        if mode == "none":
            chosen = []
        elif mode == "full":
            chosen = list(range(len(blocks)))
        else:
            chosen = list(range(0, len(blocks), cell.memory.checkpoint_every))
        for i in chosen:
            # Non-reentrant checkpointing: works with autocast, compile and parameters that do
            # not require grad; RNG state is preserved so dropout masks match in the recomputation.
            blocks[i] = checkpoint_wrapper(blocks[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        recomputed += len(chosen)
    setup.facts["recompute_layers"] = recomputed
    return setup
