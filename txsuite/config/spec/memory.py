"""`memory`: activation checkpointing (txsuite/techniques/checkpointing.py). Compilation has
its own family (`compile`); `memory.compile` is still accepted and means `compile.mode`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig

CHECKPOINTING = ("none", "full", "every_k")


@dataclass(frozen=True)
class MemorySpec:
    activation_checkpointing: str = "none"
    checkpoint_every: int = 2  # k for every_k: checkpoint blocks 0, k, 2k, ...

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        n_layer = cell.model.dims[0]
        if self.activation_checkpointing == "every_k" and self.checkpoint_every > n_layer:
            yield Problem("memory.checkpoint_every", f"checkpoint_every={self.checkpoint_every} exceeds the "
                                                     f"model's {n_layer} layers.")


CHOICES = {"activation_checkpointing": CHECKPOINTING}
POSITIVE = {"checkpoint_every"}
FRACTIONS: set[str] = set()
MAXIMA = {"checkpoint_every": 10_000}  # model.n_layer's bound
