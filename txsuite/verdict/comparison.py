"""The answer to "is A better than B on this metric, beyond noise, and by how much": one
dataclass for every comparison the engine makes, and the one rule that turns an estimate and
its standard error into a verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass

from txsuite.verdict.distributions import t_quantile
from txsuite.verdict.words import BETTER, UNTESTED, WITHIN_NOISE, WORSE


@dataclass(frozen=True)
class Comparison:
    """A against B on one metric."""
    verdict: str                 # BETTER / WORSE (A than B, in the metric's direction), WITHIN_NOISE, UNTESTED
    ratio: float | None = None   # A / B (geometric means)
    low: float | None = None     # the interval of that ratio at the level asked
    high: float | None = None
    samples: int = 0             # what the estimate averages: rounds (paired) or repetitions
    df: float = 0.0              # degrees of freedom of the noise estimate (inf: known)
    pooled: bool = False         # the noise borrowed from the run's other cells

    @property
    def separated(self) -> bool:
        return self.verdict in (BETTER, WORSE)

    def rounds_to_separate(self, level: float = 0.95, most: int = 10) -> int | None:
        """A projection, not a measurement: the fewest rounds (at most `most`) whose interval
        would exclude no change *if* the ratio and the noise per round stayed as estimated here
        (the standard error shrinks as 1/sqrt(rounds), the degrees of freedom grow with the
        rounds beyond the first). None: not within `most`, or nothing to project from (a
        separated or untested comparison, one round, a ratio of exactly 1)."""
        if self.verdict != WITHIN_NOISE or self.samples < 2 or not self.df or not self.low or not self.high:
            return None
        gap = abs(math.log(self.ratio))
        se = (math.log(self.high) - math.log(self.low)) / (2 * t_quantile(self.df, level))
        if not gap or not se:
            return None
        for rounds in range(self.samples + 1, most + 1):
            df = self.df * (rounds - 1) / (self.samples - 1)
            if t_quantile(df, level) * se * math.sqrt(self.samples / rounds) < gap:
                return rounds
        return None

    @classmethod
    def of_log_ratio(cls, mean: float, se: float, df: float, level: float, higher_is_better: bool,
                     resolution: float = 0.0, samples: int = 0, pooled: bool = False) -> "Comparison":
        """The verdict on an estimated log ratio log(A/B) with standard error `se` (df degrees of
        freedom): BETTER or WORSE when the `level` interval excludes 0 and the ratio reaches
        `resolution` (relative), else WITHIN_NOISE; UNTESTED when the error is unknown."""
        if not math.isfinite(se) or not df:
            return cls(UNTESTED, math.exp(mean), samples=samples, df=df, pooled=pooled)
        half = t_quantile(df, level) * se
        signed = mean if higher_is_better else -mean  # > 0: A is better
        floor = math.log1p(resolution)
        if signed - half > 0 and signed >= floor:
            verdict = BETTER
        elif signed + half < 0 and -signed >= floor:
            verdict = WORSE
        else:
            verdict = WITHIN_NOISE
        return cls(verdict, math.exp(mean), math.exp(mean - half), math.exp(mean + half), samples, df, pooled)
