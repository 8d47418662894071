"""Pareto front of two objectives (e.g. tokens/s to maximise, peak memory to minimise)."""
from __future__ import annotations

import math
from typing import Sequence


def pareto_optimal(points: Sequence[tuple[float, float]],
                   senses: tuple[str, str] = ("max", "min")) -> list[bool]:
    """For each (a, b) point: True when no other point is at least as good on both objectives
    and strictly better on one. `senses` says whether each objective is maximised or minimised.
    Points with a missing/non-finite coordinate are never optimal (a failed cell is no option).
    Identical points do not dominate each other, so duplicates are all kept."""
    signs = []
    for sense in senses:
        if sense not in ("max", "min"):
            raise ValueError(f"sense must be 'max' or 'min', got {sense!r}")
        signs.append(1.0 if sense == "max" else -1.0)

    # Score every point so that bigger is better on both axes.
    scored = []
    for i, (a, b) in enumerate(points):
        if _finite(a) and _finite(b):
            scored.append((signs[0] * float(a), signs[1] * float(b), i))
    optimal = [False] * len(points)
    # Sweep from best first objective down; a point is optimal when its second objective beats
    # everything strictly better on the first (ties on the first are handled as a group).
    scored.sort(key=lambda t: (-t[0], -t[1]))
    best_b = -math.inf
    k = 0
    while k < len(scored):
        group_end = k
        while group_end < len(scored) and scored[group_end][0] == scored[k][0]:
            group_end += 1
        group = scored[k:group_end]
        group_best = group[0][1]  # sorted: the first has the best second objective in the group
        for _, b, i in group:
            # Within a tie on the first objective, only the best second objective survives.
            if b == group_best and b > best_b:
                optimal[i] = True
        best_b = max(best_b, group_best)
        k = group_end
    return optimal


def _finite(v: object) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
