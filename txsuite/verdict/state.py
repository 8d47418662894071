"""The machine's state around one repetition, from its probe (txsuite/measure/probe.py), and what
a verdict does with it.

Every repetition times a fixed workload just before and just after its measured steps. A
repetition whose slower probe ran more than SLOW_STATE times its best ran while something else
held the machine: its times say nothing about the code, and verdicts leave it out. Below that
line the machine still moves, and a repetition's throughput moves with it: its time metrics
are brought to the machine's best state by its state factor, the geometric mean of its two
probes over the best (`adjust`). docs/verdicts.md has what that removes on real runs.
"""
from __future__ import annotations

import math

from txsuite.config.metrics import REGISTRY

SLOW_STATE = 2.0

# How each metric moves with the machine's speed (the registry's `speed`): a rate is multiplied
# by the state factor, a duration divided by it; the others do not move with it.
POWER = {m.name: m.speed for m in REGISTRY if m.speed}


def state_factor(before_s: float | None, after_s: float | None, best_s: float | None) -> float | None:
    """How much slower than its best the machine was around a repetition (>= 1 but for noise)."""
    probes = [t for t in (before_s, after_s) if t]
    if not probes or not best_s:
        return None
    return math.exp(sum(math.log(t) for t in probes) / len(probes)) / best_s


def slowdown(before_s: float | None, after_s: float | None, best_s: float | None) -> float | None:
    """The slower probe over the best: the figure the slow-state line is drawn on."""
    probes = [t for t in (before_s, after_s) if t]
    return max(probes) / best_s if probes and best_s else None


def adjust(metric: str, value: float, factor: float | None) -> float:
    """`value` of `metric` as the machine at its best would have given it."""
    if factor is None or metric not in POWER:
        return value
    return value * factor ** POWER[metric]
