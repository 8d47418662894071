"""How often the verdict engine calls a difference where there is none, and whether it sees the
ones that are there, on real runs of this machine: the run report's verdicts between cells and
`compare` between runs.

    python bench/report_verdicts.py --runs 16 --out /tmp/verdicts [--load]   # measure, then analyse
    python bench/report_verdicts.py --out /tmp/verdicts --analyse-only --rounds 2   # the first 2 rounds only

Each run is a `txsuite run` of one matrix: four cells (`--equal N`: N) that do the same work
(they differ in the learning rate only, which costs nothing), plus three that do not: one
thread instead of two (slower, about the same memory), full activation checkpointing (slower,
lighter) and checkpointing of one block of two (about 15 % slower). `--rounds K` analyses each
run as if it had stopped after K rounds (the repetitions run round by round, so its first K
rounds are a run with `repeats: K`). For every run it builds the report's cell table
(txsuite/report/frame.py) over all its cells, as a user's report does, and counts:
- calibration: every pair of equal cells, as the verdict engine judges it (tokens/s, train
  memory, peak memory): a call (faster, slower, lighter, heavier) is a false call; and what the
  report prints among them: the Fastest card "beyond noise", an equal cell marked dominated,
  a coloured ratio of an equal cell against the reference (an equal cell);
- power: each differing cell against the reference (speed and memory verdicts, its place);
- compare: each run against the next with `txsuite compare`'s engine (txsuite/report/compare.py):
  two runs of the same code should read "no change beyond noise".

`--load`: another process keeps both cores busy 40 s of every 100 s (bench/ab_evidence.py).

`--spin`: two more cells whose steps are exactly 15 % and 10 % slower on any host and under any
load (their learning rates, 2.0e-3 and 2.1e-3, select the spin in a patched clone of HEAD: every
`Trainer.step` ends busy for that fraction of its own time, bench/ab_lockstep_evidence.py's
spin), so that "cells 15 % apart" is exactly that; the runs then use the clone's txsuite.
`--state-from steps|mean|ends`: judge time by the probes each step ran between (as recorded:
`probe_steps_s`), by the mean of every probe (`probe_steps_s` dropped), or by the two probes
around the steps only (`probe_mean_s` dropped too), to compare the state factors on the same
runs. `--ends-only` is `--state-from ends`.
`--steps N`: every cell trains N steps (default 25), so a repetition spans more of the host's states.
`--repeats '{min: 2, max: 4, detect: 15%}'`: the runs add rounds while their own noise cannot
detect that gap (the runner decides, as for a user; without `--rounds` the analysis reads every
round each run ran, with `--rounds 2` its first stage). `--analyse-only --replay '{min: 2, max:
4, detect: 15%}'` judges runs recorded with more rounds on the rounds the runner would have run
with that setting: rounds run in order, so a run's first k rounds are the run that stopped after k.
`--skip RUN,...`: leave runs out of the analysis (one disturbed while it was measured).
`--memory-resolution-mib R`: count a memory call only where the two cells differ by R MiB or
more (what a resolution in bytes for the resident set would do). `--state-statistic NAME`: a repetition's rate at the best state made another way from its steps and
the probes between them (bench/state_statistics.py). `--state-slope fitted|shrunk`:
time brought to the best state with the state factor's power fitted on each run's own
repetitions (within cells), or fitted and shrunk towards one; an experiment, the engine's is one.
Runs are added after those already in `--out` (run05 follows run04), so that two checkouts can
take turns a run at a time, each into its own folder.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import state_statistics  # noqa: E402
from bench.ab_evidence import REPO, neighbour_if, txsuite_run  # noqa: E402
from txsuite.report.compare import compare_findings, compare_tables  # noqa: E402
from txsuite.report.frame import build_cell_table  # noqa: E402
from txsuite.report.summary import fastest_finding  # noqa: E402
from txsuite.config.matrix import load_matrix  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402
from txsuite.run import more_rounds  # noqa: E402
from txsuite.verdict import state  # noqa: E402

MATRIX = """\
name: verdicts
fixed:
  model: {preset: small, n_layer: 2}
  data: {dataset: markov, seq_len: 128, symbols: 16}
  train: {steps: STEPS, warmup_steps: 3, micro_batch: 4}
axes:
  train.lr: [LRS]   # cells that do the same work
include:
  - {train.lr: 1.0e-3, measure.threads: 1}                        # slower, the same memory
  - {train.lr: 1.0e-3, memory.activation_checkpointing: full}     # slower, lighter
  - {train.lr: 1.0e-3, memory.activation_checkpointing: every_k, memory.checkpoint_every: 2}  # ~15 % slower
