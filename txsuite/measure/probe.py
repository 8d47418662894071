"""Machine-state probe: how fast is this machine *right now*, compared with its best?

A shared machine moves between states: for minutes at a time another process holds the cores
and every step of a repetition runs several times slower, the fastest included. A repetition
measured in such a state says nothing about the code. So every repetition times the same
fixed workload (`probe_workload`: small fp32 matmuls, many short element-wise passes and a few
long ones, on the cell's own torch threads, about ten milliseconds on an idle CPU) just before
and just after its measured steps, and compares the slower of the two with the best time this
host has ever given the workload (cached beside the matmul peaks). The ratio,
`machine_slowdown`, is the factor by which the machine was slower than its best while the cell
was measured; the guard leaves out repetitions measured in a slow state (docs/guard.md).

The short passes are there because a shared virtual machine also moves between states that a
single thread does not feel: what two threads pay to meet at each parallel region changes, and
a step of many short parallel ops with it (docs/verdicts.md, "The host's states").

The machine also moves *during* the steps, within a second: on a CPU the workload runs again
between measured steps, once PROBE_INTERVAL_S of steps ran since the last probe, outside every
step's clock. `probe_mean_s` is the geometric mean of every probe of the repetition, and
`probe_steps_s` the probe the steps' median ran at, each step in the state of the two probes
around it (`MachineState.at_steps_s`): the state can switch inside a repetition (docs/verdicts.md
has what each removes on real runs).

On this project's 2-core machine, idle, two probes a moment apart stay below twice the host's
best; with another process busy on the cores they go well above it (docs/measurements.md,
"Regression guard"). The guard's default line for a slow state is 2x.

The workload is deterministic and allocates nothing while it is timed; only its duration varies,
and only with the machine.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from txsuite.measure.host_cache import locked_update

PROBE_TRIALS = 3  # each probe is the fastest of three runs of the workload: one hiccup is not a state
# Seconds of measured steps between two probes during the steps: the machine's state moves within
# a second on a shared host (docs/verdicts.md: a quarter of a second tracks it better than half).
PROBE_INTERVAL_S = 0.25


def probe_workload(torch) -> float:
    """Seconds for one run of the fixed calibration workload on the current device (CPU).

    Nothing is allocated while the clock runs: every pass writes into a buffer made before it.
    A pass that allocated its result would take its memory from malloc, which maps blocks above
    its mmap threshold afresh (a page fault per 4 KiB) or reuses freed ones, depending on what
    the process freed before; two processes doing the same work then timed the workload apart by
    an offset of their own that had nothing to do with the machine (docs/verdicts.md, "A probe
    that allocates nothing")."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen)
    b = torch.randn(256, 256, generator=gen)
    product = torch.zeros(256, 256)
    small = torch.randn(1 << 16, generator=gen)  # [65536]: 256 KiB, split over the threads
    small_out = torch.zeros(1 << 16)
    v = torch.randn(1 << 18, generator=gen)
    v_out = torch.zeros(1 << 18)
    buffers = (a, b, product, small, small_out, v, v_out)
    _workload_passes(torch, *buffers, matmuls=1, short=2, long=2)  # untimed: pages and caches warm
    start = time.perf_counter()
    a, small, v = _workload_passes(torch, *buffers, matmuls=20, short=200, long=8)
    float(a.sum() + small.sum() + v.sum())  # use the results
    return time.perf_counter() - start


def _workload_passes(torch, a, b, product, small, small_out, v, v_out, matmuls: int, short: int, long: int):
    """The workload's passes, each into its own buffer (two alternate per element-wise pass);
    returns (a, the last short result, the last long result)."""
    for _ in range(matmuls):
        torch.mm(a, b, out=product)
        torch.tanh(product.mul_(0.05), out=a)  # compute-bound, through the cell's OpenMP threads
    for _ in range(short):
        torch.mul(small, 0.999, out=small_out).add_(0.001)  # regions too short to hide the threads' meeting cost
        small, small_out = small_out, small
    for _ in range(long):
        torch.mul(v, 0.999, out=v_out).add_(0.001)  # memory-bound
        v, v_out = v_out, v
    return a, small, v


def probe(torch) -> float:
    """The fastest of PROBE_TRIALS runs of the workload, in seconds."""
    return min(probe_workload(torch) for _ in range(PROBE_TRIALS))


