"""Other ways to make one repetition's throughput at the machine's best state from its steps,
read again from its record (its step times and the probes between them, `probe_during_s` and
`probe_during_at`), so that bench/report_verdicts.py can judge the same runs with each:

    python bench/report_verdicts.py --out DIR --analyse-only --rounds 2 --state-statistic NAME

Each statistic gives the repetition's steps per second at the best state; `apply` writes it back
as the record's `probe_steps_s` (the probe time its median step is taken to have run at), so the
engine's own state adjustment (txsuite/verdict/state.py) turns the record's tokens/s into it and
every verdict downstream is the engine's. A record without the probes between its steps (one
written before they were kept) is left as it is.

A step j of a repetition ran between two probes; `stretch` is their geometric mean over the
host's best probe (>= 1 but for noise): how much slower than its best the host was around it.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from txsuite.measure.probe import MachineState


def steps_and_states(metrics: Mapping) -> tuple[np.ndarray, np.ndarray] | None:
    """(each measured step's seconds, its stretch's slowdown), or None where the record lacks them."""
    times, best = metrics.get("step_times_s"), metrics.get("probe_best_s")
    if not times or not best or metrics.get("probe_during_s") is None or min(times) <= 0:
        return None
    machine = MachineState(before_s=metrics.get("probe_before_s"), after_s=metrics.get("probe_after_s"),
                           during_s=list(metrics["probe_during_s"]), during_at=list(metrics.get("probe_during_at") or []))
    stretches = machine.step_probes_s(len(times))
    if stretches is None:
        return None
    return np.asarray(times, dtype=float), np.asarray(stretches) / best


def each_state_median(t: np.ndarray, s: np.ndarray) -> float:
    """The engine's own: the median of every step's rate times its stretch's slowdown."""
    return float(np.median(s / t))


def each_state_upper(t: np.ndarray, s: np.ndarray) -> float:
    """The upper quartile of the steps' rates, each brought to the best state."""
    return float(np.quantile(s / t, 0.75))


def raw_upper(t: np.ndarray, s: np.ndarray) -> float:
    """The upper quartile of the raw rates (no probe): the repetition's faster steps."""
    return float(np.quantile(1 / t, 0.75))


def fastest_stretches(t: np.ndarray, s: np.ndarray, within: float = 0.05) -> float:
    """The steps that ran in the repetition's fastest stretches (slowdown within `within` of its
    lowest), their median rate brought to the best state by their own stretches."""
    keep = s <= s.min() * (1 + within)
    return float(np.median(s[keep] / t[keep]))


def best_state_share(t: np.ndarray, s: np.ndarray, near: float = 1.10) -> float:
    """The steps whose stretch was within `near` of the host's best, their median rate as measured
    (no adjustment), where a quarter of the steps or more were; else the engine's statistic."""
    keep = s <= near
    if keep.sum() * 4 < len(t):
        return each_state_median(t, s)
    return float(np.median(1 / t[keep]))


def half_state(t: np.ndarray, s: np.ndarray) -> float:
    """As the engine's, each step's slowdown taken to the power 1/2 (a step paying half what the
    probe pays in a slow state)."""
    return float(np.median(np.sqrt(s) / t))


STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "each-state-median": each_state_median,
    "each-state-upper": each_state_upper,
    "raw-upper": raw_upper,
    "fastest-stretches": fastest_stretches,
    "best-state-share": best_state_share,
    "half-state": half_state,
}


def apply(metrics: dict, name: str) -> None:
    """Set `probe_steps_s` so that the engine's adjustment gives statistic `name`'s rate."""
    read = steps_and_states(metrics)
    if read is None:
        return
    t, s = read
    rate = STATISTICS[name](t, s)  # steps per second at the best state
    metrics["probe_steps_s"] = metrics["probe_best_s"] * rate / statistics.median((1 / t).tolist())


def residual_sd(logs: np.ndarray) -> tuple[float, int, int] | None:
    """logs [cells, rounds], NaN where a cell lacks a round: the sd (in %) of a value once the
    cells' and the rounds' effects are taken out, over the rounds every cell completed, with the
    cells and rounds it used; None below two of either."""
    logs = logs[:, ~np.isnan(logs).any(axis=0)]
    cells, rounds = logs.shape
    if cells < 2 or rounds < 2:
        return None
    centred = logs - logs.mean(axis=1, keepdims=True) - logs.mean(axis=0, keepdims=True) + logs.mean()
    return 100 * math.sqrt(float((centred ** 2).sum()) / ((cells - 1) * (rounds - 1))), cells, rounds


def spreads(root: Path, rounds: int | None) -> None:
    """Per statistic, the sd of a repetition's log rate once cells and rounds are taken out (the
    runs' two-thread cells, the rounds they all completed), median and range over the runs."""
    from bench.report_verdicts import kind_of
    from txsuite.results import RunFolder
    runs = sorted(p for p in (root / "results" / "verdicts").iterdir() if (p / "records.jsonl").exists())
    for name in STATISTICS:
        sds = []
        for run in runs:
            rows = {}
            for r in RunFolder(run).records():
                if r.status != "ok" or kind_of(r.config) == "1 thread" or (rounds and r.repeat >= rounds):
                    continue
                read = steps_and_states(r.metrics)
                if read is not None:
                    rows[(r.cell_id, r.repeat)] = math.log(STATISTICS[name](*read))
            cells = sorted({c for c, _ in rows})
            repeats = sorted({k for _, k in rows})
            spread = residual_sd(np.array([[rows.get((c, k), np.nan) for k in repeats] for c in cells]))
            if spread is not None:
                sds.append(spread[0])
        if sds:
            print(f"{name:20s} residual sd median {statistics.median(sds):4.1f} % "
                  f"({min(sds):.1f}-{max(sds):.1f} %, {len(sds)} runs)")


if __name__ == "__main__":
    import argparse
    import sys
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="bench/report_verdicts.py's --out")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    spreads(args.root, args.rounds)
