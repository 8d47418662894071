"""Variances that borrow strength from each other: a prior fitted to many groups' variances, and
each group's variance moderated towards it (Smyth 2004, the moderated t of limma).

Every cell of a run is measured on the same machine in the same minutes, so its noise is
mostly the machine's: the cells' variances estimate much the same quantity, each with very few
degrees of freedom (one, with two repetitions). The prior is the distribution those variances
come from, a scaled inverse chi-square with `df` degrees of freedom around `variance`, fitted
by the method of moments on their logarithms. Its `df` says how alike the groups are: near
infinite when their spread is what their own few degrees of freedom explain (then every group
gets the pooled variance, with the pooled degrees of freedom), small when one group is much
noisier than the rest (then each keeps mostly its own). A noisy cell beside quiet ones
therefore keeps a wide interval, and quiet cells are not charged its noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from txsuite.verdict.distributions import trigamma_inverse

# A variance of exactly 0 (an integer counter, a page-counted memory that did not move) has no
# logarithm; it is read as this tiny variance instead (a log sd of 1e-6).
FLOOR = 1e-12


@dataclass(frozen=True)
class Prior:
    """The variance the groups share and how much it is worth, in degrees of freedom (inf: the
    groups are alike, pool them; 0: no prior, each group alone)."""
    variance: float
    df: float

    @classmethod
    def none(cls) -> "Prior":
        return cls(variance=0.0, df=0.0)


def fit_prior(variances: Sequence[float], dfs: Sequence[float]) -> Prior:
    """limma's fitFDist without covariates: variances[i] estimated with dfs[i] degrees of
    freedom. Needs three groups or more (fewer give no prior)."""
    from scipy.special import digamma, polygamma

    groups = [(max(v, FLOOR), d) for v, d in zip(variances, dfs) if d > 0 and math.isfinite(v)]
    if len(groups) < 3:
        return Prior.none()
    e = [math.log(v) - float(digamma(d / 2)) + math.log(d / 2) for v, d in groups]
    mean = sum(e) / len(e)
    spread = sum((x - mean) ** 2 for x in e) / (len(e) - 1) - sum(float(polygamma(1, d / 2)) for _, d in groups) / len(e)
    if spread <= 0:
        return Prior(variance=math.exp(mean), df=math.inf)
    df0 = 2.0 * trigamma_inverse(spread)
    return Prior(variance=math.exp(mean + float(digamma(df0 / 2)) - math.log(df0 / 2)), df=df0)


def moderate(variance: float, df: float, prior: Prior, most_df: float) -> tuple[float, float]:
    """(posterior variance, its degrees of freedom): the group's own variance and the prior,
    weighted by their degrees of freedom. The degrees of freedom are capped at `most_df`, all
    the data has (an infinite prior cannot make a handful of repetitions worth more)."""
    if prior.df == 0:
        return variance, df
    if math.isinf(prior.df):
        return prior.variance, most_df
    posterior = (prior.df * prior.variance + df * variance) / (prior.df + df)
    return posterior, min(prior.df + df, most_df)
