"""The statistics of the regression guard, run against a baseline (numpy and SciPy; no torch).

What is compared
----------------
A cell's per-step metric (tokens/s, samples/s, MFU, step time) is measured once per optimizer
step, in each of the cell's repetitions, and every repetition is a separate process. The data
of one side is therefore *two-level*: repetitions (processes, started minutes apart), and
steps inside each repetition. Steps of one repetition share that process's memory layout,
thread placement and the load the machine had at that time, so they are not independent of
each other: pooling the steps of all repetitions and testing them as if they were independent
draws (what a plain Mann-Whitney test or a plain bootstrap does) understates the uncertainty
whenever repetitions differ, and a shared machine makes them differ by 5-50 %.

The guard therefore asks three questions and declares a significant change only when *all
three* answer yes (an intersection-union test: its p-value is the largest of the three, and its
false-alarm rate is at most alpha):

1. Steps (`mann_whitney_p`): is the current run's per-step distribution shifted in the bad
   direction relative to the baseline's? Mann-Whitney U (scipy.stats.mannwhitneyu: exact for
   small samples without ties, normal approximation with tie and continuity correction
   otherwise), one-sided. It is
   distribution-free, so the long right tail of step times (a GC pause, a neighbour) does not
   matter, but it sees only step-level noise.
2. Repetitions, resampled (`hierarchical_bootstrap`): a two-stage (cluster) bootstrap that
   first resamples repetitions with replacement, then steps inside each chosen repetition
   (Davison & Hinkley 1997, sec. 3.8; Saravanan et al. 2020 for the "hierarchical bootstrap"
   name). The median ratio's bootstrap distribution then carries the between-repetition
   spread, which gives the confidence interval reported in the table, and a one-sided p-value
   (the share of resampled ratios that are not worse than 1, i.e. the inverted percentile
   interval). With one repetition per side it reduces to the ordinary bootstrap over steps.
3. Repetitions, tested (`mean_log_difference_p`): the difference of the mean log repetition
   statistic (each repetition's median) between the sides, against its standard error. For a
   run against a baseline that error has two parts (txsuite.verdict.runs): the repetitions' own
   noise, estimated from the data and pooled over every compared cell (a shared variance
   component, as in a one-way random-effects model: a 6-cell matrix with 2 repeats a side gives
   12 degrees of freedom, where one cell alone would give 2), and the level of a whole run,
   which every repetition of the run shares (the machine's state over tens of seconds), so
   that repetitions do not average it out: a prior (`--run-noise`), moderated by what a
   baseline of several runs measures.

   With one run a side and the default run-noise prior, a -5 % limit can be failed only by a
   large slowdown and passed only by an improvement: the honest price of comparing two moments
   of a shared machine (docs/guard.md). `txsuite ab`, which alternates the versions seconds
   apart, needs no run part.

Every function here is pure and seeded; nothing reads a file.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from txsuite.verdict.distributions import t_sf

Statistic = Callable[[np.ndarray], np.ndarray]  # reduces the last axis


def median_stat(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=-1)


def quantile_stat(q: float) -> Statistic:
    def stat(x: np.ndarray) -> np.ndarray:
        return np.quantile(x, q, axis=-1)  # linear interpolation, as txsuite.measure.stats
    stat.__name__ = f"p{round(q * 100)}"
    return stat


# ------------------------------------------------------------------ tests (SciPy) ----------
# SciPy is imported inside the functions: `import txsuite.guard` stays light for the CLI.

def mann_whitney_p(x: Sequence[float], y: Sequence[float], alternative: str = "less") -> float:
    """One-sided p-value of Mann-Whitney U (scipy.stats.mannwhitneyu): `less` tests whether x
    tends to be smaller than y (x stochastically less), `greater` the opposite. The exact
    distribution when both samples have at most 60 values and there are no ties; otherwise the
    normal approximation with tie and continuity correction."""
    from scipy.stats import mannwhitneyu

    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) == 0 or len(y) == 0:
        return 1.0
    both = np.concatenate([x, y])
    exact = len(np.unique(both)) == len(both) and len(x) <= 60 and len(y) <= 60
    return float(mannwhitneyu(x, y, alternative=alternative, method="exact" if exact else "asymptotic").pvalue)


def min_attainable_p(m: int, n: int) -> float:
    """The smallest one-sided p-value Mann-Whitney can give for samples of m and n values."""
    return 1.0 / math.comb(m + n, m) if m and n else 1.0


def pooled_log_sd(groups: list[Sequence[float]]) -> tuple[float | None, int]:
    """Pooled standard deviation of log values within groups (each group: one cell's per-
    repetition statistics on one side). Groups of one value add nothing. -> (sd, df); sd is
    None when no group has two values."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) >= 2:
            x = np.log(np.asarray(g, dtype=float))
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(g) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def mean_log_difference_p(run: Sequence[float], base: Sequence[float], se: float, df: float,
                          alternative: str = "less") -> float:
    """One-sided p of mean(log run) - mean(log base) (< 0 for `less`) with the given standard
    error (estimated with df degrees of freedom; inf: known)."""
    diff = float(np.mean(np.log(run)) - np.mean(np.log(base)))
    if alternative == "greater":
        diff = -diff
    elif alternative != "less":
        raise ValueError(f"alternative must be 'less' or 'greater', not {alternative!r}")
    if se <= 0.0:
        return 0.0 if diff < 0 else 1.0
    return t_sf(-diff / se, df)


