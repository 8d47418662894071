"""A short fine-tune of an already trained (e.g. pruned) model, through the same Trainer step
as training, with a pluggable objective (language modelling, or distillation from a teacher:
txsuite.compress.distill.Distillation)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from txsuite.config.spec import TrainSpec
from txsuite.techniques import TrainSetup
from txsuite.train.optimizers import build_optimizer
from txsuite.train.schedule import constant_schedule
from txsuite.train.trainer import Objective, Trainer


def finetune(model: torch.nn.Module, steps: int, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             train: TrainSpec, device: torch.device, objective: Objective,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             after_step: Callable[[], None] | None = None) -> list[float]:
    """`steps` optimizer steps of the cell's optimizer (a fresh one, over the model's current
    parameters) at its base learning rate, `train.grad_accum` micro-batches each. Returns the
    loss of every step; `after_step` runs after each (e.g. to read a distillation term)."""
    optimizer = build_optimizer(model, train, device)
    trainer = Trainer(TrainSetup(model=model, device=device, autocast=autocast), optimizer,
                      constant_schedule(optimizer), train.grad_accum, train.grad_clip, objective=objective)
    curve = []
    for _ in range(steps):
        curve.append(float(trainer.step(batches)))
        if after_step is not None:
            after_step()
    model.eval()
    return curve
