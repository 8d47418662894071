"""Unstructured pruning: magnitude (L1) masks through torch.nn.utils.prune, at once after
training or gradually while training, and 2:4 semi-structured masks for sparse tensor cores.

What is pruned: the weight matrices of the four linears of every block (attn.qkv, attn.proj,
mlp.fc, mlp.proj); biases, norms and the tied embedding / lm_head are not. Each matrix loses
exactly round(sparsity * its size) entries, the smallest in magnitude (torch's L1Unstructured).

While a mask is attached, torch.nn.utils.prune keeps the dense values as `weight_orig` and
recomputes `weight = weight_orig * weight_mask` before every forward, so a fine-tune cannot
revive pruned entries. `remove_masks` makes the zeros permanent (and drops the extra copy).
Zeros in a dense tensor take as many bytes as any other value: unstructured sparsity does not
shrink `model_size_bytes`; it is reported as `sparsity_achieved`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from txsuite.compress.targets import target_linears
from txsuite.config.record import Unsupported



def prune_magnitude(model: nn.Module, sparsity: float) -> dict[str, Any]:
    """Attach L1 masks zeroing `sparsity` of every target weight (masks stay until remove_masks)."""
    for module in target_linears(model):
        prune.l1_unstructured(module, "weight", amount=sparsity)
    return {"pruning_method": "magnitude (torch.nn.utils.prune.l1_unstructured, per layer)"}


def set_sparsity(modules: list[nn.Module], sparsity: float) -> None:
    """Grow each module's mask to `sparsity`: the smallest-magnitude entries of the current
    (already masked) weight, so entries pruned earlier stay pruned."""
    for module in modules:
        effective = module.weight_orig.detach() * module.weight_mask
        mask = prune.L1Unstructured(amount=sparsity).compute_mask(effective, torch.ones_like(module.weight_mask))
        module.weight_mask.copy_(mask)


class GradualMagnitude:
    """Prune-while-training: a step hook raising the sparsity of the target weights along the
    cubic schedule of Zhu & Gupta (2017), s(t) = s_final * (1 - (1 - p)^3) with p the progress
    from step `start` to step `end`, updating the masks every `every` steps and at `end`.

    Masks (all ones) are attached at construction, before the optimizer is built, so the
    optimizer trains `weight_orig`; masked entries get zero gradient."""

    def __init__(self, model: nn.Module, sparsity: float, start_step: int, end_step: int, every: int):
        self.modules = target_linears(model)
        for module in self.modules:
            prune.identity(module, "weight")
        self.sparsity, self.start, self.end, self.every = sparsity, start_step, max(end_step, start_step), every
        self.current = 0.0
        self.updates = 0

    def target(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.sparsity
        progress = (step - self.start) / (self.end - self.start)
        return self.sparsity * (1.0 - (1.0 - progress) ** 3)

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        if self.current >= self.sparsity or step < self.start:
            return
        if (step - self.start) % self.every and step < self.end:
            return
        target = self.target(step)
        if target > self.current:
            set_sparsity(self.modules, target)
            self.current = target
            self.updates += 1

    @torch.no_grad()
    def finish(self) -> bool:
        """Reach the final sparsity if the run ended early; True when the schedule had done so."""
        done = self.current >= self.sparsity
        if not done:
            set_sparsity(self.modules, self.sparsity)
            self.current = self.sparsity
        return done

    def describe(self) -> str:
        return (f"cubic 0 -> {self.sparsity:g} from step {self.start} to {self.end}, masks updated "
                f"every {self.every} steps")


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask of a [N, K] weight: in every group of 4 consecutive inputs of a row, keep
    the 2 largest in magnitude."""
    n, k = weight.shape
    if k % 4:
        raise ValueError(f"2:4 sparsity needs the input width divisible by 4, got {k}")
    groups = weight.detach().abs().reshape(n, k // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
    return mask.reshape(n, k)


def prune_two_four(model: nn.Module) -> dict[str, Any]:
    """Attach 2:4 masks (kept through a fine-tune, like the magnitude masks)."""
    for module in target_linears(model):
        prune.custom_from_mask(module, "weight", two_four_mask(module.weight))
    return {"pruning_method": "2:4 semi-structured (2 largest of every 4 inputs)"}


def to_semi_structured(model: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """Store the (already 2:4-masked) target weights as SparseSemiStructuredTensor in `dtype`
    (bf16 or fp16: the sparse kernels take no fp32), which CUDA sparse tensor cores multiply at
    up to twice the dense rate (compute capability >= 8.0). The model then runs under the
    cell's autocast, which leaves weights already in its dtype alone (casting a sparse weight
    would fail)."""
    from torch.sparse import to_sparse_semi_structured
    for module in target_linears(model):
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().to(dtype)), requires_grad=False)
    return {"semi_structured_layers": len(target_linears(model)), "semi_structured_dtype": str(dtype).replace("torch.", "")}


def probe_semi_structured(device: torch.device, dtype: torch.dtype) -> None:
    """Convert and multiply one small 2:4 layer, so a host whose torch lacks the sparse kernels
    (no cuSPARSELt/CUTLASS build, an unsupported GPU) skips the cell before training, not after."""
    from torch.sparse import to_sparse_semi_structured
    weight = torch.randn(128, 128, device=device, generator=torch.Generator(device).manual_seed(0))  # not the global RNG
    weight = (weight * two_four_mask(weight)).to(dtype)
    try:
        sparse = to_sparse_semi_structured(weight)
        with torch.no_grad():
            torch.nn.functional.linear(torch.zeros(32, 128, device=device, dtype=dtype), sparse)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        raise Unsupported(f"2:4 semi-structured sparsity cannot run on this {device.type} host in "
                          f"{str(dtype).replace('torch.', '')} ({type(exc).__name__}: {exc})") from None


def remove_masks(model: nn.Module) -> int:
    """Make every attached mask permanent (weight = weight_orig * mask as a plain Parameter).
    Returns how many modules had one."""
    n = 0
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
            n += 1
    return n


def sparsity_of(model: nn.Module) -> dict[str, Any]:
    """Zeros among the target weights (the masked weight while a mask is attached)."""
    zeros = total = 0
    for module in target_linears(model):
        w = module.weight
        if hasattr(w, "__tensor_flatten__"):  # quantized or sparse storage: read it back as float
            w = w.dequantize() if hasattr(w, "dequantize") else w.to_dense()
        zeros += int((w == 0).sum())
        total += w.numel()
    return {"sparsity_achieved": zeros / total if total else 0.0, "pruned_weights": zeros}
