"""How noisy a side's mean is: the noise model behind the guard's t interval (run vs baseline)
and `compare`'s verdicts.

A repetition's log statistic (the log of its median tokens/s, say) is, as in a one-way
random-effects model,

    log value = the code's level + the run's level + the repetition's own noise

- **The repetition's own noise** (`rep_sigma`): repetitions of one run differ by seconds. It is
  measured, pooled over every compared cell and both sides.
- **The run's level** (`run_sigma`): a shared machine's speed moves over tens of seconds (other
  tenants, memory bandwidth, clocks), and a process's memory with how it started. Every
  repetition of a run shares that run's level, so more repetitions do not average it out, and
  one run per side cannot measure it. It is a prior (txsuite/verdict/run_noise.py, `--run-noise`),
  combined with what a baseline of several runs measures (`txsuite baseline RUN RUN ...`) the
  way limma's moderated t combines a prior variance with a gene's own (Smyth 2004). The prior
  counts as PRIOR_DF degrees of freedom: it was measured on other machines, and a baseline of
  several runs of the user's should be able to move it.

The difference of the two sides' mean log values then has variance

    rep_sigma^2 (1/n_run + 1/n_base) + run_sigma^2 (1 + 1/runs_base)

(n: repetitions; runs_base: the baseline's runs), tested with Student's t and the degrees of
freedom of the two parts combined by Welch-Satterthwaite. docs/guard.md has the runs that
showed a single-level model wrong and measured the priors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from txsuite.verdict.comparison import Comparison
from txsuite.verdict.run_noise import PRIOR_SOURCE
from txsuite.verdict.stats import pooled_log_sd
from txsuite.verdict.words import UNTESTED

PRIOR_DF = 19  # the weight of the prior, in degrees of freedom (see above)


@dataclass(frozen=True)
class RunNoise:
    """The two parts of the noise of one metric's repetition statistics (sd of their logs)."""
    rep_sigma: float | None       # repetitions within a run, measured; None: no cell had two
    rep_df: int                   # degrees of freedom of rep_sigma
    run_sigma: float = 0.0        # whole runs: the value used (0: the metric does not move with the machine)
    run_prior: float = 0.0        # `--run-noise`
    prior_df: int = PRIOR_DF
    run_measured: float | None = None  # measured across the baseline's runs; None: one run
    run_df: int = 0               # degrees of freedom of run_measured
    base_runs: int = 1            # runs the baseline holds

    @classmethod
    def measured_only(cls, groups: list[Sequence[float]]) -> "RunNoise":
        """Repetition noise alone, from groups of per-repetition values (memory, loss)."""
        sd, df = pooled_log_sd(groups)
        return cls(rep_sigma=sd, rep_df=df)

    @classmethod
    def two_level(cls, groups: list[Sequence[float]], run_prior: float,
                 base_runs: list[list[list[float]]] | None = None, prior_df: int = PRIOR_DF) -> "RunNoise":
        """groups: per (cell, side) the per-repetition statistics. base_runs: per cell, the
        baseline's repetition statistics grouped by run (measures the run part when a cell has
        two runs or more)."""
        rep_sd, rep_df = pooled_log_sd(groups)
        measured, run_df, runs = run_level_sd(base_runs or [], rep_sd)
        var = (prior_df * run_prior ** 2 + run_df * (measured or 0.0) ** 2) / (prior_df + run_df) \
            if prior_df + run_df else 0.0
        return cls(rep_sigma=rep_sd, rep_df=rep_df, run_sigma=math.sqrt(var), run_prior=run_prior,
                   prior_df=prior_df, run_measured=measured, run_df=run_df, base_runs=max(runs, 1))

    def se(self, n_run: int, n_base: int) -> float:
        """Standard error of mean(log run) - mean(log base)."""
        return math.sqrt(self._rep_var(n_run, n_base) + self._run_var())

    def test_df(self, n_run: int, n_base: int) -> float:
        """Welch-Satterthwaite degrees of freedom of the two parts together (inf: known)."""
        a, b = self._rep_var(n_run, n_base), self._run_var()
        da = self.rep_df if self.rep_df else math.inf
        db = (self.prior_df + self.run_df) if self.prior_df + self.run_df else math.inf
        den = (a * a / da if a else 0.0) + (b * b / db if b else 0.0)
        return (a + b) ** 2 / den if den > 0 else math.inf

    def compare(self, run: Sequence[float], base: Sequence[float], higher_is_better: bool, level: float = 0.95,
                resolution: float = 0.0) -> Comparison:
        """One cell's repetitions in a run against its repetitions in a baseline run: the ratio
        of their geometric means, its interval with both noises, and the verdict (run than base).
        UNTESTED when the repetitions' noise is unknown (one repetition per cell)."""
        mean = float(np.mean(np.log(run)) - np.mean(np.log(base)))
        if self.rep_sigma is None:
            return Comparison(UNTESTED, math.exp(mean), samples=min(len(run), len(base)))
        return Comparison.of_log_ratio(mean, self.se(len(run), len(base)), self.test_df(len(run), len(base)), level,
                                       higher_is_better, resolution, samples=min(len(run), len(base)), pooled=True)

    def run_share(self, n_run: int, n_base: int) -> float:
        """The share of the difference's variance that is the run part (more repetitions do not
        shrink it)."""
        total = self._rep_var(n_run, n_base) + self._run_var()
        return self._run_var() / total if total > 0 else 0.0

    def _rep_var(self, n_run: int, n_base: int) -> float:
        return (self.rep_sigma or 0.0) ** 2 * (1.0 / n_run + 1.0 / n_base)

    def _run_var(self) -> float:
        return self.run_sigma ** 2 * (1.0 + 1.0 / self.base_runs)

    def describe_run_part(self) -> str:
        """Where the run-level figure comes from, in words."""
        if self.run_measured is None:
            return f"{PRIOR_SOURCE}; a baseline of several runs measures this machine's"
        return (f"measured {self.run_measured:.1%} over the baseline's {self.base_runs} runs, combined with "
                f"{PRIOR_SOURCE} at {self.run_prior:.1%}")

    def describe(self) -> str:
        if self.rep_sigma is None:
            return "unknown (one repetition per cell)"
        rep = f"repetitions within a run {self.rep_sigma:.1%} (measured, {self.rep_df} degrees of freedom)"
        if not self.run_sigma:
            return rep
        if self.run_measured is None:
            run = (f"whole runs {self.run_sigma:.1%} (not measurable from one baseline run: `--run-noise`; "
                   f"a baseline of several runs measures this machine's)")
        else:
            run = (f"whole runs measured {self.run_measured:.1%} over the baseline's {self.base_runs} runs "
                   f"({self.run_df} degrees of freedom), combined with `--run-noise` {self.run_prior:.1%}: "
                   f"{self.run_sigma:.1%} used")
        return f"{rep}; {run}"


def run_level_sd(cells: list[list[list[float]]], rep_sd: float | None) -> tuple[float | None, int, int]:
    """The run part measured from cells whose repetitions come from several runs: per cell the
    spread of its runs' mean log values, less what the repetitions' own noise explains (method
    of moments, never below 0), pooled over cells. -> (sd or None, degrees of freedom, most runs
    of a cell)."""
    ss, df, most = 0.0, 0, 0
    for runs in cells:
        runs = [r for r in runs if r]
        most = max(most, len(runs))
        if len(runs) < 2:
            continue
        means = np.array([np.mean(np.log(r)) for r in runs])
        n_mean = float(np.mean([len(r) for r in runs]))
        between = float(means.var(ddof=1)) - (rep_sd or 0.0) ** 2 / n_mean
        ss += max(between, 0.0) * (len(runs) - 1)
        df += len(runs) - 1
    return (math.sqrt(ss / df), df, most) if df else (None, 0, most)
