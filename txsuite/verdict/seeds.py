"""Two cells' final losses, paired by seed: the test behind every "better" and "worse" of the
quality verdicts.

A cell's final loss moves with its training seed (initialisation and data order): that is the
noise a quality verdict must beat. Repetitions of one seed train the same model, so they add
nothing; the validation set's own noise (the spread of per-sequence losses) is much smaller
than the seed's and is not the noise of training, so it never makes a verdict alone.

- Two or more common seeds: the differences paired by seed, Student's t over them.
- One common seed: the training noise of the run's other cells (`TrainingNoise`: the paired
  seed-to-seed spread of their differences to the same reference, pooled) when some cell has
  two seeds or more; otherwise the verdict is untested: one seed cannot tell.

A difference smaller than LOSS_RESOLUTION is never called: floating-point reduction order alone
moves a final loss in its eighth decimal, consistently over seeds, and a difference in the
fifth decimal of a loss is not one a user can act on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from txsuite.verdict.distributions import t_quantile
from txsuite.verdict.words import BETTER, UNTESTED, WITHIN_NOISE, WORSE

LOSS_RESOLUTION = 1e-4  # nats
ONE_SEED = "one seed: training noise is not measured, so one seed cannot tell (use seeds: 3)"


@dataclass(frozen=True)
class TrainingNoise:
    """The variance of one seed's loss difference between two cells, pooled over the run's pairs
    with two seeds or more, and its degrees of freedom."""
    variance: float
    df: int
    pairs: int

    @classmethod
    def fit(cls, differences: Sequence[Sequence[float]]) -> "TrainingNoise | None":
        """differences: per pair of cells, its per-seed loss differences."""
        ss, df, pairs = 0.0, 0, 0
        for d in differences:
            if len(d) >= 2:
                x = np.asarray(d, dtype=float)
                ss += float(((x - x.mean()) ** 2).sum())
                df += len(d) - 1
                pairs += 1
        return cls(ss / df, df, pairs) if df else None


@dataclass(frozen=True)
class LossDifference:
    """a - b in final loss (lower is better) with its interval and verdict."""
    delta: float
    low: float
    high: float
    noise: str  # which noise the interval holds, in words
    verdict: str  # BETTER (a lower), WORSE, WITHIN_NOISE, UNTESTED

    @property
    def separated(self) -> bool:
        return self.verdict in (BETTER, WORSE)


def loss_difference(a: Mapping[int, float], b: Mapping[int, float], borrowed: TrainingNoise | None = None,
                    level: float = 0.95, where: str = "") -> LossDifference | None:
    """a - b paired by seed index; None when they share no seed. `borrowed`: the run's training
    noise for a comparison with one common seed. `where` says at what budget, when not at the end."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs = [a[k] - b[k] for k in common]
    delta = float(np.mean(diffs))
    if len(common) >= 2:
        half = t_quantile(len(common) - 1, level) * float(np.std(diffs, ddof=1)) / math.sqrt(len(common))
        noise = f"seeds (t interval over {len(common)} seeds, paired){where}"
    elif borrowed is not None:
        half = t_quantile(borrowed.df, level) * math.sqrt(borrowed.variance)
        noise = (f"one seed; training noise from the run's {borrowed.pairs} pair(s) of cells with several seeds "
                 f"({borrowed.df} degrees of freedom){where}")
    else:
        return LossDifference(delta, math.nan, math.nan, ONE_SEED + where, UNTESTED)
    return LossDifference(delta, delta - half, delta + half, noise, _verdict(delta, half))


def _verdict(delta: float, half: float) -> str:
    if abs(delta) < LOSS_RESOLUTION:
        return WITHIN_NOISE
    if delta + half < 0:
        return BETTER
    if delta - half > 0:
        return WORSE
    return WITHIN_NOISE