@dataclass
class MachineState:
    before_s: float | None = None
    after_s: float | None = None
    during_s: list[float] = field(default_factory=list)  # between measured steps, in order
    during_at: list[int] = field(default_factory=list)  # measured steps run before each of them
    best_s: float | None = None  # the host's best time for the workload, this one included
    wall_s: float = 0.0  # what probing cost the cell, every probe and the cache update
    faults_at_start: int | None = None  # minor page faults when the measured steps began
    page_faults: int | None = None  # minor page faults during the measured steps (probes excluded)
    steps_since_probe_s: float = 0.0  # measured step seconds since the last probe
    steps_seen: int = 0  # measured steps counted by `due`

    def due(self, step_s: float) -> bool:
        """Count a measured step's seconds; True once PROBE_INTERVAL_S of them ran since the
        last probe (the caller then probes and hands the time to `add_during`)."""
        self.steps_since_probe_s += step_s
        self.steps_seen += 1
        return self.steps_since_probe_s >= PROBE_INTERVAL_S

    def add_during(self, seconds: float) -> None:
        self.during_s.append(seconds)
        self.during_at.append(self.steps_seen)
        self.steps_since_probe_s = 0.0

    def probes(self) -> list[float]:
        return [t for t in (self.before_s, *self.during_s, self.after_s) if t is not None]

    @property
    def mean_s(self) -> float | None:
        """The geometric mean of every probe of the repetition: the state its steps ran in."""
        times = self.probes()
        return statistics.geometric_mean(times) if times else None

    def at_steps_s(self, step_times_s: list[float]) -> float | None:
        """The probe time the steps' median rate ran at, each step in the state of its stretch:
        a step between two probes ran in their geometric mean. The state can switch inside a
        repetition; the median step then belongs to one side of the switch while the mean of
        the probes sits between the two. So every step's rate is taken in probe units (its rate
        times its stretch's probe), and the result is median(rate x probe) / median(rate): the
        repetition's median rate brought to the best state by it is the median of its steps
        each brought there by its own stretch's probes. None without the probes on both sides
        of every step, or positions that do not fit the steps."""
        stretches = self.step_probes_s(len(step_times_s))
        if stretches is None or any(t <= 0 for t in step_times_s):
            return None
        rates = [1.0 / t for t in step_times_s]
        scaled = [stretch / t for stretch, t in zip(stretches, step_times_s)]
        return statistics.median(scaled) / statistics.median(rates)

    def step_probes_s(self, steps: int) -> list[float] | None:
        """The probe time each of `steps` measured steps ran at: the geometric mean of the two
        probes around its stretch. None without the probes on both sides of every step, or
        positions that do not fit the steps."""
        if self.before_s is None or self.after_s is None or not steps:
            return None
        bounds = [0, *self.during_at, steps]
        if any(b > c for b, c in zip(bounds, bounds[1:])):
            return None
        probes = [self.before_s, *self.during_s, self.after_s]
        return [(probes[i] * probes[i + 1]) ** 0.5
                for i, (first, end) in enumerate(zip(bounds, bounds[1:])) for _ in range(first, end)]

    @property
    def slowdown(self) -> float | None:
        """The slower probe of the repetition / the host's best (1.0: the machine's best state)."""
        times = [t for t in (self.before_s, self.after_s) if t is not None]
        if not times or not self.best_s:
            return None
        return max(times) / self.best_s

    def metrics(self, step_times_s: list[float] | None = None) -> dict:
        return {"probe_before_s": self.before_s, "probe_after_s": self.after_s, "probe_best_s": self.best_s,
                "probe_mean_s": self.mean_s, "probe_steps_s": self.at_steps_s(step_times_s or []),
                # each probe between the steps and how many measured steps ran before it: with
                # step_times_s, the state every step ran in can be read again from the record
                "probe_during_s": list(self.during_s), "probe_during_at": list(self.during_at),
                "probes": len(self.probes()),
                "machine_slowdown": self.slowdown, "host_page_faults": self.page_faults}


def host_key(torch) -> str:
    from txsuite.measure.env import cpu_model
    return f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|probe v4"


def record_best(torch, seconds: list[float]) -> float:
    """Fold this repetition's probe times into the host's best (kept in the txsuite cache, one
    writer at a time) and return the best."""
    key = host_key(torch)

    def fold(cache: dict) -> float:
        cache[key] = min([s for s in seconds if s is not None] + ([cache[key]] if key in cache else []))
        return cache[key]
    best = locked_update("probe.json", fold)
    return best
