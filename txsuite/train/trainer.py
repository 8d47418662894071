"""One optimizer step (L4), and the training objective it minimises.

Kept minimal on purpose: `bench/test_bench_overhead.py` holds this step to within 2% of a
bare hand-written PyTorch loop. Every trainer (this one, PipelineTrainer, DeepSpeedTrainer)
offers the same two calls: `step(batches) -> loss tensor` and `evaluate(batches,
per_sequence=False) -> Evaluation`.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from txsuite.model import language_modelling
from txsuite.techniques import TrainSetup
from txsuite.techniques.compilation import eager
from txsuite.train.evaluation import Evaluation, evaluate_module

Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """One optimizer step over grad_accum micro-batches of a model this process runs whole or
    as a tensor-parallel / data-parallel shard. `objective(model, x, y) -> loss` is the loss of
    one micro-batch (language modelling; distillation's mixed loss for a fine-tune). An objective
    with a `backward(model, x, y, scale, autocast) -> loss` method runs its own forward and
    backward passes instead (the adversarial objective: two of each; the plan keeps it to
    single-process cells without loss scaling) and returns the scaled loss to report."""

    holds_loss = True  # this rank computes the step's loss (not so on inner pipeline stages)

    def __init__(self, setup: TrainSetup, optimizer: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LRScheduler, grad_accum: int, grad_clip: float,
                 objective: Objective = language_modelling):
        self.setup = setup
        self.objective = objective
        self.model = setup.model
        self.device = setup.device
        self.autocast = setup.autocast
        self.scaler = setup.scaler
        self.optimizer = optimizer
        self.schedule = schedule
        self.grad_accum = grad_accum
        self.grad_clip = grad_clip
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.non_blocking = self.device.type == "cuda"
        self.noise_scale = None  # a txsuite.train.noise_scale.NoiseScale when the cell measures it

    def step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Forward/backward over grad_accum micro-batches, then one optimizer step.
        Returns the step's loss (mean over micro-batches) as a detached tensor: reading it is
        left to the caller so no host sync happens here."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = next(batches)
            x = x.to(self.device, non_blocking=self.non_blocking)  # [B, T]
            y = y.to(self.device, non_blocking=self.non_blocking)  # [B, T]
            # data-parallel engines reduce gradients only on the last micro-batch of the step
            with self.setup.accumulation(micro == self.grad_accum - 1):
                if hasattr(self.objective, "backward"):  # an objective with passes of its own (adversarial)
                    loss = self.objective.backward(self.model, x, y, 1.0 / self.grad_accum, self.autocast)
                else:
                    with self.autocast():
                        loss = self.objective(self.model, x, y) / self.grad_accum
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
            if self.noise_scale is not None and micro == 0:
                self.noise_scale.after_first(self.params)
            total += loss.detach()
        if self.noise_scale is not None:
            self.noise_scale.after_all(self.params)
        self.apply_gradients()
        return total

    def apply_gradients(self) -> None:
        """Gradient hooks, unscale, clip, optimizer and LR schedule step (gradients are ready)."""
        for hook in self.setup.grad_hooks:
            hook()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        if self.grad_clip > 0:
            self.setup.clip_grad_norm(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()

    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]], per_sequence: bool = False) -> Evaluation:
        """Mean loss over every scored token of the validation batches (and, if asked, each
        sequence's), run eagerly: a compiled model would recompile for eval mode."""
        return evaluate_module(eager(self.model), batches, self.device, self.autocast, per_sequence)
