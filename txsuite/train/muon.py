"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers"): SGD momentum whose update
is orthogonalised by a quintic Newton-Schulz iteration, for 2-D hidden weights.

The same algorithm and constants as torch.optim.Muon (momentum as a lerp, Nesterov, five
iterations with coefficients (3.4445, -4.775, 2.0315), decoupled weight decay, the update
scaled by `adjust_lr_fn`), with one difference: the dtype the iteration runs in. torch's runs
it in bf16 always. Where bf16 matmuls are native (GPUs, CPUs with AVX512-BF16 or AMX) that is
the fast choice; on a CPU without them bf16 is emulated and the iteration costs ~16 GFLOP per
step of the `small` model, which makes a step many times slower than AdamW's there
(docs/measurements.md, "Training strategies"). fp32 is both faster there and at least as
accurate, so `ns_dtype` follows the hardware
(`newton_schulz_dtype`), and the record states which ran.
"""
from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
NS_STEPS = 5
EPS = 1e-7


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matmuls run natively, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16
    from txsuite.measure.env import cpu_flags
    native = {"avx512_bf16", "amx_bf16"} & set(cpu_flags())
    return torch.bfloat16 if native else torch.float32


def orthogonalise(update: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS) -> torch.Tensor:
    """The quintic Newton-Schulz iteration toward U V^T of update = U S V^T (its singular values
    land near 1, not exactly on it, by design of the coefficients). update: [A, B] -> [A, B]."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=EPS)  # spectral norm <= Frobenius norm = 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """torch.optim.Muon's scaling: "match_rms_adamw" gives the update AdamW's RMS (0.2 sqrt(max
    dim)), None or "original" sqrt(max(1, A / B))."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, adjust_lr_fn: str | None = None, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      adjust_lr_fn=adjust_lr_fn))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))
        return loss
