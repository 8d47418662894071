"""`measure`: how a cell is measured, not what it trains (suite/run/runner.py and the worker).

`threads`: torch's intra-op (OpenMP) threads per process; 0 keeps torch's default, every core
it sees. On a shared machine a cell with one thread is far steadier from process to process:
measured here (tiny model, 6 repetitions), the spread of a repetition's tokens/s was 5 % with
one thread against 10-18 % with two, because other work on the cores stalls a multi-threaded
operator at every barrier. matrices/smoke.yaml, the CI matrix, uses 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from suite.config.problems import Problem

if TYPE_CHECKING:
    from suite.config.spec.cell import CellConfig


@dataclass(frozen=True)
class MeasureSpec:
    threads: int = 0  # intra-op threads per process; 0: torch's default (all cores)

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        return iter(())


CHOICES: dict[str, tuple] = {}
POSITIVE: set[str] = set()
FRACTIONS: set[str] = set()
