"""The fine-tune after pruning, optionally distilled from the dense model (Hinton et al., 2015).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * LM loss

with T the temperature (softened distributions carry the teacher's ranking of wrong tokens;
T^2 keeps the KL gradient on the LM loss's scale) and the KL averaged over tokens. The teacher
is the trained dense model, copied before compression, in eval mode and without gradients.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from suite.model import lm_loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed loss, KL term, LM loss). Logits [B, T, V], targets [B, T]; the KL is taken over
    every position (targets == -100 only drop out of the LM loss)."""
    t = temperature
    student = F.log_softmax(student_logits.flatten(0, 1).float() / t, dim=-1)  # [B*T, V]
    teacher = F.log_softmax(teacher_logits.flatten(0, 1).float() / t, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")  # mean over tokens
    lm = lm_loss(student_logits, targets)
    return alpha * t * t * kl + (1.0 - alpha) * lm, kl, lm


def finetune(model: nn.Module, steps: int, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             optimizer: torch.optim.Optimizer, device: torch.device, grad_accum: int = 1,
             grad_clip: float = 1.0, teacher: nn.Module | None = None, temperature: float = 2.0,
             alpha: float = 0.5,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             ) -> dict[str, Any]:
    """`steps` optimizer steps of `grad_accum` micro-batches each, at the optimizer's own
    learning rate (no schedule). Returns per-step losses for the record."""
    model.train()
    if teacher is not None:
        teacher.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    curve: list[float] = []
    kl_curve: list[float] = []
    for _ in range(steps):
        total = kl_total = 0.0
        for _ in range(grad_accum):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            with autocast():
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss, kl, _ = distillation_loss(logits, teacher_logits, y, temperature, alpha)
                    kl_total += float(kl.detach()) / grad_accum
                else:
                    loss = lm_loss(logits, y)
            (loss / grad_accum).backward()
            total += float(loss.detach()) / grad_accum
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(total)
        if teacher is not None:
            kl_curve.append(kl_total)
    facts: dict[str, Any] = {"finetune_steps_done": steps, "finetune_loss_curve": [round(v, 6) for v in curve]}
    if teacher is not None:
        facts.update({"distill_kl_curve": [round(v, 6) for v in kl_curve],
                      "distill_temperature": temperature, "distill_alpha": alpha})
    return facts
