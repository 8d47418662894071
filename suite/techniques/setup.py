"""The state techniques transform: the model plus how a step must run it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TrainSetup:
    model: nn.Module
    device: torch.device
    # Context entered around each forward pass (autocast, or nothing).
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # Loss scaler for fp16 (None: gradients used as they are).
    scaler: Any = None
    # Facts about what was applied, copied into the record's metrics (e.g. recompute_layers).
    facts: dict[str, Any] = field(default_factory=dict)
