"""One function per optimizer name of suite.config.spec.OPTIMIZERS (a test checks the two
lists agree). The plan knows each optimizer's hyperparameters and state size from that table;
this module knows how to build it. Adding an optimizer: an OptimizerInfo entry there, a
function here."""
from __future__ import annotations

from typing import Callable

import torch

from suite.config.spec import TrainSpec

Builder = Callable[[list[dict], TrainSpec, torch.device], torch.optim.Optimizer]
BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return register


def build_optimizer(model: torch.nn.Module, train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """The cell's optimizer over the model's trainable parameters, weight decay on matrices
    only (not biases, norms), as GPT-2/nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return BUILDERS[train.optimizer](groups, train, device)


@builder("adamw")
def adamw(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels exist for CUDA and CPU. On CPU, measured on the 4x256 model (bench/README.md):
    # foreach 7.5 ms per optimizer step, a plain loop 4.6 ms, fused 2.05 ms.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(split_by_dtensor(groups), lr=train.lr, betas=(train.beta1, train.beta2),
                             fused=fused or None, foreach=None if fused else True)


@builder("sgd")
def sgd(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.beta1)


def split_by_dtensor(groups: list[dict]) -> list[dict]:
    """Each group split into its sharded (DTensor) and plain parameters: tensor parallelism
    shards some and replicates others, and the fused/multi-tensor kernels refuse a group that
    mixes the two (torch steps each group on its own). Empty groups are dropped."""
    from torch.distributed.tensor import DTensor
    out = []
    for group in groups:
        for sharded in (False, True):
            mine = [p for p in group["params"] if isinstance(p, DTensor) == sharded]
            if mine:
                out.append({**group, "params": mine})
    return out
