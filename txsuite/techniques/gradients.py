"""Gradient clipping by the global norm when parameters are spread over ranks.

The norm must be the single-process norm: sharded (FSDP) and tensor-parallel parameters are
DTensors whose norm reduces over their mesh; plain parameters replicated across tp ranks hold
the same gradient on each, so they count once; pipeline stages hold disjoint parameters, so
their squared norms add over the pp group. A tied weight held by two stages is counted on one."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    """Last in the order: once every technique has placed the parameters, choose how the
    global gradient norm is computed. One process keeps torch's own clip."""
    if setup.mesh is None:
        return setup
    from txsuite.techniques.pipeline import tied_copy
    pipeline = setup.pipeline
    pp_group = setup.mesh.get_group("pp") if pipeline is not None else None
    not_in_norm = tied_copy(pipeline, setup.parts) if pipeline is not None else ()
    setup.clip_grad_norm = global_clipper(pp_group, not_in_norm)
    return setup


def global_clipper(pp_group=None, not_in_norm: tuple = ()):
    """A `clip_grad_norm(params, max_norm)` for TrainSetup. `not_in_norm`: parameters whose
    gradient another rank already counts (they are still scaled)."""
    skip = {id(p) for p in not_in_norm}

    def clip(params: list[torch.Tensor], max_norm: float) -> None:
        grads = [p.grad for p in params if p.grad is not None and id(p) not in skip]
        total_sq = torch.zeros((), dtype=torch.float32, device=params[0].device)
        for group in _by_mesh(grads):  # 2-D layouts mix dp-sharded and (dp, tp)-sharded DTensors
            total_sq = total_sq + _squared_norm(group)
        if pp_group is not None:
            dist.all_reduce(total_sq, group=pp_group)  # stages hold disjoint parameters
        total = total_sq.sqrt()
        for group in _by_mesh(params):  # foreach kernels take one kind of tensor on one mesh
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)

    return clip


def _by_mesh(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Plain tensors in one group, DTensors in one group per device mesh."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault(t.device_mesh if isinstance(t, DTensor) else None, []).append(t)
    return list(groups.values())


def _squared_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    norm = torch.nn.utils.get_total_norm(grads, 2.0, foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()  # the DTensor norm reduces over its mesh; materialise it here
    return norm.float() ** 2
