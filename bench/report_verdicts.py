"""How often the run report's verdicts call a difference where there is none, and whether they
see the ones that are there, on real runs of this machine.

    python bench/report_verdicts.py --runs 8 --out /tmp/verdicts [--load]   # measure, then analyse
    python bench/report_verdicts.py --out /tmp/verdicts --analyse-only      # analyse runs already there

Each run is a `txsuite run` of one matrix: four cells (`--equal N`: N) that do the same work
(they differ in the learning rate only, which costs nothing), plus two that do not: one thread instead of two
(slower, about the same memory) and full activation checkpointing (slower, lighter). For every
run it builds the report's cell table (suite/report/frame.py) and counts, among the equal cells
alone, what the report would say:
- the Fastest and Least memory cards: a leader "beyond noise" is a false call;
- the Pareto column: an equal cell marked dominated is a false call; the point-estimate front
  the report drew before (every equal cell but one off the front) for comparison;
- the speed-up and memory-ratio colours against the reference: a colour is a false call; the
  old ±3 % rule for comparison.
Then, for the two cells that differ, the same verdicts against the reference (what was seen).

`--load`: another process keeps both cores busy 40 s of every 100 s (bench/ab_evidence.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ab_evidence import neighbour_if, txsuite_run  # noqa: E402
from suite.report.frame import build_cell_table  # noqa: E402
from suite.report.summary import fastest_finding, least_memory_finding  # noqa: E402
from suite.results import RunFolder  # noqa: E402

MATRIX = """\
name: verdicts
fixed:
  model: {preset: small, n_layer: 2}
  data: {dataset: markov, seq_len: 128, symbols: 16}
  train: {steps: 25, warmup_steps: 3, micro_batch: 4}
axes:
  train.lr: [LRS]   # cells that do the same work
include:
  - {train.lr: 1.0e-3, measure.threads: 1}                        # slower, the same memory
  - {train.lr: 1.0e-3, memory.activation_checkpointing: full}     # slower, lighter
