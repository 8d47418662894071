"""The machine's state around one repetition, from its probe (txsuite/measure/probe.py), and what
a verdict does with it.

Every repetition times a fixed workload just before and just after its measured steps (on a
CPU, between them too). A repetition whose slower probe around the steps ran more than
SLOW_STATE times its best ran while something else held the machine: its times say nothing
about the code, and verdicts leave it out. Below that line the machine still moves, and a
repetition's throughput moves with it: its time metrics are brought to the machine's best
state by its state factor, its probes over the best (`adjust`): where the record has them, the
probes each step ran between, at the steps' median (`probe_steps_s`, txsuite.measure.probe.
MachineState.at_steps_s); else the geometric mean of every probe (`probe_mean_s`); else of the
two around the steps.
docs/verdicts.md has what that removes on real runs.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from txsuite.config.metrics import REGISTRY

SLOW_STATE = 2.0

# How each metric moves with the machine's speed (the registry's `speed`): a rate is multiplied
# by the state factor, a duration divided by it; the others do not move with it.
POWER = {m.name: m.speed for m in REGISTRY if m.speed}


# the record metrics a repetition's state is read from (txsuite.measure.probe.MachineState.metrics)
PROBES = ("probe_before_s", "probe_after_s", "probe_best_s", "probe_mean_s", "probe_steps_s")


def state_factor(before_s: float | None, after_s: float | None, best_s: float | None,
                 mean_s: float | None = None, steps_s: float | None = None) -> float | None:
    """How much slower than its best the machine was while a repetition's steps ran (>= 1 but
    for noise): the probe at the steps' median over the best, where it was recorded; else the
    mean of every probe; else the geometric mean of the two around the steps (records of an
    older txsuite, or a GPU's)."""
    if not best_s:
        return None
    if steps_s:
        return steps_s / best_s
    if mean_s:
        return mean_s / best_s
    probes = [t for t in (before_s, after_s) if t]
    return statistics.geometric_mean(probes) / best_s if probes else None


def slowdown(before_s: float | None, after_s: float | None, best_s: float | None) -> float | None:
    """The slower probe over the best: the figure the slow-state line is drawn on."""
    probes = [t for t in (before_s, after_s) if t]
    return max(probes) / best_s if probes and best_s else None


def adjust(metric: str, value: float, factor: float | None) -> float:
    """`value` of `metric` as the machine at its best would have given it."""
    if factor is None or metric not in POWER:
        return value
    return value * factor ** POWER[metric]


@dataclass(frozen=True)
class RepetitionState:
    """What a verdict needs to know of the machine while one repetition was measured."""
    factor: float | None  # state_factor; None: no probe recorded
    slowdown: float | None  # the slower probe around the steps over the best

    @property
    def slow(self) -> bool:
        """Measured in a slow state: its time metrics are left out."""
        return self.slowdown is not None and self.slowdown > SLOW_STATE


@dataclass
class StateAdjusted:
    """One metric's values over a table of repetitions, time brought to the machine's best state."""
    values: dict[str, dict[int, float]]  # cell -> round -> the (adjusted) value
    slow: int  # repetitions left out for a slow state


def adjusted(rows: Iterable[tuple[str, int, float, Mapping[str, Any]]], metric: str) -> StateAdjusted:
    """rows: (cell, round, the metric's positive value, the repetition's record metrics, its
    probes among them). A metric that does not move with the machine comes back as it is."""
    values: dict[str, dict[int, float]] = {}
    slow = 0
    for cell, round_, value, metrics in rows:
        if metric in POWER:
            machine = of(metrics)
            if machine.slow:
                slow += 1
                continue
            value = adjust(metric, value, machine.factor)
        values.setdefault(cell, {})[round_] = value
    return StateAdjusted(values, slow)


def of(metrics: Mapping[str, Any]) -> RepetitionState:
    """The state of a repetition from its record's metrics (a probe that is no positive finite
    number counts as not recorded)."""
    def seconds(name: str) -> float | None:
        value = metrics.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return float(value) if ok else None
    before, after, best, mean, steps = (seconds(name) for name in PROBES)
    return RepetitionState(state_factor(before, after, best, mean, steps), slowdown(before, after, best))
