"""`train.adversarial: fgm-<eps>`: adversarial training with the fast gradient method on the
input embeddings (Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods for
Semi-Supervised Text Classification"), applied from outside the model through forward hooks on
its token embedding.

Per micro-batch:
    1. clean forward, backward (gradients accumulate as usual); the gradient g of the loss with
       respect to the embedding output e [B, T, d] is kept;
    2. r = eps * g / ||g||, the norm taken over each sequence's [T, d] block, so every sequence's
       perturbation has L2 norm eps;
    3. forward with e + r, backward: the adversarial loss's gradients add to the clean ones.
One extra forward and backward per micro-batch. The reported training loss is the clean one;
the adversarial loss is kept for the record (`adversarial_loss`: its mean over measured steps).
"""
from __future__ import annotations

from typing import Callable

import torch

from txsuite.model import language_modelling


def token_embedding(model: torch.nn.Module) -> torch.nn.Embedding:
    """The model's token embedding, found inside whatever wraps the reference model."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "tok_emb" and isinstance(module, torch.nn.Embedding):
            return module
    raise ValueError("no token embedding (tok_emb) found in the model to perturb")


class FastGradient:
    """An objective with its own passes (see Trainer.step)."""

    def __init__(self, eps: float, embedding: torch.nn.Embedding):
        self.eps = eps
        self.embedding = embedding
        self.active = False  # set by the training loop for the measured steps
        self._adv_sum: torch.Tensor | None = None  # on the device: no host sync per step
        self._count = 0

    def _loss(self, model, x, y, scale: float, autocast: Callable, hook: Callable) -> torch.Tensor:
        """The scaled language-modelling loss with `hook` on the token embedding for this one pass."""
        handle = self.embedding.register_forward_hook(hook)
        try:
            with autocast():
                return language_modelling(model, x, y) * scale
        finally:
            handle.remove()

    def backward(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float,
                 autocast: Callable) -> torch.Tensor:
        kept: list[torch.Tensor] = []

        def keep(module, inputs, output):
            output.retain_grad()
            kept.append(output)

        clean = self._loss(model, x, y, scale, autocast, keep)
        clean.backward()
        grad = kept[0].grad.float()  # [B, T, d]
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        delta = (self.eps * grad / norm).to(kept[0].dtype).detach()
        adversarial = self._loss(model, x, y, scale, autocast, lambda module, inputs, output: output + delta)
        adversarial.backward()
        if self.active:
            value = adversarial.detach() / scale
            self._adv_sum = value if self._adv_sum is None else self._adv_sum + value
            self._count += 1
        return clean.detach()

    def metrics(self) -> dict:
        return {"adversarial_eps": self.eps,
                "adversarial_loss": float(self._adv_sum) / self._count if self._count else None}