SPIN_CELLS
repeats: REPEATS
"""
FIRST_LR = 1.0e-3
# --spin: learning rate -> the fraction by which the patched clone's step is slower
SPINS = {2.0e-3: 0.15, 2.1e-3: 0.10}


def spin_clone(scratch: Path) -> Path:
    """A clone of HEAD whose Trainer.step spins by SPINS[its learning rate] of its own time."""
    from ab_lockstep_evidence import spin_clone as clone_spinning  # bench/ is first on sys.path
    return clone_spinning("spin-by-lr", scratch, '_SPINS.get(round(self.optimizer.defaults["lr"], 12), 0.0)',
                          f"\n_SPINS = {SPINS!r}\n")


def measure(out: Path, runs: int, equal: int, spin: bool, steps: int = 25, repeats: str = "5") -> None:
    out.mkdir(parents=True, exist_ok=True)
    lrs = ", ".join(f"{FIRST_LR * (1 + 0.1 * i):.2e}" for i in range(equal))
    spins = "".join(f"  - {{train.lr: {lr:.1e}}}   # a step exactly {fraction:.0%} slower (--spin)\n"
                    for lr, fraction in SPINS.items()) if spin else ""
    (out / "verdicts.yaml").write_text(MATRIX.replace("LRS", lrs).replace("SPIN_CELLS\n", spins).replace("STEPS", str(steps))
                                       .replace("REPEATS", repeats))
    code = spin_clone(out / "code") if spin else REPO
    # runs are added after those already in `out`: two trees' runs can then alternate, one each
    done = len(list((out / "results" / "verdicts").glob("run*")))
    for i in range(done, done + runs):
        run_id = f"run{i + 1:02d}"
        txsuite_run(out, "verdicts.yaml", run_id, code)


def kind_of(config: dict) -> str:
    """'equal', '1 thread', 'checkpointing' (every block), 'half checkpointing' (one block of
    two) or 'N % slower step' (--spin)."""
    if config.get("measure", {}).get("threads") == 1:
        return "1 thread"
    spin = SPINS.get(round(config.get("train", {}).get("lr", 0.0), 12))
    if spin:
        return f"{spin:.0%} slower step"
    return {"none": "equal", "full": "checkpointing", "every_k": "half checkpointing"}[
        config.get("memory", {}).get("activation_checkpointing", "none")]


# --state-from: the probe fields dropped from every record, so that the state factor falls back
# to the next (txsuite.verdict.state.state_factor)
DROPPED = {"steps": (), "mean": ("probe_steps_s",), "ends": ("probe_steps_s", "probe_mean_s")}


MEMORY = ("train_mem_bytes", "peak_mem_bytes")


def analyse(out: Path, rounds: int | None, state_from: str = "steps", skip: set[str] = frozenset(),
            memory_resolution: float = 0.0, state_statistic: str | None = None, replay: str | None = None) -> None:
    """`memory_resolution` (bytes): a memory call counts only where the two cells' difference is at
    least that large (what a resolution in bytes for the resident set would do). `state_statistic`:
    a repetition's rate at the best state made by bench/state_statistics.py's statistic of that name.
    `replay`: a mapping form of repeats ('{min: 2, max: 4, detect: 15%}'); each run is judged on
    the rounds the runner would have run with it (`replayed_rounds`)."""
    matrix = load_matrix(out / "verdicts.yaml", overrides=[f"repeats={replay}"]) if replay else None
    folders = sorted(p for p in (out / "results" / "verdicts").iterdir()
                     if (p / "records.jsonl").exists() and p.name not in skip)
    calls, power, compared = Counter(), Counter(), Counter()
    tables = []
    for folder in folders:
        records = list(RunFolder(folder).records())
        limit = replayed_rounds(matrix, records) if matrix else rounds
        records = [r for r in records if limit is None or r.repeat < limit]
        for r in records:
            for name in DROPPED[state_from]:
                r.metrics.pop(name, None)
            if state_statistic:
                state_statistics.apply(r.metrics, state_statistic)
        kinds = {r.cell_id: kind_of(r.config) for r in records}
        equal = sorted(c for c, k in kinds.items() if k == "equal")
        reference = min(equal, key=lambda c: next(r.config["train"]["lr"] for r in records if r.cell_id == c))
        table = build_cell_table(records, reference=reference)
        tables.append((folder.name, table))
        cells = table.cells.set_index("cell_id")
        calls["runs"] += 1
        calls["rounds run"] += max(r.repeat for r in records) + 1
        for a, b in itertools.combinations(equal, 2):
            for metric in ("tokens_per_s", "train_mem_bytes", "peak_mem_bytes"):
                calls[f"{metric}: pairs"] += 1
                calls[f"{metric}: called"] += _called(table, cells, a, b, metric, memory_resolution)
        fastest = fastest_finding(table)
        calls["Fastest card beyond noise (an equal cell leads)"] += "beyond noise" in fastest.detail
        calls["equal cells marked dominated"] += int((cells.loc[equal, "front"] == "dominated").sum())
        others = [c for c in equal if c != reference]
        calls["coloured ratios of equal cells: tested"] += 2 * len(others)
        calls["coloured ratios of equal cells: called"] += int(
            cells.loc[others, "speed_verdict"].map(lambda v: v in ("faster", "slower")).sum()
            + cells.loc[others, "memory_verdict"].map(lambda v: v in ("lighter", "heavier")).sum())
        line = []
        for cid, kind in kinds.items():
            if kind == "equal":
                continue
            row = cells.loc[cid]
            power[(kind, "speed", row["speed_verdict"])] += 1
            memory_verdict = row["memory_verdict"]
            if memory_verdict in ("lighter", "heavier") and not _called(table, cells, cid, reference,
                                                                          table.memory_metric, memory_resolution):
                memory_verdict = "within noise"
            power[(kind, "memory", memory_verdict)] += 1
            power[(kind, "front", row["front"])] += 1
            line.append(f"{kind} {row['speedup']:.2f}x ({row['speed_verdict']}), memory {row['mem_ratio']:.3f}x "
                        f"({row['memory_verdict']})")
        spread = ", ".join(f"{cells.loc[c, 'speedup']:.3f}" for c in equal)
        print(f"{folder.name}: equal cells' speed-ups {spread}; {table.verdicts.noise('tokens_per_s').describe()}; "
              f"fastest: {fastest.what}; " + "; ".join(line))
    for (name_a, a), (name_b, b) in zip(tables, tables[1:]):
        comparison = compare_tables(a, b)
        findings = compare_findings(comparison)
        quiet = any(f.startswith("No change beyond noise") for f in findings)
        compared["pairs"] += 1
        compared["no change beyond noise"] += quiet
        if not quiet:
            print(f"compare {name_a} {name_b}: " + " ".join(f for f in findings if "beyond noise" in f))
    print(f"\n{rounds or 'all'} rounds; calibration, equal cells:")
    for key, n in calls.items():
        print(f"  {key}: {n}")
    print("power, each differing cell against the reference:")
    for (name, what, verdict), n in sorted(power.items(), key=lambda kv: [str(x) for x in kv[0]]):
        print(f"  {name}, {what}: {verdict} {n}")
    print(f"compare, consecutive runs of the same code: {compared['no change beyond noise']} of {compared['pairs']} "
          f"'no change beyond noise'")


def replayed_rounds(matrix, records) -> int:
    """The rounds the runner would have run of a run recorded with more (rounds run in order, so
    its first k rounds are what a run stopped after k measured): the runner's own decision
    (txsuite/run/more_rounds.py) after each round from `min`, on the rounds before it."""
    recorded = max(r.repeat for r in records) + 1
    unplanned = {r.cell_id for r in records} - {c.cell_id for c in matrix.cells}
    if unplanned:  # the cell ids of another version of the settings: the decision would see no cell
        raise SystemExit(f"--replay: records of cells today's verdicts.yaml does not plan: {sorted(unplanned)[:3]}")
    for k in range(matrix.repeats, min(matrix.most_repetitions, recorded)):
        if more_rounds.judge(matrix, [r for r in records if r.repeat < k]).enough:
            return k
    return min(matrix.most_repetitions, recorded)


def _called(table, cells, a: str, b: str, metric: str, memory_resolution: float) -> bool:
    """Whether the engine separates a from b on `metric`, a memory difference counted only from
    `memory_resolution` bytes; `cells`: the table's cells indexed by cell id."""
    comparison = table.verdicts.compare(a, b, metric)
    if not comparison.separated or metric not in MEMORY or not memory_resolution:
        return comparison.separated
    level = float(cells.loc[b, metric])
    return abs(math.log(comparison.ratio)) >= math.log1p(memory_resolution / level)


