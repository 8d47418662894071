"""Pareto front of two objectives (e.g. tokens/s to maximise, peak memory to minimise), on point
estimates and, with a verdict per pair of points, judged against noise."""
from __future__ import annotations

import math
from typing import Callable, Sequence

from txsuite.verdict.words import BETTER, UNTESTED, WORSE


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


# What a point off the front is, once noise is weighed (front_with_noise).
FRONT, NEAR_FRONT, DOMINATED, UNTESTED_OFF_FRONT = "front", "within noise", "dominated", "untested"


def front_with_noise(points: Sequence[tuple[float, float]], senses: tuple[str, str],
                     verdict: Callable[[int, int, int, int], str]) -> list[str | None]:
    """The Pareto front with each point off it judged against noise. `verdict(i, j, k, tests)`
    says whether point i is "better" or "worse" than point j on objective k beyond noise, "within
    noise", or "untested" (txsuite/verdict's verdicts), as one of `tests` comparisons made
    for point j (two per point that dominates it: the caller may widen each test for them).

    For each point: FRONT when it is Pareto-optimal on the point estimates; DOMINATED when a
    point that dominates it on the estimates is better beyond noise on one objective and, tested,
    not worse beyond noise on the other (an untested objective backs no dominance: its medians may
    hold repetitions the verdicts left out); NEAR_FRONT when some dominating point was tested and none
    separates; UNTESTED_OFF_FRONT when no dominating point could be tested; None for a point with a
    missing coordinate (a failed cell is no option)."""
    optimal = pareto_optimal(points, senses)
    signs = [1.0 if sense == "max" else -1.0 for sense in senses]
    scored = [(signs[0] * float(a), signs[1] * float(b)) if _finite(a) and _finite(b) else None
              for a, b in points]
    out = []
    for j, mine in enumerate(scored):
        if mine is None:
            out.append(None)
            continue
        if optimal[j]:
            out.append(FRONT)
            continue
        dominators = [i for i, theirs in enumerate(scored) if theirs is not None and i != j
                      and theirs[0] >= mine[0] and theirs[1] >= mine[1] and theirs != mine]
        tests = 2 * len(dominators)
        verdicts = [(verdict(i, j, 0, tests), verdict(i, j, 1, tests)) for i in dominators]
        if any(BETTER in pair and WORSE not in pair and UNTESTED not in pair for pair in verdicts):
            out.append(DOMINATED)
        elif all(pair == (UNTESTED, UNTESTED) for pair in verdicts):
            out.append(UNTESTED_OFF_FRONT)
        else:
            out.append(NEAR_FRONT)
    return out
