"""Steps in a series of runs: where a cell's metric moved for good, beyond how much whole runs
move, and where it did not.

The history orders the runs of one matrix on one host by time; each run gives one value per
cell and metric. A step splits the series into a before and an after whose means (of the log
values, so the estimate is a ratio) differ beyond the run-to-run noise, which the series
measures itself: the spread of runs around the mean of their segment, pooled over every
segment (each run's repetitions share its minutes, so only the spread between runs is noise a
step must beat, and it is measured on the host and the matrix at hand, not taken from
elsewhere).

Binary segmentation: the split with the largest |t| is tested at the 95 % level for the family
of every candidate split of the series (Bonferroni), through the one decision rule
(Comparison.of_log_ratio); when it is separated, each side is searched again. A step needs
MIN_RUNS runs on each side, so one odd run (a neighbour's busy minute) never reads as a step;
a newest run beyond the interval of the runs since the last step is reported separately
(`newest_outlier`) as "to confirm". Exact metrics (the step counters) step wherever their value
changes by more than their resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from txsuite.verdict.comparison import Comparison
from txsuite.verdict.distributions import t_quantile

MIN_RUNS = 2  # runs on each side of a step
LEVEL = 0.95  # for the whole series: every split a search considers shares it
# a relative difference below this is the arithmetic's, not the runs' (a constant series' sums
# differ in the last bits): never a step, whatever the metric's own resolution
NUMERIC_FLOOR = 1e-9


@dataclass(frozen=True)
class Step:
    index: int  # the first run after the step
    comparison: Comparison  # the runs after against the runs before (ratio after / before)


def find_steps(values: Sequence[float], higher_is_better: bool | None, resolution: float = 0.0,
               exact: bool = False) -> list[Step]:
    """The steps of a series of positive values, oldest first."""
    logs = [math.log(v) for v in values]
    resolution = max(resolution, NUMERIC_FLOOR)
    if exact:
        return _exact_steps(logs, higher_is_better, resolution)
    if len(logs) < 2 * MIN_RUNS:
        return []
    candidates = len(logs) - 2 * MIN_RUNS + 1
    level = 1.0 - (1.0 - LEVEL) / candidates
    bounds = [0, len(logs)]  # segment boundaries, sorted
    steps: dict[int, Comparison] = {}
    searched: set[tuple[int, int]] = set()
    while True:
        best = None
        for lo, hi in zip(bounds, bounds[1:]):
            if (lo, hi) in searched:
                continue
            found = _best_split(logs, bounds, lo, hi, level, higher_is_better, resolution)
            if found is None or not found[1].separated:
                searched.add((lo, hi))
                continue
            if best is None or abs(math.log(found[1].ratio)) > abs(math.log(best[1].ratio)):
                best = found
        if best is None:
            break
        steps[best[0]] = best[1]
        bounds = sorted(set(bounds) | {best[0]})
        searched = {s for s in searched if best[0] not in range(s[0], s[1])}
    # each step judged again on its own neighbours, with the noise of the final segmentation; one
    # that is no longer separated there is dropped
    judged = [Step(k, _judge(logs, bounds, _left(bounds, k), k, _right(bounds, k), level, higher_is_better,
                             resolution)) for k in sorted(steps)]
    return [step for step in judged if step.comparison.separated]


def newest_outlier(values: Sequence[float], steps: list[Step], higher_is_better: bool | None,
                   resolution: float = 0.0) -> Comparison | None:
    """The newest run against the runs since the last step, when it lies beyond their spread:
    a step that one more run would confirm. None when it does not, or cannot be told."""
    logs = [math.log(v) for v in values]
    resolution = max(resolution, NUMERIC_FLOOR)
    start = steps[-1].index if steps else 0
    before = logs[start:-1]
    if len(before) < 2 * MIN_RUNS:
        return None
    mean = sum(before) / len(before)
    sd = math.sqrt(sum((x - mean) ** 2 for x in before) / (len(before) - 1))
    comparison = Comparison.of_log_ratio(logs[-1] - mean, sd * math.sqrt(1 + 1 / len(before)), len(before) - 1,
                                         LEVEL, bool(higher_is_better), resolution, samples=1)
    return comparison if comparison.separated else None


def _best_split(logs, bounds, lo, hi, level, higher_is_better, resolution):
    """(index, comparison) of the split of logs[lo:hi] with the largest |t|, or None."""
    best = None
    for k in range(lo + MIN_RUNS, hi - MIN_RUNS + 1):
        comparison = _judge(logs, bounds, lo, k, hi, level, higher_is_better, resolution)
        t = _t(comparison)
        if best is None or t > best[2]:
            best = (k, comparison, t)
    return None if best is None else best[:2]


def _judge(logs, bounds, lo, k, hi, level, higher_is_better, resolution) -> Comparison:
    """logs[k:hi] against logs[lo:k], the noise pooled over every segment once split at k."""
    before, after = logs[lo:k], logs[k:hi]
    cuts = sorted(set(bounds) | {k})
    segments = list(zip(cuts, cuts[1:]))
    squares = sum(_squares(logs[a:b]) for a, b in segments)
    df = len(logs) - len(segments)
    mean = sum(after) / len(after) - sum(before) / len(before)
    if df <= 0:
        return Comparison.of_log_ratio(mean, math.inf, 0, level, bool(higher_is_better), resolution)
    se = math.sqrt(squares / df) * math.sqrt(1 / len(before) + 1 / len(after))
    return Comparison.of_log_ratio(mean, se, df, level, bool(higher_is_better), resolution,
                                   samples=len(before) + len(after))


def _t(comparison: Comparison) -> float:
    if comparison.low is None or comparison.high is None or comparison.ratio is None:
        return 0.0
    half = (math.log(comparison.high) - math.log(comparison.low)) / 2
    return abs(math.log(comparison.ratio)) / half if half > 0 else math.inf


def _squares(xs: list[float]) -> float:
    if not xs:
        return 0.0
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs)


def _left(bounds: list[int], k: int) -> int:
    return max(b for b in bounds if b < k)


def _right(bounds: list[int], k: int) -> int:
    return min(b for b in bounds if b > k)


def _exact_steps(logs: list[float], higher_is_better: bool | None, resolution: float) -> list[Step]:
    floor = math.log1p(resolution)
    out = []
    for k in range(1, len(logs)):
        change = logs[k] - logs[k - 1]
        if abs(change) > floor:
            out.append(Step(k, Comparison.of_log_ratio(change, 0.0, math.inf, LEVEL, bool(higher_is_better),
                                                       resolution, samples=2)))
    return out
