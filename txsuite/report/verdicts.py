"""The run report's questions between two of its cells, put to the verdict engine
(txsuite/verdict/rounds.py): the leader cards, the noise-aware Pareto front, the coloured ratios
and the compression table's speed-ups all ask `RunVerdicts.compare`, so one test with the run's
pooled noise stands behind every one of them.

Time metrics are judged as the machine at its best would have given them (txsuite/verdict/
state.py): each repetition brought to the best state by its probe, and a repetition measured
in a slow state left out. The table and charts show the values as measured, but for the ratios
against the reference, which are the comparison's own (report/frame.py), so that a ratio and its
colour say the same.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from txsuite.config.metrics import BY_NAME
from txsuite.report import formatting as fmt
from txsuite.verdict import RoundNoise, in_words, state
from txsuite.verdict.comparison import Comparison


def by_round(repeats: pd.DataFrame, metric: str) -> state.StateAdjusted:
    """Ok repetitions with a positive value, cell id -> repetition index -> value; time metrics
    state-adjusted, a slow state left out (module text)."""
    if repeats.empty or metric not in repeats:
        return state.StateAdjusted({}, 0)
    probes = [c for c in state.PROBES if c in repeats] if metric in state.POWER else []
    ok = repeats[repeats["status"] == "ok"]
    # columns as Python lists, zipped row by row: a DataFrame's rows one by one cost seconds at 20,000
    columns = [ok[c].tolist() for c in ("cell_id", "repeat", metric, *probes)]
    rows = ((str(cell_id), int(repeat), float(value), dict(zip(probes, measured_probes)))
            for cell_id, repeat, value, *measured_probes in zip(*columns) if fmt.is_number(value) and value > 0)
    return state.adjusted(rows, metric)


class RunVerdicts:
    """Every comparison between two cells of one run, the noise of each metric fitted once."""

    def __init__(self, repeats: pd.DataFrame):
        self.repeats = repeats
        self._noise: dict[str, RoundNoise] = {}
        self.slow: dict[str, int] = {}  # metric -> repetitions left out for a slow machine state

    def noise(self, metric: str) -> RoundNoise:
        if metric not in self._noise:
            table = by_round(self.repeats, metric)
            self.slow[metric] = table.slow
            self._noise[metric] = RoundNoise.fit(table.values)
        return self._noise[metric]

    def compare(self, a: str, b: str, metric: str, level: float = 0.95) -> Comparison:
        """Cell a against cell b on `metric`, in the metric's direction and at its resolution
        (a metric outside the registry, such as decode tokens/s: higher is better, no resolution)."""
        spec = BY_NAME.get(metric)
        higher = True if spec is None else bool(spec.higher_is_better)
        return self.noise(metric).compare(str(a), str(b), higher, level, spec.resolution if spec else 0.0)

    def verdicts(self, a: list[str], b: list[str], metric: str, level: "float | np.ndarray" = 0.95) -> list[str]:
        """verdict(a[i], b[i], metric, level[i] or level) for every i, computed together (a run
        of thousands of cells asks millions: RoundNoise.verdicts)."""
        spec = BY_NAME.get(metric)
        higher = True if spec is None else bool(spec.higher_is_better)
        return self.noise(metric).verdicts(a, b, higher, level, spec.resolution if spec else 0.0)

    def verdict(self, a: str, b: str, metric: str, level: float = 0.95) -> str:
        """BETTER, WORSE, WITHIN_NOISE or UNTESTED."""
        return self.compare(a, b, metric, level).verdict

    def worded(self, a: str, b: str, metric: str) -> str:
        """The verdict in the metric's words: faster, lighter, within noise, untested ..."""
        return in_words(self.verdict(a, b, metric), metric)

    def worded_many(self, a: list[str], b: list[str], metric: str) -> list[str]:
        """worded(a[i], b[i], metric) for every i, computed together."""
        return [in_words(v, metric) for v in self.verdicts(a, b, metric)]