# ------------------------------------------------------------------ bootstrap ---------------

def _resample_side(groups: list[np.ndarray], n_boot: int, rng: np.random.Generator,
                   stat: Statistic) -> np.ndarray:
    """n_boot two-stage resamples of one side: repetitions with replacement, then steps with
    replacement inside each drawn repetition; returns the statistic of each pooled resample."""
    r = len(groups)
    lengths = np.array([len(g) for g in groups])
    width = int(lengths.max())
    padded = np.full((r, width), np.nan)
    for i, g in enumerate(groups):
        padded[i, :len(g)] = g
    reps = rng.integers(0, r, size=(n_boot, r))  # which repetitions
    u = rng.random((n_boot, r, width))
    steps = np.floor(u * lengths[reps][:, :, None]).astype(np.int64)  # steps inside each
    draws = padded[reps[:, :, None], steps]  # [B, r, width]
    if np.all(lengths == width):
        return stat(draws.reshape(n_boot, r * width))
    # unequal repetitions: a drawn repetition contributes as many steps as it has
    mask = np.arange(width)[None, None, :] < lengths[reps][:, :, None]
    draws = np.where(mask, draws, np.nan).reshape(n_boot, r * width)
    out = np.empty(n_boot)
    for b in range(n_boot):
        row = draws[b]
        out[b] = stat(row[~np.isnan(row)][None, :])[0]
    return out


def hierarchical_bootstrap(run: list[np.ndarray], base: list[np.ndarray], stat: Statistic,
                           n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of stat(run) / stat(base), each side resampled in two stages
    (repetitions, then steps). `run` and `base` are lists of per-repetition sample arrays."""
    rng = np.random.default_rng(seed)
    num = _resample_side([np.asarray(g, dtype=float) for g in run], n_boot, rng, stat)
    den = _resample_side([np.asarray(g, dtype=float) for g in base], n_boot, rng, stat)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def percentile_interval(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    lo = float(np.quantile(ratios, (1.0 - confidence) / 2.0))
    hi = float(np.quantile(ratios, (1.0 + confidence) / 2.0))
    return lo, hi


def bootstrap_p(ratios: np.ndarray, worse_when_below: bool) -> float:
    """One-sided p-value of "the ratio is worse than 1" from a bootstrap distribution: the share
    of resampled ratios that are not worse (the percentile interval inverted), with the usual
    +1 so that it is never 0."""
    not_worse = np.count_nonzero(ratios >= 1.0) if worse_when_below else np.count_nonzero(ratios <= 1.0)
    return float((not_worse + 1) / (len(ratios) + 1))
