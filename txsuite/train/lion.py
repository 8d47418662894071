"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", algorithm 2), written
here rather than taken from a package: the algorithm is five lines, the maintained package
(lion-pytorch) adds a Triton kernel that CPU cells cannot use and a dependency for nothing else,
and torch has no Lion of its own. One momentum state per parameter (half of AdamW's).

For each parameter, with gradient g, momentum m, learning rate lr and decoupled weight decay wd:

    update = sign(beta1 * m + (1 - beta1) * g)
    p      = p - lr * (update + wd * p)
    m      = beta2 * m + (1 - beta2) * g

The update has unit magnitude per coordinate, so Lion wants a learning rate 3-10x below
AdamW's (and a weight decay as much higher) for the same step size.
"""
from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            moments = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            update = torch._foreach_lerp(moments, grads, 1.0 - beta1)  # beta1 * m + (1 - beta1) * g
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-group["lr"])
            torch._foreach_lerp_(moments, grads, 1.0 - beta2)  # m = beta2 * m + (1 - beta2) * g
        return loss
