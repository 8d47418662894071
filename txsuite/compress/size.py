"""Model size in bytes, as stored: every parameter and buffer once, quantized tensors included.

A quantized weight is a tensor subclass (torchao's Int8Tensor, IntxUnpackedToInt8Tensor, a 2:4
SparseSemiStructuredTensor...) whose own numel/element_size describe the logical float tensor,
not what is stored. Such a tensor says what it holds through `__tensor_flatten__` (the names of
its inner tensors: int8 data, scales, zero points, sparsity metadata); their bytes are summed,
recursively. A tensor shared by two modules (the tied tok_emb / lm_head weight) counts once.

torchao.utils.get_model_size_in_bytes walks children and counts a tied weight twice; this
function does not.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: the sum of its inner tensors for a wrapper subclass, else
    numel * element size."""
    if hasattr(t, "__tensor_flatten__"):  # plain tensors and Parameters have no such method
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers of `model`, each distinct tensor once."""
    seen: set[int] = set()
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total
