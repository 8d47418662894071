"""Would a robust statistic of a repetition's step times make the report's speed verdicts quieter
than its tokens/s brought to the machine's best state? Judged on real records, not simulated.

    python bench/step_statistics.py /tmp/verdicts --rounds 2 --first 6   # report_verdicts.py's runs
    python bench/step_statistics.py --spread RUN_DIR [RUN_DIR ...]        # any run's repetitions

The first form reads the runs `bench/report_verdicts.py` measured (four cells doing the same
work, one thread, full and half activation checkpointing), keeps each run's first `--rounds`
rounds (a run with `repeats: K`) from its `--first`-th run on, and judges each through the verdict
engine's `RoundNoise` with every statistic below: false calls between the equal cells, and how
often each differing cell is called slower than the reference. The second prints, per statistic,
the spread of a run's repetitions once each round's shared effect is removed (the residual sd of
cell + round on log values), which is what the verdicts' intervals scale with.

Statistics of one repetition: its tokens/s as recorded (`raw`); times its machine-state factor,
repetitions in a slow state left out (`state`: what the report uses); tokens per step over the
median, lower-quartile, tenth-percentile and fastest step time.
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report_verdicts import kind_of  # noqa: E402
from bench.state_statistics import residual_sd  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402
from txsuite.verdict.rounds import RoundNoise  # noqa: E402
from txsuite.verdict.state import slowdown, state_factor  # noqa: E402
from txsuite.verdict.words import WORSE  # noqa: E402

SLOW_STATE = 2.0  # the report leaves out a repetition whose slower probe ran over 2x its best


def _quantile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[int(q * (len(ordered) - 1))]


def _state(m: dict) -> float | None:
    probes = m.get("probe_before_s"), m.get("probe_after_s"), m.get("probe_best_s")
    if (slowdown(*probes) or 1.0) > SLOW_STATE:
        return None
    return m["tokens_per_s"] * (state_factor(*probes) or 1.0)


STATISTICS = {
    "raw": lambda m: m["tokens_per_s"],
    "state": _state,
    "median step": lambda m: m["tokens_per_step"] / statistics.median(m["step_times_s"]),
    "p25 step": lambda m: m["tokens_per_step"] / _quantile(m["step_times_s"], 0.25),
    "p10 step": lambda m: m["tokens_per_step"] / _quantile(m["step_times_s"], 0.10),
    "fastest step": lambda m: m["tokens_per_step"] / min(m["step_times_s"]),
}


def verdict_counts(root: Path, rounds: int, first: int) -> None:
    runs = sorted(p for p in (root / "results" / "verdicts").iterdir() if (p / "records.jsonl").exists())[first:]
    print(f"{len(runs)} runs of {root}, first {rounds} rounds each")
    for name, statistic in STATISTICS.items():
        false_calls = pairs = 0
        slower = {"1 thread": 0, "checkpointing": 0, "half checkpointing": 0}
        for run in runs:
            values: dict[str, dict[int, float]] = {}
            for r in RunFolder(run).records():
                value = statistic(r.metrics) if r.status == "ok" and r.repeat < rounds else None
                if value:
                    kind = kind_of(r.config)
                    values.setdefault(r.cell_id if kind == "equal" else kind, {})[r.repeat] = value
            noise = RoundNoise.fit(values)
            equal = sorted(k for k in values if k not in slower)
            for a, b in itertools.combinations(equal, 2):
                pairs += 1
                false_calls += noise.compare(a, b, True).verdict not in ("within noise", "untested")
            for kind in slower:
                slower[kind] += kind in values and noise.compare(kind, equal[0], True).verdict == WORSE
        power = ", ".join(f"{kind} slower {n}/{len(runs)}" for kind, n in slower.items())
        print(f"  {name:13s} equal pairs called {false_calls}/{pairs}; {power}")


def spreads(run_dirs: list[Path]) -> None:
    for run in run_dirs:
        records = [r for r in RunFolder(run).records() if r.status == "ok"]
        cells = sorted({r.cell_id for r in records})
        print(run)
        for name, statistic in STATISTICS.items():
            logs = np.full((len(cells), 1 + max(r.repeat for r in records)), np.nan)
            for r in records:
                value = statistic(r.metrics)
                if value:
                    logs[cells.index(r.cell_id), r.repeat] = math.log(value)
            spread = residual_sd(logs)  # over the rounds every cell completed
            if spread is None:
                print(f"  {name:13s} too few cells or rounds")
                continue
            sd, kept_cells, kept_rounds = spread
            print(f"  {name:13s} residual sd {sd:4.1f} % ({kept_cells} cells x {kept_rounds} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", type=Path, help="bench/report_verdicts.py's --out")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--first", type=int, default=0, help="skip the runs before this one")
    parser.add_argument("--spread", nargs="+", type=Path, default=[], help="run folders")
    args = parser.parse_args()
    if args.spread:
        spreads(args.spread)
    if args.root:
        verdict_counts(args.root, args.rounds, args.first)


if __name__ == "__main__":
    main()
