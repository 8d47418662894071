"""The state techniques transform: the model plus how a step must run it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class Unsupported(Exception):
    """A technique cannot run on this host (e.g. a GPU-only kernel on a CPU): the worker records
    the cell as `skipped` with this message as the reason, never runs something else instead."""


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
    # Called with the 1-based step number after every optimizer step, inside the timed region
    # (their cost is part of the technique's cost), e.g. a gradual pruning schedule.
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
