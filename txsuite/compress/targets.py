"""The layers compression acts on: every nn.Linear inside a transformer block. The lm_head is
left alone: it is tied to the token embedding, and quantizing or pruning it would change the
embedding too."""
from __future__ import annotations

from torch import nn


def is_target(module: nn.Module, fqn: str) -> bool:
    """torchao's filter_fn signature: (module, its fully qualified name)."""
    return isinstance(module, nn.Linear) and fqn.startswith("blocks.")


def target_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for name, m in model.named_modules() if is_target(m, name)]
