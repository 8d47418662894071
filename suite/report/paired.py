"""Two cells of one run compared paired by round, the test behind every "faster", "lighter",
"on the front" and coloured ratio the run report prints.

The runner measures repetition r of every cell before repetition r + 1 of any, so the two
repetitions of a round share that stretch of the machine's state (clock, a neighbour's load,
the page cache). The log ratio of their values cancels what the round shares; what remains is
each cell's own noise. Over the rounds both cells completed, a 95 % t interval of the mean log
ratio that stays on one side of 0 separates them; one that reaches 0 does not. Fewer than two
common rounds leave no interval: the comparison is untested, never guessed.

A metric may also have a resolution: the smallest relative difference the report calls a
difference at all. Peak memory has one because it is nearly constant between repetitions and
counted in pages, so a t interval over five values can exclude 0 for a few hundred kilobytes
that no setting caused: four cells that do the same work differed by up to 0.04 % in median peak
memory (16 runs, bench/report_verdicts.py), and four memory verdicts between them said lighter
or heavier for 0.01–0.04 % before the resolution. 0.1 % is over twice the largest such
difference and a fifth of the smallest real one measured there (one thread instead of two:
0.5 % lighter).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from suite.report import formatting as fmt

BETTER, WORSE, WITHIN_NOISE, UNTESTED = "better", "worse", "within noise", "untested"
# metric -> the smallest relative difference called a difference (see above); others: none.
RESOLUTION = {"peak_mem_bytes": 0.001}


def by_round(repeats: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    """cell id -> repetition index -> the metric's value, ok repetitions with a positive value only
    (a log ratio needs both sides above 0)."""
    out: dict[str, dict[int, float]] = {}
    if repeats.empty or metric not in repeats:
        return out
    for _, rec in repeats[repeats["status"] == "ok"].iterrows():
        if fmt.is_number(rec[metric]) and rec[metric] > 0:
            out.setdefault(str(rec["cell_id"]), {})[int(rec["repeat"])] = float(rec[metric])
    return out


def paired_verdict(a: dict[int, float], b: dict[int, float], higher_is_better: bool, metric: str = "",
                   level: float = 0.95) -> str:
    """Is cell a BETTER or WORSE than cell b beyond noise, WITHIN_NOISE of it, or UNTESTED
    (fewer than two rounds both completed)? `a` and `b` map round -> value of `metric`
    (`by_round`); better or worse needs the `level` interval of the mean log ratio to exclude 0
    and the ratio to reach the metric's RESOLUTION."""
    from suite.report.quality import t_quantile  # scipy, imported when a test is made

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return UNTESTED
    d = np.log([a[r] / b[r] for r in common]) * (1.0 if higher_is_better else -1.0)  # > 0: a is better
    half = t_quantile(len(d) - 1, level) * d.std(ddof=1) / np.sqrt(len(d))
    floor = np.log1p(RESOLUTION.get(metric, 0.0))
    if d.mean() - half > 0 and d.mean() >= floor:
        return BETTER
    if d.mean() + half < 0 and -d.mean() >= floor:
        return WORSE
    return WITHIN_NOISE