def fitted_state_slope(shrink_sd: float | None):
    """txsuite.verdict.state.adjusted with the power of the state factor fitted on the run's own
    repetitions (a regression of log value on log state factor within each cell) instead of the
    registry's one; `shrink_sd`: shrunk towards one with a prior of that sd. An experiment: the
    engine keeps the fixed power (docs/verdicts.md, "The card on the engine's values")."""
    fixed = state.adjusted

    def adjusted(rows, metric):
        rows = list(rows)
        if metric not in state.POWER:
            return fixed(rows, metric)
        kept = [(cell, r, v, state.of(m)) for cell, r, v, m in rows]
        slow = sum(s.slow for *_, s in kept)
        kept = [(cell, r, v, s.factor) for cell, r, v, s in kept if not s.slow]
        by_cell: dict = {}
        for cell, _, v, f in kept:
            if f:
                by_cell.setdefault(cell, []).append((math.log(v), math.log(f)))
        x, y = [], []
        for points in by_cell.values():
            if len(points) >= 2:
                ys, xs = np.array(points).T
                x += list(xs - xs.mean())
                y += list(ys - ys.mean())
        x, y = np.array(x), np.array(y)
        power = state.POWER[metric]  # value x factor ** power: +1 for a rate, -1 for a duration
        free = len(x) - len(by_cell) - 1
        if free > 0 and x @ x > 0:
            slope = float(x @ y) / float(x @ x)  # log value on log factor: -power if one for one
            se = math.sqrt(float(((y - slope * x) ** 2).sum()) / free / float(x @ x))
            weight = 1.0 if shrink_sd is None else (1 / se ** 2) / (1 / se ** 2 + 1 / shrink_sd ** 2)
            power = weight * -slope + (1 - weight) * power
        values: dict = {}
        for cell, r, v, f in kept:
            values.setdefault(cell, {})[r] = v * f ** power if f else v
        return state.StateAdjusted(values, slow)
    return adjusted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--equal", type=int, default=4, help="cells that do the same work (default 4)")
    parser.add_argument("--steps", type=int, default=25, help="training steps of every cell (default 25: about 1 s of "
                                                                 "measured steps on this project's host)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    parser.add_argument("--analyse-only", action="store_true", help="analyse the runs already in --out")
    parser.add_argument("--rounds", type=int, default=None, help="analyse the first K rounds of each run only")
    parser.add_argument("--replay", default=None, help="judge each run on the rounds the runner would have run "
                        "with this mapping form of repeats, e.g. '{min: 2, max: 4, detect: 15%%}' (its recorded "
                        "rounds run in order: the first k are a run stopped after k)")
    parser.add_argument("--repeats", default="5", help="the matrix's repeats: 5 (default), or the mapping form, "
                        "e.g. '{min: 2, max: 4, detect: 15%%}', whose runs stop when their noise allows")
    parser.add_argument("--spin", action="store_true", help="two more cells, their steps exactly 15 %% and 10 %% slower")
    parser.add_argument("--state-from", choices=sorted(DROPPED), default="steps",
                        help="the probes time is judged by: each step's own (as recorded), the mean of "
                             "every probe, or the two around the steps")
    parser.add_argument("--ends-only", action="store_true", help="--state-from ends")
    parser.add_argument("--skip", default="", help="runs to leave out of the analysis, e.g. run01,run04")
    parser.add_argument("--memory-resolution-mib", type=float, default=0.0,
                        help="count a memory call only where the difference is at least this many MiB")
    parser.add_argument("--state-slope", choices=("fixed", "fitted", "shrunk"), default="fixed",
                        help="the state factor's power: the engine's (fixed), fitted per run, or fitted and "
                             "shrunk towards one (prior sd 0.2)")
    parser.add_argument("--state-statistic", choices=sorted(state_statistics.STATISTICS), default=None,
                        help="a repetition's rate at the best state from its steps and the probes between "
                             "them by another statistic (bench/state_statistics.py); runs recorded before "
                             "the probes were kept are judged as recorded")
    args = parser.parse_args()
    if args.state_slope != "fixed":
        state.adjusted = fitted_state_slope(None if args.state_slope == "fitted" else 0.2)
    if not args.analyse_only:
        with neighbour_if(args.load):
            measure(args.out, args.runs, args.equal, args.spin, args.steps, args.repeats)
    analyse(args.out, args.rounds, "ends" if args.ends_only else args.state_from,
            set(filter(None, args.skip.split(","))), args.memory_resolution_mib * 2 ** 20, args.state_statistic,
            args.replay)


if __name__ == "__main__":
    main()
