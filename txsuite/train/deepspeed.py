"""The optimizer step of a DeepSpeed cell (L4): the engine built by txsuite.techniques.deepspeed
owns accumulation, clipping, precision, the optimizer and the schedule."""
from __future__ import annotations

from typing import Iterator

import torch

from txsuite.train.evaluation import Evaluation, evaluate_module
from txsuite.train.trainer import Trainer, language_modelling


class DeepSpeedTrainer(Trainer):
    def __init__(self, setup, engine, optimizer, schedule, grad_accum: int, objective=language_modelling):
        super().__init__(setup, optimizer, schedule, grad_accum, grad_clip=0.0, objective=objective)
        self.engine = engine

    def step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self.engine.train()
        total = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            x, y = next(batches)
            loss = self.objective(self.engine, x.to(self.device), y.to(self.device))
            self.engine.backward(loss)  # scales by 1/grad_accum itself
            self.engine.step()  # steps optimizer and schedule at the accumulation boundary only
            total += loss.detach() / self.grad_accum
        return total

    def evaluate(self, batches, per_sequence: bool = False) -> Evaluation:
        # the engine is a module: the shared evaluation runs it (DeepSpeed owns precision, so no autocast)
        return evaluate_module(self.engine, batches, self.device, per_sequence=per_sequence)
