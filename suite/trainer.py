"""One optimizer step, and the optimizer/schedule it uses (L2).

Kept minimal on purpose: `bench/test_bench_overhead.py` holds this step to within 2% of a
bare hand-written PyTorch loop.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

from suite.model import lm_loss, sequence_loss_sums
from suite.spec import TrainSpec
from suite.techniques import TrainSetup
from suite.techniques.compilation import eager


def build_optimizer(model: torch.nn.Module, train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms), as GPT-2/nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.beta1)
    # Fused kernels exist for CUDA and CPU. On CPU, measured on the 4x256 model (bench/README.md):
    # foreach 7.5 ms per optimizer step, a plain loop 4.6 ms, fused 2.05 ms.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(_split_by_dtensor(groups), lr=train.lr, betas=(train.beta1, train.beta2),
                             fused=fused or None, foreach=None if fused else True)


def _split_by_dtensor(groups: list[dict]) -> list[dict]:
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


def build_schedule(optimizer: torch.optim.Optimizer, train: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear LR warm-up over lr_warmup_steps, then cosine/linear decay to min_lr_ratio * lr
    (or constant) over the rest of the run (warm-up + measured steps)."""
    total = train.warmup_steps + train.steps
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


def language_modelling(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training objective: next-token cross-entropy of model(x) [B, T, V] against y [B, T]."""
    return lm_loss(model(x), y)


class Trainer:
    """One optimizer step over grad_accum micro-batches of a model this process runs whole or
    as a tensor-parallel / data-parallel shard. `objective(model, x, y) -> loss` is the loss of
    one micro-batch (language modelling; distillation's mixed loss for a fine-tune)."""

    holds_loss = True  # this rank computes the step's loss (not so on inner pipeline stages)

    def __init__(self, setup: TrainSetup, optimizer: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LRScheduler, grad_accum: int, grad_clip: float,
                 objective: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = language_modelling):
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
                with self.autocast():
                    loss = self.objective(self.model, x, y) / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
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

    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss over every scored token of the validation batches (run eagerly)."""
        return mean_val_loss(eager(self.model), batches, self.device, self.autocast)


def mean_val_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device, autocast=contextlib.nullcontext) -> float:
    """Mean loss of `model` over every scored token of the validation batches (leaves the model
    in eval mode). Also used on the compressed model, which may be another module object."""
    return val_losses(model, batches, device, autocast)[0]


@torch.no_grad()
def val_losses(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               device: torch.device, autocast=contextlib.nullcontext) -> tuple[float, list[float]]:
    """(mean loss over every scored token, mean loss of each validation sequence). The
    per-sequence losses let two cells evaluated on the same fixed windows be compared pair by
    pair (the report's standard error of a loss difference)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    per_sequence: list[torch.Tensor] = []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            sums, counts = sequence_loss_sums(model(x), y)  # [B], [B]
        loss_sum += sums.sum()
        count += int(counts.sum())
        per_sequence.append(sums / counts.clamp(min=1))
    return float(loss_sum / max(count, 1)), torch.cat(per_sequence).tolist() if per_sequence else []


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's own learning rate at every step (a fine-tune after training)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
