"""Two cells of one run compared paired by round, with the noise of the whole run: the test
behind every "faster", "lighter", "on the front" and coloured ratio of a run report.

The runner measures repetition r of every cell before repetition r + 1 of any, so the
repetitions of a round share that stretch of the machine's state (clock, a neighbour's load,
the page cache). In logs, cell c's value in round r is

    log y[c, r] = cell[c] + round[r] + noise[c, r],   noise[c, r] ~ N(0, sigma[c]^2)

(randomized blocks). The difference of two cells in one round cancels the round; over the
rounds both completed it has variance sigma[a]^2 + sigma[b]^2. With two repetitions a pair
alone estimates that with one degree of freedom (a 95 % interval of +-12.7 standard errors).
So each cell's own noise is measured on the whole table instead: its repetitions' deviations
from its mean, less the round's effect, which is taken as the median over the *other* cells
(so a noisy cell neither sets its own round effect nor passes its noise to the others). Each
cell's variance is then moderated towards what the run's cells share (moderated.py, limma):
cells whose noise is alike pool it, with the table's degrees of freedom; a cell much noisier
than the rest keeps mostly its own, and with it a wide interval.

The verdict: the interval of the mean log ratio over the rounds both cells completed, at the
asked level, on one side of 0 and beyond the metric's resolution (txsuite/config/metrics.py):
better or worse; otherwise within noise. Fewer than two common rounds: untested, never guessed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from txsuite.verdict.comparison import Comparison
from txsuite.verdict.moderated import Prior, fit_prior, moderate
from txsuite.verdict.words import UNTESTED


@dataclass(frozen=True)
class CellNoise:
    variance: float  # of one repetition's log value, the round's effect removed
    df: float


class RoundNoise:
    """The noise of one metric over the cells x rounds of one run (see the module's text)."""

    def __init__(self, logs: dict[str, dict[int, float]], cells: dict[str, CellNoise], prior: Prior):
        self.logs = logs
        self.cells = cells  # moderated noise of each cell with two rounds or more (empty: pairs alone)
        self.prior = prior

    @classmethod
    def fit(cls, values: Mapping[str, Mapping[int, float]]) -> "RoundNoise":
        """values: cell -> round -> the metric's value in that repetition (positive values only
        are used: a ratio needs both sides above 0)."""
        logs = {c: {int(r): math.log(v) for r, v in by.items() if _positive(v)} for c, by in values.items()}
        logs = {c: by for c, by in logs.items() if by}
        centred = {c: {r: v - float(np.mean(list(by.values()))) for r, v in by.items()}
                   for c, by in logs.items() if len(by) >= 2}
        if len(centred) < 3:  # no cells to tell the round's effect from a cell's noise
            return cls(logs, {}, Prior.none())
        raw = {}
        for c, by in centred.items():
            effect = {r: float(np.median([other[r] for k, other in centred.items() if k != c and r in other]))
                      if any(r in other for k, other in centred.items() if k != c) else 0.0 for r in by}
            mean_effect = float(np.mean(list(effect.values())))
            residuals = np.array([v - (effect[r] - mean_effect) for r, v in by.items()])
            raw[c] = CellNoise(float((residuals ** 2).sum()) / (len(by) - 1), len(by) - 1.0)
        rounds = {r for by in centred.values() for r in by}
        most = sum(n.df for n in raw.values()) - (len(rounds) - 1)  # the round effects cost rounds - 1
        prior = fit_prior([n.variance for n in raw.values()], [n.df for n in raw.values()])
        if math.isinf(prior.df):  # alike: the pooled variance of the whole table
            prior = Prior(float(np.average([n.variance for n in raw.values()], weights=[n.df for n in raw.values()])),
                          math.inf)
        cells = {c: CellNoise(*moderate(n.variance, n.df, prior, max(most, n.df))) for c, n in raw.items()}
        return cls(logs, cells, prior)

    def compare(self, a: str, b: str, higher_is_better: bool, level: float = 0.95,
                resolution: float = 0.0) -> Comparison:
        """Is cell a better or worse than cell b beyond noise, at `level`, by at least
        `resolution` (relative)?"""
        d = _differences(self.logs.get(a, {}), self.logs.get(b, {}))
        n = len(d)
        if n < 2:
            return Comparison(UNTESTED, ratio=math.exp(d[0]) if n else None, samples=n)
        if a in self.cells and b in self.cells:
            na, nb = self.cells[a], self.cells[b]
            # both variances lean on the same prior, so their sum is worth no more degrees of
            # freedom than the better-informed of the two (Welch would count the prior twice)
            variance, df, pooled = na.variance + nb.variance, min(_welch_df(na, nb), max(na.df, nb.df)), True
        else:
            variance, df, pooled = float(d.var(ddof=1)), n - 1.0, False
        return Comparison.of_log_ratio(float(d.mean()), math.sqrt(variance / n), df, level, higher_is_better,
                                       resolution, samples=n, pooled=pooled)

    def describe(self) -> str:
        """How the noise was estimated, in words."""
        if not self.cells:
            return "each pair of cells on its own rounds (fewer than three cells with two repetitions)"
        if math.isinf(self.prior.df):
            df = next(iter(self.cells.values())).df
            return f"pooled over the run's cells x rounds: their noise is alike ({df:.0f} degrees of freedom)"
        return (f"each cell's own, moderated towards the run's ({self.prior.df:.1f} prior degrees of freedom: "
                f"the cells' noise differs)")


def _welch_df(a: CellNoise, b: CellNoise) -> float:
    """Welch-Satterthwaite degrees of freedom of the sum of two variances."""
    den = (a.variance ** 2 / a.df if a.df else 0.0) + (b.variance ** 2 / b.df if b.df else 0.0)
    return (a.variance + b.variance) ** 2 / den if den > 0 else math.inf


def _differences(a: Mapping[int, float], b: Mapping[int, float]) -> np.ndarray:
    """log a - log b over the rounds both have, in round order."""
    return np.array([a[r] - b[r] for r in sorted(set(a) & set(b))])


def _positive(v: object) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False
