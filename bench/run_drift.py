"""How much a whole run moves from run to run on this machine, and what the stored-baseline
guard says of unchanged code measured twice.

    python bench/run_drift.py --runs 20 --out /tmp/drift [--load]     # measure, then analyse
    python bench/run_drift.py --out /tmp/drift --analyse-only           # analyse runs already there

Runs the guard test's matrix (tests/test_guard_cli.py: small model, 2 layers, 3 repetitions of
25 steps) `--runs` times in a row, each a `txsuite run` of its own, then prints:
- per run: each repetition's median tokens/s and its slower machine-state probe (those the
  guard keeps: measured while the machine was not in a slow state);
- the noise in two parts as the guard models it (suite.guard.noise): within a run, and of a
  whole run's level (the sd of run means beyond what the repetitions explain), the range of
  consecutive-run ratios, and how the run level follows the probe;
- the guard's verdict on every consecutive pair (the later run against the earlier as its
  baseline) with the default `--run-noise`, and with the run part left out (`--run-noise 0`,
  the single-level model the guard used before).

`--load`: another process keeps both cores busy 40 s of every 100 s (bench/ab_evidence.py).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ab_evidence import neighbour  # noqa: E402
from suite.guard import compare, load_side  # noqa: E402
from suite.guard.noise import RUN_NOISE, run_level_sd  # noqa: E402
from suite.guard.state import best_probe, split_by_state  # noqa: E402
from suite.guard.stats import pooled_log_sd  # noqa: E402

MATRIX = """\
name: drift
fixed:
  model: {preset: small, n_layer: 2}
  data: {dataset: markov, seq_len: 128, symbols: 16}
  train: {steps: 25, warmup_steps: 3, micro_batch: 4}
repeats: 3
guard: {tokens_per_s: -5%}
"""


def measure(out: Path, runs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.yaml").write_text(MATRIX)
    for i in range(runs):
        run_id = f"run{i + 1:02d}"
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "suite.cli", "run", "drift.yaml", "--run-id", run_id,
                               "--no-report"], cwd=out, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        print(f"{run_id}: exit {proc.returncode} in {time.time() - started:.0f} s", flush=True)


def repetition_medians(side, best: float) -> tuple[list[float], list[float]]:
    """Per repetition the guard keeps (the machine not in a slow state: suite.guard.state),
    median tokens/s and the slower probe, in ms."""
    (cell,) = side.cells.values()
    kept = split_by_state(cell.repeats, best).kept
    tps = [statistics.median(r.tokens_per_step / t for t in r.step_times_s) for r in kept]
    probes = [r.probe_s * 1000 for r in kept]
    return tps, probes


def analyse(out: Path) -> None:
    folders = sorted(p for p in (out / "results" / "drift").iterdir() if (p / "records.jsonl").exists())
    sides = [load_side(p) for p in folders]
    best = best_probe([r for side in sides for cell in side.cells.values() for r in cell.repeats])
    runs, probes = [], []
    for folder, side in zip(folders, sides):
        tps, pr = repetition_medians(side, best)
        print(f"{folder.name}  tokens/s {' '.join(f'{t:7,.0f}' for t in tps)}   probe ms "
              f"{' '.join(f'{p:5.1f}' for p in pr)}{'' if len(tps) == 3 else f'   ({3 - len(tps)} in a slow state)'}")
        if tps:
            runs.append(tps)
            probes.append(statistics.mean(pr))
    within, df = pooled_log_sd(runs)
    level, level_df, _ = run_level_sd([runs], within)
    means = [float(np.mean(np.log(r))) for r in runs]
    consecutive = [math.exp(b - a) for a, b in zip(means, means[1:])]
    print(f"\n{len(runs)} runs with a repetition in a good state: within a run {within:.1%} ({df} degrees of freedom); sd of run means "
          f"{statistics.stdev(means):.1%}; whole-run level {level:.1%} ({level_df} degrees of freedom)")
    print(f"consecutive runs: ratios {min(consecutive):.3f}-{max(consecutive):.3f}; "
          f"corr(run level, mean probe) = {np.corrcoef(means, probes)[0, 1]:+.2f}")
    for label, run_noise in ((f"--run-noise {RUN_NOISE:.0%} (default)", RUN_NOISE), ("--run-noise 0", 0.0)):
        verdicts = Counter(compare(later, earlier, run_noise=run_noise).verdict
                           for earlier, later in zip(sides, sides[1:]))
        print(f"guard, unchanged code, {len(sides) - 1} consecutive pairs, {label}: "
              + ", ".join(f"{v} {verdicts.get(v, 0)}" for v in ("PASS", "FAIL", "INCONCLUSIVE")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    parser.add_argument("--analyse-only", action="store_true", help="analyse the runs already in --out")
    args = parser.parse_args()
    if not args.analyse_only:
        load = None
        if args.load:
            load = multiprocessing.Process(target=neighbour, args=(time.time() + 24 * 3600,), daemon=True)
            load.start()
        try:
            measure(args.out, args.runs)
        finally:
            if load is not None:
                load.terminate()
    analyse(args.out)


if __name__ == "__main__":
    main()
