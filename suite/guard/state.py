"""The machine's state while a repetition was measured, from its probe (suite.measure.probe).

Every repetition timed a fixed calibration workload just before and just after its measured
steps. Its slowdown is the slower of the two probes divided by the best time the same machine
ever gave the workload (the best recorded by any repetition being compared, from either side
when both ran on the same hardware). A repetition whose slowdown exceeds the slow-state line
(2x by default: idle, this project's machine stays within 1.2-1.6x; with another process on the
cores it goes to 3-7x) ran while something else held the machine, and its step times say
nothing about the code: the guard leaves it out and says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from suite.guard.side import RepeatSamples

SLOW_STATE = 2.0


def best_probe(repeats: Iterable[RepeatSamples]) -> float | None:
    """The best (lowest) probe time among repetitions of one machine, and the best each
    recorded for its host when it ran."""
    times = [t for r in repeats for t in (r.probe_best_s, r.probe_before_s, r.probe_after_s) if t]
    return min(times) if times else None


def slowdown(rep: RepeatSamples, best: float | None) -> float | None:
    probe = rep.probe_s
    return probe / best if probe and best else None


@dataclass
class StateSplit:
    kept: list[RepeatSamples] = field(default_factory=list)
    slow: list[tuple[RepeatSamples, float]] = field(default_factory=list)  # (repetition, its slowdown)
    unknown: int = 0  # repetitions without a probe (recorded by an older txsuite)

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.slow)

    def describe(self, side: str, limit: float) -> str | None:
        if not self.slow:
            return None
        worst = max(s for _, s in self.slow)
        return (f"{len(self.slow)} of {self.total} repetitions of the {side} ran while this machine was "
                f"{worst:.1f}x slower than its best (the line is {limit:g}x); excluded")


def split_by_state(repeats: Iterable[RepeatSamples], best: float | None, limit: float = SLOW_STATE) -> StateSplit:
    split = StateSplit()
    for rep in repeats:
        s = slowdown(rep, best)
        if s is None:
            split.unknown += 1
            split.kept.append(rep)
        elif s > limit:
            split.slow.append((rep, s))
        else:
            split.kept.append(rep)
    return split
