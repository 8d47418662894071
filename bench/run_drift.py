"""How much a whole run moves from run to run on this machine, and what the stored-baseline
guard says of unchanged code measured twice.

    python bench/run_drift.py --runs 20 --out /tmp/drift [--load]     # measure, then analyse
    python bench/run_drift.py --out /tmp/drift --analyse-only           # analyse runs already there

Runs the guard test's matrix (tests/test_guard_cli.py: small model, 2 layers, 3 repetitions of
25 steps) `--runs` times in a row, each a `txsuite run` of its own, then prints:
- per run: each repetition's median tokens/s and its slower machine-state probe (those the
  guard keeps: measured while the machine was not in a slow state);
- the noise in two parts as the guard models it (txsuite.verdict.runs): within a run, and of a
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
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ab_evidence  # noqa: E402
from bench.ab_evidence import neighbour_if, txsuite_run  # noqa: E402
from txsuite.guard import compare, load_side  # noqa: E402
from txsuite.verdict.runs import run_level_sd  # noqa: E402
from txsuite.verdict.run_noise import RUN_NOISE, RUN_NOISE_STATE  # noqa: E402
from txsuite.guard.state import best_probe, split_by_state, state_adjusted  # noqa: E402
from txsuite.verdict.stats import pooled_log_sd  # noqa: E402

MATRIX = """\
name: drift
fixed:
  model: {preset: small, n_layer: 2}
  data: {dataset: markov, seq_len: 128, symbols: 16}
  train: {steps: 25, warmup_steps: 3, micro_batch: 4}
repeats: 3
guard: {tokens_per_s: -5%}
"""


def measure(out: Path, runs: int, slow_code: Path | None = None) -> None:
    """`runs` runs of the matrix in a row; with `slow_code`, every second run is a run of that
    checkout instead (the runs alternate: unchanged, slowed, unchanged, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.yaml").write_text(MATRIX)
    for i in range(runs):
        slowed = slow_code is not None and i % 2 == 1
        run_id = f"run{i + 1:02d}{'-slow' if slowed else ''}"
        txsuite_run(out, "drift.yaml", run_id, slow_code if slowed else ROOT)


def slowed_checkout(scratch: Path, burns: int) -> Path:
    """A clone of this checkout whose training step does `burns` times bench/ab_evidence.py's
    extra work (six 256x256 matmuls with an element-wise op each) at its end."""
    call, helper = ab_evidence.SLOW
    ab_evidence.VARIANTS["slowed"] = (call.replace("_burn()", f"[_burn() for _ in range({burns})]"), helper)
    return ab_evidence.prepare("slowed", scratch)


def repetition_medians(side, best: float) -> tuple[list[float], list[float]]:
    """Per repetition the guard keeps (the machine not in a slow state: txsuite.guard.state),
    median tokens/s and the slower probe, in ms."""
    (cell,) = side.cells.values()
    kept = split_by_state(cell.repeats, best).kept
    tps = [statistics.median(r.tokens_per_step / t for t in r.step_times_s) for r in kept]
    probes = [r.probe_s * 1000 for r in kept]
    return tps, probes


MODES = ((f"none, --run-noise {RUN_NOISE:.0%} (default)", "none", None),
         ("none, no run part (--run-noise 0)", "none", 0.0),
         (f"state, --run-noise {RUN_NOISE_STATE:.0%} (default)", "state", None))


def analyse(out: Path) -> None:
    folders = sorted(p for p in (out / "results" / "drift").iterdir() if (p / "records.jsonl").exists())
    same = [p for p in folders if not p.name.endswith("-slow")]
    _noise_report([load_side(p) for p in same], [p.name for p in same])
    if len(same) < len(folders):
        _slowdown_report(folders)
        return
    sides = [load_side(p) for p in same]
    for label, mode, run_noise in MODES:
        verdicts = Counter(compare(later, earlier, normalize=mode, run_noise=run_noise).verdict
                           for earlier, later in zip(sides, sides[1:]))
        print(f"guard, unchanged code, {len(sides) - 1} consecutive pairs, {label}: "
              + ", ".join(f"{v} {verdicts.get(v, 0)}" for v in ("PASS", "FAIL", "INCONCLUSIVE")))


def _noise_report(sides, names) -> None:
    """Per run the kept repetitions; the two parts of the noise, raw and state-adjusted."""
    reps = [r for side in sides for cell in side.cells.values() for r in cell.repeats]
    best = best_probe(reps)
    for label, view in (("raw", sides), ("state-adjusted", [state_adjusted(s, best) for s in sides])):
        runs, probes = [], []
        for name, side in zip(names, view):
            tps, pr = repetition_medians(side, best)
            if label == "raw":
                print(f"{name}  tokens/s {' '.join(f'{t:7,.0f}' for t in tps)}   probe ms "
                      f"{' '.join(f'{p:5.1f}' for p in pr)}"
                      f"{'' if len(tps) == 3 else f'   ({3 - len(tps)} in a slow state)'}")
            if tps:
                runs.append(tps)
                probes.append(statistics.mean(pr))
        within, df = pooled_log_sd(runs)
        level, level_df, _ = run_level_sd([runs], within)
        means = [float(np.mean(np.log(r))) for r in runs]
        consecutive = [math.exp(b - a) for a, b in zip(means, means[1:])]
        print(f"{label}: {len(runs)} runs with a repetition in a good state: within a run {within:.1%} "
              f"({df} degrees of freedom); whole-run level {level:.1%} ({level_df} degrees of freedom); "
              f"consecutive runs {min(consecutive):.3f}-{max(consecutive):.3f}x; "
              f"corr(run level, mean probe) {np.corrcoef(means, probes)[0, 1]:+.2f}")


def _slowdown_report(folders) -> None:
    """Each slowed run against the unchanged run just before it, as its baseline."""
    pairs = [(load_side(a), load_side(b)) for a, b in zip(folders, folders[1:]) if b.name.endswith("-slow")]
    ratios = [compare(slow, base).rows[0].ratio for base, slow in pairs]
    print(f"slowed code: {len(pairs)} runs, each against the unchanged run before it; raw ratios "
          f"{min(ratios):.3f}-{max(ratios):.3f} (median {statistics.median(ratios):.3f})")
    for label, mode, run_noise in MODES:
        verdicts = Counter(compare(slow, base, normalize=mode, run_noise=run_noise).verdict for base, slow in pairs)
        print(f"guard, slowed code, {label}: "
              + ", ".join(f"{v} {verdicts.get(v, 0)}" for v in ("PASS", "FAIL", "INCONCLUSIVE")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    parser.add_argument("--slow", type=int, default=0, metavar="BURNS",
                        help="alternate with runs of code whose step does BURNS times extra work")
    parser.add_argument("--analyse-only", action="store_true", help="analyse the runs already in --out")
    args = parser.parse_args()
    if not args.analyse_only:
        slow_code = slowed_checkout(args.out / "code", args.slow) if args.slow else None
        with neighbour_if(args.load):
            measure(args.out, args.runs, slow_code)
    analyse(args.out)


if __name__ == "__main__":
    main()
