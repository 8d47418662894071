"""The state techniques transform: the model plus how a step must run it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from txsuite.config.record import Unsupported  # noqa: F401 - re-exported: techniques raise it from here


def _no_accumulation_context(last: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _clip_local(params: list[torch.Tensor], max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


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
    # --- parallelism (defaults: one process, the whole model) ------------------------------
    # The ("pp", "dp", "tp") DeviceMesh of a distributed cell, None in a single process.
    mesh: Any = None
    # The GPT-shaped modules on this rank that per-block techniques (TP, checkpointing, FSDP)
    # walk: [model] normally, this rank's stage modules under pipeline parallelism.
    parts: list[nn.Module] = field(default_factory=list)
    # Context for one micro-batch's forward+backward given whether it is the step's last:
    # data-parallel engines skip the gradient reduction until the last one.
    accumulation: Callable[[bool], contextlib.AbstractContextManager] = _no_accumulation_context
    # Called once per step after all backward passes, before clipping (e.g. summing the tied
    # embedding's gradient across the first and last pipeline stages).
    grad_hooks: list[Callable[[], None]] = field(default_factory=list)
    # Clip the gradients of these parameters to a global norm: the plain torch function in one
    # process; sharded/tensor-parallel/pipelined parameters need the norm over every rank.
    clip_grad_norm: Callable[[list[torch.Tensor], float], None] = _clip_local
    # Pipeline parallelism: the schedule and stage bookkeeping (txsuite.techniques.pipeline).
    pipeline: Any = None
    # An engine that takes over model, optimizer and schedule once the optimizer exists
    # (DeepSpeed): (setup, optimizer, schedule) -> the engine. None: torch's own step.
    engine: Callable[..., Any] | None = None
    # Work that must follow training and its final evaluation, each called with a
    # txsuite.techniques.compression.AfterTraining context and returning metrics for the record
    # (post-training compression).
    after_training: list[Callable[[Any], dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [self.model]
