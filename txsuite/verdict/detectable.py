"""Whether a run's rounds so far can detect a given gap against its reference cell, and so
whether the runner should measure another round (`repeats: {min: 2, max: 4, detect: 15%}`).

After each round from the first `min`, every cell's comparison with the reference is asked: how
small a gap would its interval separate with the asked power? For a comparison with standard
error se and d degrees of freedom, a true log ratio g is separated at `level` with power p when

    g >= (t[d, level] + z[p]) * se

(the interval's half-width, plus how far the estimate may fall short of g in all but 1 - p of
runs). If that smallest detectable gap is larger than the asked gap for any cell, the rounds so far
cannot tell such a gap from noise there: one more round. A cell with fewer than two rounds in
common with the reference (its repetitions failed or sat in a slow state of the machine) cannot
be judged at all, and asks for another round too.

The decision reads only the noise (the standard errors and their degrees of freedom), never the
ratios themselves: a run does not go on because a difference is "nearly" separated, which
would call differences where there are none more often than the level says (optional
stopping). Sizing the rest of a study by its first stage's variance is Stein's two-stage
design (1945). Stein judges with the first stage's variance alone; here every round's is used,
so a run that stops because its noise happened to look small keeps that estimate, and equal
cells are called apart a little more often than with a fixed count (docs/verdicts.md measures
it on real runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from txsuite.verdict.distributions import t_isf, t_quantile
from txsuite.verdict.rounds import RoundNoise

POWER = 0.9  # how often a gap of exactly the asked size should be separated


@dataclass(frozen=True)
class Detectability:
    """What the rounds so far can detect against the reference."""
    rounds: int                  # the rounds measured (those any cell has a value in)
    enough: bool                 # every cell's comparison detects the asked gap
    worst_cell: str | None       # the cell whose comparison detects least (None: none compared)
    detectable: float            # the smallest ratio that cell's comparison detects, e.g. 1.21 (inf: none)
    reference: str | None = None

    def describe(self, gap: float, names: Mapping[str, str] | None = None) -> str:
        """In words; `names`: cell id -> the label to call it by."""
        if self.worst_cell is None:
            return "no cell to compare with the reference"
        cell = (names or {}).get(self.worst_cell) or f"cell {self.worst_cell}"
        if math.isinf(self.detectable) and self.worst_cell == self.reference:
            return (f"the reference ({cell}) has fewer than two repetitions to judge (one failed or was measured "
                    f"in a slow state of the machine); {gap:.0%} asked")
        if math.isinf(self.detectable):
            return (f"{cell} has fewer than two rounds in common with the reference (a repetition failed or was "
                    f"measured in a slow state of the machine); {gap:.0%} asked")
        what = "detect" if self.enough else "detect only"
        return f"{self.rounds} rounds {what} a gap of {self.detectable - 1:.0%} or more ({cell}); {gap:.0%} asked"


def smallest_detectable_log_gap(se: float, df: float, level: float = 0.95, power: float = POWER) -> float:
    """The smallest |log ratio| a comparison with this standard error and degrees of freedom
    separates at `level` in a share `power` of runs (inf when it cannot be judged)."""
    if not df or not math.isfinite(se):
        return math.inf
    return (t_quantile(df, level) + t_isf(1.0 - power, math.inf)) * se


def detectability(values: Mapping[str, Mapping[int, float]], reference: str, gap: float,
                  level: float = 0.95, power: float = POWER) -> Detectability:
    """values: cell -> round -> the metric's value (time metrics brought to the machine's best
    state, slow states left out, as the report judges them); `gap`: the relative difference to
    detect, 0.15 for cells 15 % apart. Cells without any value (failed, skipped) are not asked:
    more rounds would not give them one."""
    noise = RoundNoise.fit(values)
    rounds = len({r for by in values.values() for r in by})
    others = [c for c, by in values.items() if by and c != reference]
    if not values.get(reference) or not others:
        return Detectability(rounds, True, None, math.inf, reference)
    if len(values[reference]) < 2:  # no cell can be paired over two rounds with it
        return Detectability(rounds, False, reference, math.inf, reference)
    worst, worst_gap = None, -1.0
    for cell in others:
        se, df, _ = noise.standard_error(cell, reference)
        log_gap = smallest_detectable_log_gap(se, df, level, power)
        if log_gap > worst_gap:
            worst, worst_gap = cell, log_gap
    enough = worst_gap <= math.log1p(gap)
    return Detectability(rounds, enough, worst, math.exp(worst_gap), reference)
