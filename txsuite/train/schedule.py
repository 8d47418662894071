"""The learning-rate schedule of a cell."""
from __future__ import annotations

import math

import torch

from txsuite.config.spec import TrainSpec


def build_schedule(optimizer: torch.optim.Optimizer, train: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear LR warm-up over lr_warmup_steps, then cosine/linear decay to min_lr_ratio * lr
    (or constant) over the rest of the run (warm-up + measured steps)."""
    total = train.total_steps
    warm = train.lr_warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if train.schedule == "constant" or total <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if train.schedule == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return train.min_lr_ratio + (1.0 - train.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's own learning rate at every step (a fine-tune after training)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
