"""Distillation from the dense model (Hinton et al., 2015): the objective of the fine-tune
after pruning (txsuite/techniques/compression.py runs it through txsuite.train.finetune).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * LM loss

with T the temperature (softened distributions carry the teacher's ranking of wrong tokens;
T^2 keeps the KL gradient on the LM loss's scale) and the KL averaged over tokens. The teacher
is the trained dense model, copied before compression, in eval mode and without gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from txsuite.model import lm_loss


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


class Distillation:
    """A Trainer objective: the mixed loss of the student against a frozen teacher. Keeps each
    micro-batch's KL term (detached, on the device) until `step_kl` reads the step's mean."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher = teacher.eval()
        self.temperature = temperature
        self.alpha = alpha
        self._kl: list[torch.Tensor] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss, kl, _ = distillation_loss(logits, teacher_logits, y, self.temperature, self.alpha)
        self._kl.append(kl.detach())
        return loss

    def step_kl(self) -> float:
        """Mean KL over the micro-batches since the last call (one optimizer step's)."""
        mean = float(torch.stack(self._kl).mean())
        self._kl.clear()
        return mean
