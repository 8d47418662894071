"""The machine's state while a repetition was measured, from its probe (txsuite.measure.probe).

Every repetition timed a fixed calibration workload just before and just after its measured
steps. Its slowdown is the slower of the two probes divided by the best time the same machine
ever gave the workload (the best recorded by any repetition being compared, from either side
when both ran on the same hardware). A repetition whose slowdown exceeds the slow-state line
(2x by default: idle, this project's machine stays well below it; with another process on the
cores it goes well above) ran while something else held the machine, and its step times say
nothing about the code: the guard leaves it out and says so.

Below that line the machine still moves: a whole run's throughput follows its probes
(strongly correlated over three sessions of runs on this project's runner).
`--normalize state` brings every repetition's time metrics to the machine's best state
(`state_adjusted`), which took the run-to-run noise of those runs to about half or less
(bench/run_drift.py; the figures: docs/measurements.md, "Regression guard").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable

from txsuite.guard.side import RepeatSamples, Side
from txsuite.verdict import state as machine
from txsuite.verdict.state import SLOW_STATE


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


def state_factor(rep: RepeatSamples, best: float | None) -> float | None:
    """How much slower than its best the machine was around a repetition, for `--normalize
    state`: its probes / the best, each step in the state of the probes it ran between where
    the record has them (txsuite.verdict.state.state_factor; the
    slower probe alone, which `slowdown` uses for the slow-state line, tracks a run's level less
    closely: over the first 20 runs of bench/run_drift.py it left about the same run-level noise
    but more within a run; docs/measurements.md, "Regression guard")."""
    return machine.state_factor(rep.probe_before_s, rep.probe_after_s, best, rep.probe_mean_s,
                                 rep.probe_steps_s)



def state_adjusted(side: Side, best: float) -> Side:
    """The side with every repetition's time metrics brought to the machine's best state: step
    times divided by the repetition's state factor (so throughput is multiplied by it).
    Repetitions without a probe are kept as they are (the guard refuses to compare such a side
    in this mode: txsuite.guard.decide)."""
    cells = {}
    for cid, cell in side.cells.items():
        repeats = []
        for rep in cell.repeats:
            f = state_factor(rep, best)
            if f is None:
                repeats.append(rep)
                continue
            steps = [t / f for t in rep.step_times_s] if rep.step_times_s else rep.step_times_s
            summary = {k: (machine.adjust(k, v, f) if v is not None else v) for k, v in rep.summary.items()}
            repeats.append(replace(rep, step_times_s=steps, summary=summary))
        cells[cid] = replace(cell, repeats=repeats)
    return replace(side, cells=cells)


# How far a state correction is trusted: to within this fraction of its own size. Under moderate
# drift the probes track a run's level (bench/run_drift.py); beside two busy processes they did
# not (unchanged code, one side's probes 1.7x slower, its steps not: called a 0.58x FAIL).
CORRECTION_TRUST = 0.5


def correction_between(sides: tuple[Side, Side], common: list[str], best: float | None) -> float:
    """How far `state_adjusted` moves the two sides apart: |mean log state factor of one side's
    repetitions - the other's| over the compared cells (0 when a side has no probe)."""
    means = []
    for side in sides:
        logs = [math.log(f) for cid in common for rep in side.cells[cid].repeats
                if (f := state_factor(rep, best)) is not None and f > 0]
        if not logs:
            return 0.0
        means.append(sum(logs) / len(logs))
    return abs(means[0] - means[1])


def correction_noise(correction: float) -> float:
    """The uncertainty a state correction of this size adds to the whole-run noise (sd of log)."""
    return CORRECTION_TRUST * correction


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
