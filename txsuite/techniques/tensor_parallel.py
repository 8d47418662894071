"""Tensor parallelism (Megatron-LM's split) with torch.distributed.tensor.parallel.

In every block, the first linear of each pair is split by output features (column-wise) and
the second by input features (row-wise), so each pair needs one all-reduce in forward and one
in backward:
    attn.qkv  column-wise: each tp rank computes q, k, v for its H/tp heads
    attn.proj row-wise:    partial outputs all-reduced
    mlp.fc    column-wise: each rank holds d_ff/tp neurons
    mlp.proj  row-wise
Embeddings, norms and the (tied) output head stay replicated: their gradients are identical on
every tp rank because their inputs are.

Ordering: after the pipeline split (it walks this rank's stage modules) and before
checkpointing and FSDP, which wrap the tensor-parallel blocks (torchtitan: TP -> AC -> FSDP).
"""
from __future__ import annotations

import torch
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from txsuite.techniques.setup import TrainSetup

BLOCK_PLAN = {
    "attn.qkv": ColwiseParallel,
    "attn.proj": RowwiseParallel,
    "mlp.fc": ColwiseParallel,
    "mlp.proj": RowwiseParallel,
}


def apply(setup: TrainSetup, cell) -> TrainSetup:
    tp = cell.parallel.tp
    if tp == 1:
        return setup
    tp_mesh = setup.mesh["tp"]
    for part in setup.parts:
        for block in part.blocks:
            group_heads_by_rank(block.attn.qkv, tp)
            parallelize_module(block, tp_mesh, {name: style() for name, style in BLOCK_PLAN.items()})
    setup.facts["tp_degree"] = tp
    return setup


@torch.no_grad()
def group_heads_by_rank(qkv: torch.nn.Linear, tp: int) -> None:
    """Reorder the fused projection's output rows from [q | k | v] (each H heads) to
    [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (each H/tp heads), so that a contiguous column-wise shard
    holds q, k and v of the same heads. The model infers its local head count from the shard's
    width, so the maths per head is unchanged."""
    out = qkv.weight.shape[0]  # 3 * H * D
    per_rank = out // 3 // tp  # H/tp * D rows of each of q, k, v
    order = torch.arange(out, device=qkv.weight.device).view(3, tp, per_rank).transpose(0, 1).reshape(-1)
    qkv.weight.copy_(qkv.weight[order])
    if qkv.bias is not None:
        qkv.bias.copy_(qkv.bias[order])
