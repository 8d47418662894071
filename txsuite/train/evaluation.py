"""Validation loss on the fixed validation batches: the same windows for every cell, so the
losses of two cells compare, mean to mean and sequence to sequence."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from txsuite.model import sequence_loss_sums

EVAL_BATCH = 8  # sequences per validation batch (train.eval_batches of them), whatever the micro-batch


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean over every scored token of the validation batches
    per_sequence: list[float] | None = None  # mean loss of each validation sequence, when asked for


@torch.no_grad()
def val_losses(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               device: torch.device, autocast=contextlib.nullcontext) -> tuple[float, list[float]]:
    """(mean loss over every scored token, mean loss of each validation sequence). Leaves the
    model in eval mode. The per-sequence losses let two cells evaluated on the same fixed
    windows be compared pair by pair (the report's standard error of a loss difference)."""
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


def evaluate_module(model: torch.nn.Module, batches, device: torch.device, autocast=contextlib.nullcontext,
                    per_sequence: bool = False) -> Evaluation:
    mean, seqs = val_losses(model, batches, device, autocast)
    return Evaluation(mean, seqs if per_sequence else None)
