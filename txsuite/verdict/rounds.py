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
than the rest keeps mostly its own, and with it a wide interval. No cell's variance goes below
the noise the cells share (the pooled variance of every cell not much noisier than the rest, by
an F test): with two rounds a cell's own variance has one degree of
freedom and can come out near zero by chance, most often for memory, whose resident set moves
in steps of the heap's layout and lands on the same value twice (docs/verdicts.md, "A cell is
never quieter than its run").

The verdict: the interval of the mean log ratio over the rounds both cells completed, at the
asked level, on one side of 0 and beyond the metric's resolution (txsuite/config/metrics.py):
better or worse; otherwise within noise. Fewer than two common rounds: untested, never guessed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from txsuite.verdict.comparison import Comparison
from txsuite.verdict.moderated import Prior, fit_prior, moderate
from txsuite.verdict.distributions import f_quantile, t_quantiles
from txsuite.verdict.stats import median_stat
from txsuite.verdict.words import BETTER, UNTESTED, WITHIN_NOISE, WORSE

# How near a threshold, relative to the magnitudes in play, a bulk verdict is left to compare():
# far beyond the rounding by which arrays may differ from one pair's arithmetic (about 1e-16).
BOUNDARY = 1e-9
CHUNK = 200_000  # pairs RoundNoise.verdicts computes at once (a few arrays of [pairs, rounds] each)


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
        self._table: tuple | None = None  # _arrays(), made on first use

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
        effects = _medians_of_others(centred)
        for c, by in centred.items():
            effect = effects[c]
            mean_effect = float(np.mean(list(effect.values())))
            residuals = np.array([v - (effect[r] - mean_effect) for r, v in by.items()])
            raw[c] = CellNoise(float((residuals ** 2).sum()) / (len(by) - 1), len(by) - 1.0)
        rounds = {r for by in centred.values() for r in by}
        most = sum(n.df for n in raw.values()) - (len(rounds) - 1)  # the round effects cost rounds - 1
        prior = fit_prior([n.variance for n in raw.values()], [n.df for n in raw.values()])
        if math.isinf(prior.df):  # alike: the pooled variance of the whole table
            prior = Prior(_pooled(raw.values()), math.inf)
        floor = _shared_variance(raw)
        cells = {}
        for c, n in raw.items():
            variance, df = moderate(n.variance, n.df, prior, max(most, n.df))
            # never quieter than the noise the run's cells share: one or two degrees of freedom can
            # put a cell's own variance near zero by chance (two repetitions' resident sets landing
            # on the same pages), and the machine's noise is every cell's
            cells[c] = CellNoise(max(variance, floor), df)
        return cls(logs, cells, prior)

    def compare(self, a: str, b: str, higher_is_better: bool, level: float = 0.95,
                resolution: float = 0.0) -> Comparison:
        """Is cell a better or worse than cell b beyond noise, at `level`, by at least
        `resolution` (relative)?"""
        d = _differences(self.logs.get(a, {}), self.logs.get(b, {}))
        n = len(d)
        if n < 2:
            return Comparison(UNTESTED, ratio=math.exp(d[0]) if n else None, samples=n)
        se, df, pooled = self.standard_error(a, b, d)
        return Comparison.of_log_ratio(float(d.mean()), se, df, level, higher_is_better,
                                       resolution, samples=n, pooled=pooled)

    def standard_error(self, a: str, b: str, d: "np.ndarray | None" = None) -> tuple[float, float, bool]:
        """(the standard error of the mean log ratio of a to b, its degrees of freedom, whether the
        noise is the run's) over the rounds both completed: what compare() judges with, and what
        a planner may read without looking at the ratio itself (txsuite.verdict.detectable).
        `d`: those rounds' log differences, when the caller has them. Fewer than two rounds: an
        infinite error with 0 degrees of freedom."""
        if d is None:
            d = _differences(self.logs.get(a, {}), self.logs.get(b, {}))
        n = len(d)
        if n < 2:
            return math.inf, 0.0, False
        if a in self.cells and b in self.cells:
            na, nb = self.cells[a], self.cells[b]
            # both variances lean on the same prior, so their sum is worth no more degrees of
            # freedom than the better-informed of the two (Welch would count the prior twice)
            return math.sqrt((na.variance + nb.variance) / n), min(_welch_df(na, nb), max(na.df, nb.df)), True
        return math.sqrt(float(d.var(ddof=1)) / n), n - 1.0, False

    def verdicts(self, a: Sequence[str], b: Sequence[str], higher_is_better: bool,
                 level: "float | np.ndarray" = 0.95, resolution: float = 0.0) -> list[str]:
        """compare(a[i], b[i], ..., level[i] or level, ...).verdict for every i, computed together
        in arrays (in slices of CHUNK pairs): a report asks this of every pair on the Pareto
        front, millions in a run of thousands of cells. A pair whose decision lies within
        BOUNDARY of a threshold (where the arrays' rounding could differ from compare's) is
        decided by compare itself, so every verdict is compare's."""
        if len(a) != len(b):
            raise ValueError(f"verdicts: {len(a)} cells against {len(b)}")
        row = self._arrays()[0].__getitem__  # a cell without values: the all-NaN row
        rows_a = np.fromiter(map(row, a), dtype=int, count=len(a))
        rows_b = np.fromiter(map(row, b), dtype=int, count=len(b))
        levels = np.broadcast_to(np.asarray(level, dtype=float), rows_a.shape)
        out: list[str] = []
        for start in range(0, len(rows_a), CHUNK):
            part = slice(start, start + CHUNK)
            out += self._verdicts_of_rows(rows_a[part], rows_b[part], levels[part], higher_is_better, resolution)
        return out

    def _verdicts_of_rows(self, ia: np.ndarray, ib: np.ndarray, level: np.ndarray, higher_is_better: bool,
                          resolution: float) -> list[str]:
        """verdicts() on the rows of _arrays(): compare's arithmetic, pair by pair in arrays."""
        rows, logs, variances, dfs = self._arrays()
        d = logs[ia] - logs[ib]  # [pairs, rounds], NaN where either cell lacks the round
        present = ~np.isnan(d)
        n = present.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(present, d, 0.0).sum(axis=1) / n
            own_variance = np.where(present, (d - mean[:, None]) ** 2, 0.0).sum(axis=1) / (n - 1)
            va, vb, da, db = variances[ia], variances[ib], dfs[ia], dfs[ib]
            pooled = ~np.isnan(va) & ~np.isnan(vb)
            den = np.where(da > 0, va ** 2 / da, 0.0) + np.where(db > 0, vb ** 2 / db, 0.0)
            welch = np.where(den > 0, (va + vb) ** 2 / den, np.inf)
            variance = np.where(pooled, va + vb, own_variance)
            df = np.where(pooled, np.minimum(welch, np.maximum(da, db)), n - 1.0)
            se = np.sqrt(variance / n)
        tested = (n >= 2) & np.isfinite(se) & (df != 0)
        half = np.full(len(ia), np.nan)
        # A run's pairs share a few (df, level): each t quantile is computed once, the pairs
        # told apart as the complex numbers df + level i (a 1-D sort, exact in both parts).
        distinct, where = np.unique(df[tested] + 1j * level[tested], return_inverse=True)
        half[tested] = t_quantiles(distinct.real, distinct.imag)[where.reshape(-1)] * se[tested]
        signed = mean if higher_is_better else -mean  # > 0: a is better
        floor = math.log1p(resolution)
        out = np.full(len(ia), WITHIN_NOISE, dtype=object)
        out[(signed - half > 0) & (signed >= floor)] = BETTER
        out[(signed + half < 0) & (-signed >= floor)] = WORSE
        out[~tested] = UNTESTED
        # Rounding can move the mean by a few ulps of the largest difference summed, and the
        # half-width by a few ulps of itself: a pair nearer a threshold than BOUNDARY of those goes
        # to compare. (Exactly equal values, as a memory that did not move, are exact either way.)
        largest = np.where(present, abs(d), 0.0).max(axis=1, initial=0.0)
        with np.errstate(invalid="ignore"):
            safe = ((abs(signed - half) >= BOUNDARY * (largest + abs(half)))
                    & (abs(signed + half) >= BOUNDARY * (largest + abs(half)))
                    & (abs(signed - floor) >= BOUNDARY * (largest + abs(floor)))
                    & (abs(signed + floor) >= BOUNDARY * (largest + abs(floor))))
        names = list(rows)
        for i in np.flatnonzero(tested & ~safe):  # both cells have values: both have rows
            out[i] = self.compare(names[ia[i]], names[ib[i]], higher_is_better, float(level[i]), resolution).verdict
        return out.tolist()

    def _arrays(self) -> tuple["_Rows", np.ndarray, np.ndarray, np.ndarray]:
        """(cell -> row, logs [cells + 1, rounds] with NaN where a cell lacks a round and a last
        all-NaN row, each cell's moderated variance and its df, NaN for a cell without), made once."""
        if self._table is None:
            rows = _Rows({c: i for i, c in enumerate(self.logs)})
            rounds = sorted({r for by in self.logs.values() for r in by})  # compare's order: by round
            column = {r: j for j, r in enumerate(rounds)}
            logs = np.full((len(rows) + 1, len(rounds)), np.nan)
            for c, by in self.logs.items():
                for r, v in by.items():
                    logs[rows[c], column[r]] = v
            variances = np.full(len(rows) + 1, np.nan)
            dfs = np.full(len(rows) + 1, np.nan)
            for c, noise in self.cells.items():
                if c in rows:
                    variances[rows[c]], dfs[rows[c]] = noise.variance, noise.df
            self._table = (rows, logs, variances, dfs)
        return self._table

    def describe(self) -> str:
        """How the noise was estimated, in words."""
        if not self.cells:
            return "each pair of cells on its own rounds (fewer than three cells with two repetitions)"
        if math.isinf(self.prior.df):
            df = next(iter(self.cells.values())).df
            return f"pooled over the run's cells x rounds: their noise is alike ({df:.0f} degrees of freedom)"
        return (f"each cell's own, moderated towards the run's ({self.prior.df:.1f} prior degrees of freedom: "
                f"the cells' noise differs)")