repeats: 5
"""
FIRST_LR = 1.0e-3


def measure(out: Path, runs: int, equal: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lrs = ", ".join(f"{FIRST_LR * (1 + 0.1 * i):.2e}" for i in range(equal))
    (out / "verdicts.yaml").write_text(MATRIX.replace("LRS", lrs))
    for i in range(runs):
        run_id = f"run{i + 1:02d}"
        txsuite_run(out, "verdicts.yaml", run_id)


def is_equal_cell(record) -> bool:
    cfg = record.config
    return (cfg.get("measure", {}).get("threads") != 1
            and cfg.get("memory", {}).get("activation_checkpointing", "none") == "none")


def reference_of(cells):
    """The first equal cell (lr 1e-3, two threads, no checkpointing)."""
    return next(c for c, lr in zip(cells["cell_id"], cells["train.lr"]) if float(lr) == FIRST_LR)


def analyse(out: Path) -> None:
    folders = sorted(p for p in (out / "results" / "verdicts").iterdir() if (p / "records.jsonl").exists())
    equal, others = Counter(), Counter()
    for folder in folders:
        records = RunFolder(folder).records()
        same = [r for r in records if is_equal_cell(r)]
        probe = build_cell_table(same)
        table = build_cell_table(same, reference=reference_of(probe.cells))
        cells = table.cells
        fastest, lightest = fastest_finding(table), least_memory_finding(table)
        equal["runs"] += 1
        equal["fastest beyond noise"] += "beyond noise" in fastest.detail
        equal["least memory beyond noise"] += "beyond noise" in lightest.detail
        equal["cells"] += len(cells)
        equal["dominated"] += int((cells["front"] == "dominated").sum())
        equal["within noise of the front"] += int((cells["front"] == "within noise").sum())
        equal["off the point-estimate front"] += int((~cells["pareto"]).sum())
        rest = cells[~cells["is_reference"]]
        equal["ratios"] += 2 * len(rest)
        equal["coloured ratios"] += int(rest["speedup_verdict"].isin(["better", "worse"]).sum()
                                        + rest["mem_ratio_verdict"].isin(["better", "worse"]).sum())
        equal["coloured ratios, old ±3 % rule"] += int(((rest["speedup"] - 1).abs() > 0.03).sum()
                                                       + ((rest["mem_ratio"] - 1).abs() > 0.03).sum())
        whole = build_cell_table(records, reference=table.reference).cells
        line = []
        for _, cell in whole[~whole["cell_id"].isin(cells["cell_id"])].iterrows():
            name = "1 thread" if cell["measure.threads"] == 1 else "checkpointing"
            others[(name, "speed-up", cell["speedup_verdict"])] += 1
            others[(name, "memory", cell["mem_ratio_verdict"])] += 1
            others[(name, "front", cell["front"])] += 1
            line.append(f"{name} {cell['speedup']:.2f}x speed ({cell['speedup_verdict']}), "
                        f"{cell['mem_ratio']:.3f}x memory ({cell['mem_ratio_verdict']}), {cell['front']}")
        spread = ", ".join(f"{s:.3f}" for s in cells["speedup"])
        print(f"{folder.name}: equal cells' speed-ups {spread}; fastest: {fastest.what}; " + "; ".join(line))
    print("\nequal cells:")
    for key, n in equal.items():
        print(f"  {key}: {n}")
    print("cells that differ, against the reference:")
    for (name, what, verdict), n in sorted(others.items(), key=lambda kv: [str(x) for x in kv[0]]):
        print(f"  {name}, {what}: {verdict} {n}")


def pooled_vs_paired(out: Path) -> None:
    """Offline, on the kept records: the paired test as the report makes it (each pair's own
    variance over its rounds) against a moderated one that also borrows the run's pooled
    residual variance (cells x rounds, additive in logs: randomized blocks), with the first 2, 3
    and 5 rounds of each run: equal pairs separated (false calls) and the two differing cells
    separated from the reference (power), at 95 %."""
    import itertools

    import numpy as np

    from suite.report.quality import t_quantile
    folders = sorted(p for p in (out / "results" / "verdicts").iterdir() if (p / "records.jsonl").exists())
    for k in (2, 3, 5):
        false, power, pairs, runs = Counter(), Counter(), 0, 0
        for folder in folders:
            values: dict[str, dict[int, float]] = {}
            for r in RunFolder(folder).records():
                if r.status == "ok" and r.repeat < k:
                    name = (f"equal {r.config['train']['lr']}" if is_equal_cell(r) else
                            "1 thread" if r.config.get("measure", {}).get("threads") == 1 else "checkpointing")
                    values.setdefault(name, {})[r.repeat] = math.log(r.metrics["tokens_per_s"])
            names = sorted(values)
            if any(len(values[n]) < k for n in names):
                continue
            logs = np.array([[values[n][r] for r in range(k)] for n in names])  # [cells, rounds]
            resid = logs - logs.mean(1, keepdims=True) - logs.mean(0, keepdims=True) + logs.mean()
            d0 = (len(names) - 1) * (k - 1)
            pooled = float((resid ** 2).sum()) / d0  # one cell's variance; a difference has twice it

            def separated(a: str, b: str, moderated: bool) -> bool:
                d = logs[names.index(a)] - logs[names.index(b)]
                var, df = float(d.var(ddof=1)), k - 1
                if moderated:
                    var, df = (d0 * 2 * pooled + (k - 1) * var) / (d0 + k - 1), d0 + k - 1
                return abs(d.mean()) > t_quantile(df) * math.sqrt(var / k)
            equal = [n for n in names if n.startswith("equal")]
            runs += 1
            for a, b in itertools.combinations(equal, 2):
                pairs += 1
                for moderated in (False, True):
                    false[moderated] += separated(a, b, moderated)
            for other in ("1 thread", "checkpointing"):
                for moderated in (False, True):
                    power[other, moderated] += separated(other, min(equal), moderated)
        print(f"{k} rounds, {runs} runs: equal pairs separated {false[False]}/{pairs} paired, {false[True]}/{pairs} "
              f"moderated; " + "; ".join(f"{o} vs the reference {power[o, False]}/{runs} paired, {power[o, True]}/{runs} "
                                          f"moderated" for o in ("1 thread", "checkpointing")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--equal", type=int, default=4, help="cells that do the same work (default 4)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    parser.add_argument("--analyse-only", action="store_true", help="analyse the runs already in --out")
    parser.add_argument("--pooled", action="store_true",
                        help="also compare the paired test with a pooled (moderated) one, at 2, 3 and 5 rounds")
    args = parser.parse_args()
    if not args.analyse_only:
        with neighbour_if(args.load):
            measure(args.out, args.runs, args.equal)
    analyse(args.out)
    if args.pooled:
        pooled_vs_paired(args.out)


if __name__ == "__main__":
    main()
