"""`measure`: how a cell is measured, not what it trains (txsuite/run/runner.py and the worker).

`threads`: torch's intra-op (OpenMP) threads per process; 0 keeps torch's default, every core
it sees. On a shared machine a cell with one thread is far steadier from process to process
(a repetition's tokens/s spreads several times less than with two: docs/measurements.md,
"OpenMP on a shared host"), because other work on the cores stalls a multi-threaded
operator at every barrier. matrices/smoke.yaml, the CI matrix, uses 1.

`host_allocator`: `system` (default) leaves glibc's malloc as it is; `cache` keeps every block a
step frees inside the process, so the next step takes it back without page faults: much
faster steps with a large vocabulary, but peak RSS then includes what the allocator holds, which
hid most of the memory saving measured for full activation checkpointing (why:
txsuite/measure/host_allocator.py; the figures: docs/measurements.md, "Host memory allocator").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig


@dataclass(frozen=True)
class MeasureSpec:
    threads: int = 0  # intra-op threads per process; 0: torch's default (all cores)
    # the gradient noise scale B_simple (McCandlish et al. 2018) from the gradient norms of the
    # first micro-batch and of the whole accumulated step (needs grad_accum >= 2, one process);
    # two gradient norms per measured step, inside the timed step
    noise_scale: bool = False
    # time prefill and decode of the trained dense model (compressed cells always do): the
    # dense controls of a compression matrix need it; elsewhere it would cost seconds per cell
    inference: bool = False
    # how the cell's process takes host memory from malloc (txsuite/measure/host_allocator.py)
    host_allocator: str = "system"
    # run the last warm-up step but one (of two or more) under torch's profiler, naming every byte live
    # at its peak by role (txsuite/measure/memory_roles.py): what the report's "Memory by role"
    # and the memory predictions' per-part errors read; off, the cell runs no profiled step
    memory_roles: bool = True

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        if self.noise_scale and cell.train.grad_accum < 2:
            yield Problem("measure.noise_scale", "the noise scale compares the gradient of one micro-batch with "
                                                 "that of the accumulated step, so the step needs two or more.",
                          "train.grad_accum: 2 or more")
        if self.noise_scale and cell.parallel.distributed:
            yield Problem("measure.noise_scale", "the noise scale is measured in single-process cells.",
                          "parallel.engine: none, dp = tp = pp = 1")
        if self.noise_scale and cell.precision == "fp16":
            yield Problem("measure.noise_scale", "fp16 gradients are loss-scaled; the noise scale is measured in "
                                                 "the other precisions.", "fp32, bf16, bf16-pure")


HOST_ALLOCATORS = ("system", "cache")
CHOICES: dict[str, tuple] = {"noise_scale": (False, True), "inference": (False, True),
                             "memory_roles": (True, False),
                             "host_allocator": HOST_ALLOCATORS}
POSITIVE: set[str] = set()
FRACTIONS: set[str] = set()
MAXIMA = {"threads": 2**16}


def cache_allocator_note(cells) -> str | None:
    """A note for the plan when cells keep freed host memory (`host_allocator: cache`): their
    peak RSS includes what malloc holds, so it should be compared only with cells of the same
    policy. None when no planned cell does. cells: PlannedCell-like (`.config`, `.skip_reason`)."""
    cached = [c for c in cells if c.skip_reason is None and c.config.measure.host_allocator == "cache"]
    if not cached:
        return None
    return (f"note: {len(cached)} cell(s) run with measure.host_allocator: cache, so their peak memory includes "
            f"the freed blocks malloc keeps for reuse (measured: it hid most of full activation checkpointing's "
            f"saving; docs/measurements.md); compare their peak memory only with cells of the same policy.")

