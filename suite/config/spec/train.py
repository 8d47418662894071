"""`train`: steps, batch, optimizer and schedule of a cell (suite/train runs it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from suite.config.problems import Problem

if TYPE_CHECKING:
    from suite.config.spec.cell import CellConfig

SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class OptimizerInfo:
    """What the plan knows of an optimizer without torch. suite/train/optimizers.py holds the
    function that builds it (one per name, checked by a test); the plan's memory estimate
    reads `state_bytes` from here, so a new optimizer needs no separate edit there."""
    summary: str
    uses: tuple[str, ...]  # the TrainSpec hyperparameters it reads, besides lr
    states: float  # optimizer state per parameter, in tensors of the parameter's shape
    state_dtype_bytes: int | None = None  # bytes per state value; None: the parameter's dtype

    def state_bytes(self, param_bytes: int) -> float:
        """Optimizer state bytes per parameter whose value takes `param_bytes` bytes."""
        return self.states * (self.state_dtype_bytes or param_bytes)


OPTIMIZERS: dict[str, OptimizerInfo] = {
    "adamw": OptimizerInfo("AdamW, weight decay on matrices only (fused kernel on CPU and CUDA)",
                           ("beta1", "beta2", "weight_decay"), states=2),
    "sgd": OptimizerInfo("SGD with momentum beta1, weight decay on matrices only",
                         ("beta1", "weight_decay"), states=1),
}


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 60  # measured optimizer steps
    warmup_steps: int = 10  # untimed optimizer steps before measuring (compile, caches)
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 3.0e-4
    schedule: str = "cosine"
    lr_warmup_steps: int = 0  # learning-rate warm-up, independent of the timing warm-up
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    target_loss: float | None = None

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: the untimed warm-up, then the measured ones."""
        return self.warmup_steps + self.steps

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        if self.lr_warmup_steps > self.total_steps:
            yield Problem("train.lr_warmup_steps", "the learning-rate warm-up is longer than the whole run.")


# a live view: an entry added to OPTIMIZERS is an allowed value at once
CHOICES = {"schedule": SCHEDULES, "optimizer": OPTIMIZERS.keys()}
POSITIVE = {"steps", "micro_batch", "grad_accum", "eval_batches"}
FRACTIONS: set[str] = set()