def _medians_of_others(centred: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """cell -> round -> the median of the *other* cells' values in that round (0.0 when no other
    cell has it): each round's values sorted once, and each cell's median read off the sorted
    values with its own left out, instead of a median over every other cell per cell (quadratic
    in cells: minutes for a report of thousands). Exactly np.median's value: the middle one, or
    the mean of the middle two."""
    members: dict[int, list[tuple[str, float]]] = {}
    for c, by in centred.items():
        for r, v in by.items():
            members.setdefault(r, []).append((c, v))
    out: dict[str, dict[int, float]] = {c: {} for c in centred}
    for r, pairs in members.items():
        values = np.array([v for _, v in pairs])
        order = np.argsort(values, kind="stable")
        ranked = values[order]
        own = np.empty(len(values), dtype=int)
        own[order] = np.arange(len(values))  # each cell's place in `ranked`
        others = len(values) - 1

        def at(i: int) -> np.ndarray:
            """The i-th smallest of the others, for every cell: ranked[i] below its own place, else ranked[i + 1]."""
            return np.where(i < own, ranked[i], ranked[min(i + 1, others)])
        if others == 0:
            medians = np.zeros(1)
        elif others % 2:
            medians = at(others // 2)
        else:
            medians = (at(others // 2 - 1) + at(others // 2)) / 2
        for (c, _), median in zip(pairs, medians.tolist()):
            out[c][r] = median
    return out


def step_pairs_log_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """One round's log(A / B) from its steps run in lockstep (`txsuite ab`): a[j] and b[j] ran
    back to back, the side going first alternating from pair to pair (ABBA at step level).

    Two consecutive pairs make a block in which each side went first once, so whatever going
    first or second does cancels in the block's mean log ratio; the round's value is the median
    of its blocks' (a slow spell that caught one step of a pair moves one block, not the median).
    The steps of one round share their processes and are not independent samples: this is the
    round's one value, and the interval is made over rounds. An odd last pair is left out (one
    pair alone is its own value)."""
    logs = np.log(np.asarray(a, dtype=float) / np.asarray(b, dtype=float))
    if logs.size == 0:
        raise ValueError("no step pairs")
    whole = logs.size // 2 * 2
    blocks = logs[:whole].reshape(-1, 2).mean(axis=1) if whole else logs
    return float(median_stat(blocks))


class _Rows(dict):
    """cell -> its row in RoundNoise._arrays(); a cell without values reads the last, all-NaN row."""

    def __missing__(self, cell: str) -> int:
        return len(self)


def _welch_df(a: CellNoise, b: CellNoise) -> float:
    """Welch-Satterthwaite degrees of freedom of the sum of two variances."""
    den = (a.variance ** 2 / a.df if a.df else 0.0) + (b.variance ** 2 / b.df if b.df else 0.0)
    return (a.variance + b.variance) ** 2 / den if den > 0 else math.inf


def _differences(a: Mapping[int, float], b: Mapping[int, float]) -> np.ndarray:
    """log a - log b over the rounds both have, in round order."""
    return np.array([a[r] - b[r] for r in sorted(set(a) & set(b))])


# A cell whose variance is beyond this quantile of F against the other cells' pooled variance is
# noisier than the rest: it keeps its own noise and adds none to the noise the cells share.
NOISIER_LEVEL = 0.99


def _pooled(cells) -> float:
    """The degrees-of-freedom-weighted mean of the cells' variances."""
    cells = list(cells)
    return float(np.average([n.variance for n in cells], weights=[n.df for n in cells]))


def _shared_variance(cells: dict[str, "CellNoise"]) -> float:
    """The pooled variance of every cell that is not much noisier than the others (each tested
    against the pooled variance of the rest at NOISIER_LEVEL): the least noise any cell of the
    run is taken to have. The rest's sums are the table's less the cell's own (one pass, not one
    per cell: a run can have thousands of cells)."""
    variance = np.array([n.variance for n in cells.values()])
    df = np.array([n.df for n in cells.values()])
    rest_df = df.sum() - df
    rest_pooled = ((variance * df).sum() - variance * df) / rest_df
    alike = variance <= rest_pooled * np.array([f_quantile(d, r, NOISIER_LEVEL) for d, r in zip(df, rest_df)])
    shared = [n for n, keep in zip(cells.values(), alike) if keep]
    return _pooled(shared or cells.values())


def _positive(v: object) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False
