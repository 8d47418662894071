"""The gradient noise scale B_simple (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model
of Large-Batch Training", appendix A), measured from two batch sizes the step already has.

With G the true gradient and Sigma the per-example covariance, the squared norm of a gradient
estimated from B examples has expectation |G|^2 + tr(Sigma) / B. A step of grad_accum = k
micro-batches of b sequences offers two estimates: the first micro-batch's gradient (B_small = b)
and the accumulated step's (B_big = k b). Averaging each squared norm over the measured steps
and solving the two equations:

    |G|^2     = (B_big E|G_big|^2 - B_small E|G_small|^2) / (B_big - B_small)
    tr(Sigma) = (E|G_small|^2 - E|G_big|^2) / (1 / B_small - 1 / B_big)
    B_simple  = tr(Sigma) / |G|^2          (in sequences; x seq_len for tokens)

B_simple is the batch size beyond which doubling the batch stops halving the steps to a given
loss (the critical batch size, to first order). Cost: two gradient norms per measured step,
kept on the device (no host sync), inside the timed step.
"""
from __future__ import annotations

import torch


class NoiseScale:
    def __init__(self, micro_batch: int, grad_accum: int):
        self.b_small = micro_batch
        self.b_big = micro_batch * grad_accum
        self.k = grad_accum
        self.active = False  # set by the training loop for the measured steps
        self._small = None  # sums of squared norms over measured steps, on the device
        self._big = None
        self.steps = 0

    @staticmethod
    def _squared_norm(params: list[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        norms = torch._foreach_norm(grads)
        return torch.stack([n.float() for n in norms]).square().sum()

    def after_first(self, params: list[torch.Tensor]) -> None:
        """After the first micro-batch's backward: its gradient, undone of the 1/k the loss carried."""
        if self.active:
            value = self._squared_norm(params) * (self.k * self.k)
            self._small = value if self._small is None else self._small + value

    def after_all(self, params: list[torch.Tensor]) -> None:
        """After the last micro-batch's backward: the accumulated step's gradient (before clipping)."""
        if self.active:
            value = self._squared_norm(params)
            self._big = value if self._big is None else self._big + value
            self.steps += 1

    def metrics(self, seq_len: int) -> dict:
        out = {"grad_noise_scale": None, "grad_noise_scale_tokens": None, "grad_noise_scale_steps": self.steps,
               "grad_noise_scale_batches": [self.b_small, self.b_big], "grad_noise_scale_note": None}
        if not self.steps or self._small is None or self._big is None:
            out["grad_noise_scale_note"] = "no measured step"
            return out
        small, big = float(self._small) / self.steps, float(self._big) / self.steps
        g2 = (self.b_big * big - self.b_small * small) / (self.b_big - self.b_small)
        trace = (small - big) / (1.0 / self.b_small - 1.0 / self.b_big)
        out.update({"grad_sq_norm_small": small, "grad_sq_norm_big": big, "grad_sq_norm_true": g2,
                    "grad_noise_trace": trace})
        if g2 <= 0 or trace <= 0:
            out["grad_noise_scale_note"] = ("the two-batch estimate of |G|^2 or tr(Sigma) is not positive: the "
                                            "gradient is all noise at these batch sizes, or too few steps were averaged")
            return out
        out["grad_noise_scale"] = trace / g2
        out["grad_noise_scale_tokens"] = trace / g2 * seq_len
        return out
