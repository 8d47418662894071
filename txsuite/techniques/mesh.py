"""The device mesh of a distributed cell: ranks laid out as (pp, dp, tp).

tp is the innermost dimension so the ranks that exchange activations every layer are
neighbours (same node, NVLink); pp is the outermost because stages exchange only one
activation per micro-batch (torchtitan and Megatron use the same nesting)."""
from __future__ import annotations

import torch

DIMS = ("pp", "dp", "tp")


def build_mesh(cell, device: torch.device):
    """A DeviceMesh over every rank, or None when the cell runs without a process group (a
    parallel engine over a single rank, e.g. `fsdp` with dp 1, still gets a 1-rank mesh)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return None
    p = cell.parallel
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device.type, (p.pp, p.dp, p.tp), mesh_dim_names=DIMS)


def coordinate(mesh, dim: str) -> int:
    """This rank's index along one mesh dimension (0 without a mesh)."""
    return 0 if mesh is None else mesh.get_local_rank(dim)
