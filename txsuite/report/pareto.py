"""Pareto front of two objectives (e.g. tokens/s to maximise, peak memory to minimise), on point
estimates and, with a verdict per pair of points, judged against noise."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

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
                     verdicts: Callable[[np.ndarray, np.ndarray, int, np.ndarray], Sequence[str]]
                     ) -> list[str | None]:
    """The Pareto front with each point off it judged against noise. `verdicts(i, j, k, tests)`
    says, for every n, whether point i[n] is "better" or "worse" than point j[n] on objective k
    beyond noise, "within noise", or "untested" (txsuite/verdict's verdicts), as one of tests[n]
    comparisons made for point j[n] (two per point that dominates it: the caller may widen each
    test for them). It is asked once per objective for a whole batch of pairs (PAIRS_AT_ONCE): a
    run of thousands of cells has millions.

    For each point: FRONT when it is Pareto-optimal on the point estimates; DOMINATED when a
    point that dominates it on the estimates is better beyond noise on one objective and, tested,
    not worse beyond noise on the other (an untested objective backs no dominance: its medians may
    hold repetitions the verdicts left out); NEAR_FRONT when some dominating point was tested and none
    separates; UNTESTED_OFF_FRONT when no dominating point could be tested; None for a point with a
    missing coordinate (a failed cell is no option)."""
    optimal = pareto_optimal(points, senses)
    signs = [1.0 if sense == "max" else -1.0 for sense in senses]
    # [points, 2], bigger is better on both objectives; NaN for a point with a missing coordinate
    scored = np.array([(signs[0] * float(a), signs[1] * float(b)) if _finite(a) and _finite(b) else (np.nan, np.nan)
                       for a, b in points], dtype=float).reshape(len(points), 2)
    judged = [j for j in range(len(points)) if not np.isnan(scored[j, 0]) and not optimal[j]]
    place: dict[int, str] = {}
    batch: list[tuple[int, np.ndarray]] = []  # (point, its dominators), about PAIRS_AT_ONCE pairs
    pairs = 0
    for j in judged:
        batch.append((j, _dominators(scored, j)))
        pairs += len(batch[-1][1])
        if pairs >= PAIRS_AT_ONCE:
            place.update(_judge(batch, verdicts))
            batch, pairs = [], 0
    place.update(_judge(batch, verdicts))
    return [None if np.isnan(scored[j, 0]) else FRONT if optimal[j] else place[j] for j in range(len(points))]


# Pairs asked of `verdicts` in one call: millions in a run of thousands of cells, so they are
# asked a batch at a time (memory stays bounded), each batch in one call per objective.
PAIRS_AT_ONCE = 1_000_000


def _judge(batch: list[tuple[int, np.ndarray]], verdicts: Callable) -> dict[int, str]:
    """point -> DOMINATED, NEAR_FRONT or UNTESTED_OFF_FRONT, for each (point, its dominators)."""
    if not batch:
        return {}
    counts = np.array([len(ds) for _, ds in batch], dtype=int)
    i = np.concatenate([ds for _, ds in batch]).astype(int)
    j = np.repeat(np.array([point for point, _ in batch], dtype=int), counts)
    tests = np.repeat(2 * counts, counts)
    speed, memory = (np.array(verdicts(i, j, k, tests), dtype=object).reshape(len(i)) for k in (0, 1))
    # a pair that backs DOMINATED: better on one objective, worse and untested on neither
    beaten = (((speed == BETTER) | (memory == BETTER)) & (speed != WORSE) & (memory != WORSE)
              & (speed != UNTESTED) & (memory != UNTESTED))
    untested = (speed == UNTESTED) & (memory == UNTESTED)
    place = {}
    for (point, _), end, count in zip(batch, np.cumsum(counts).tolist(), counts.tolist()):
        pairs = slice(end - count, end)
        if beaten[pairs].any():
            place[point] = DOMINATED
        elif untested[pairs].all():
            place[point] = UNTESTED_OFF_FRONT
        else:
            place[point] = NEAR_FRONT
    return place


def _dominators(scored: np.ndarray, j: int) -> np.ndarray:
    """The points at least as good as point j on both objectives and not the same point, in
    index order (a NaN point compares False: never a dominator)."""
    mine = scored[j]
    at_least = (scored[:, 0] >= mine[0]) & (scored[:, 1] >= mine[1])
    same = (scored[:, 0] == mine[0]) & (scored[:, 1] == mine[1])
    return np.flatnonzero(at_least & ~same)
