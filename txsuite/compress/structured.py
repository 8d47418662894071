"""Structured pruning: whole MLP neurons or attention heads physically removed, so the layers
(and the model's bytes and FLOPs) get smaller.

    neurons-<r>     each block's MLP loses round(r * d_ff) hidden neurons: rows of mlp.fc (and
                    its bias), the matching columns of mlp.proj
    heads-<r>       each block loses round(r * n_head) attention heads: that head's q, k and v
                    rows of attn.qkv (and bias), the matching columns of attn.proj
    structured-<r>  both, with the same ratio
Counts are rounded to the nearest integer (halves up) and must leave at least one of each
(the plan checks it). Importance is magnitude: a neuron's score is ||fc row|| * ||proj column||,
a head's the norm of all its weights in qkv and proj; the lowest-scoring units go.

The model needs no change: attention infers its head count from the qkv projection's width
(txsuite/model/gpt.py), so narrower linears are all it takes. The new nn.Linear modules are new
Parameters: build the fine-tune optimizer after pruning.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def removed_count(ratio: float, n: int) -> int:
    return int(ratio * n + 0.5)


def _narrow(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output rows `rows` and input columns `cols` of `linear`."""
    w = linear.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if rows is None else linear.bias.detach()[rows])
    return new


@torch.no_grad()
def prune_neurons(model: nn.Module, ratio: float) -> dict[str, Any]:
    removed = 0
    for block in model.blocks:
        mlp = block.mlp
        d_ff = mlp.fc.out_features
        k = removed_count(ratio, d_ff)
        score = mlp.fc.weight.norm(dim=1) * mlp.proj.weight.norm(dim=0)  # [d_ff]
        keep = score.topk(d_ff - k).indices.sort().values
        mlp.fc = _narrow(mlp.fc, rows=keep)
        mlp.proj = _narrow(mlp.proj, cols=keep)
        removed = k
    return {"neurons_removed_per_layer": removed}


@torch.no_grad()
def prune_heads(model: nn.Module, ratio: float) -> dict[str, Any]:
    removed = 0
    for block in model.blocks:
        attn = block.attn
        head_dim = attn.head_dim
        width = attn.qkv.out_features // 3  # H * head_dim
        n_head = width // head_dim
        k = removed_count(ratio, n_head)
        qkv = attn.qkv.weight.view(3, n_head, head_dim, -1)  # [3, H, D, C]
        proj = attn.proj.weight.view(attn.proj.out_features, n_head, head_dim)  # [C, H, D]
        score = (qkv.pow(2).sum(dim=(0, 2, 3)) + proj.pow(2).sum(dim=(0, 2))).sqrt()  # [H]
        keep = score.topk(n_head - k).indices.sort().values
        dims = (keep[:, None] * head_dim + torch.arange(head_dim, device=keep.device)).flatten()  # [H' * D]
        rows = torch.cat([part * width + dims for part in range(3)])  # q, k, v blocks of qkv
        attn.qkv = _narrow(attn.qkv, rows=rows)
        attn.proj = _narrow(attn.proj, cols=dims)
        attn.n_head = n_head - k
        removed = k
    return {"heads_removed_per_layer": removed}


def prune_structured(model: nn.Module, kind: str, ratio: float) -> dict[str, Any]:
    """kind: 'neurons', 'heads' or 'structured' (both)."""
    if kind in ("heads", "structured") and not all(hasattr(b.attn, "head_dim") for b in model.blocks):
        raise RuntimeError("head pruning needs an attention module that infers its head count "
                           "(txsuite/model/gpt.py with `head_dim`)")
    facts: dict[str, Any] = {"pruning_method": f"structured ({kind}, magnitude importance)"}
    if kind in ("neurons", "structured"):
        facts.update(prune_neurons(model, ratio))
    if kind in ("heads", "structured"):
        facts.update(prune_heads(model, ratio))
    facts["params_after_pruning"] = sum(p.numel() for p in model.parameters())
    return facts
