"""Does the adaptive sweep (`search: pareto`) find what the full grid finds, for less? Runs one
matrix as a grid and as pareto, alternated, and compares them.

    python bench/search_evidence.py [--matrix matrices/search.yaml] [--pairs 2] [--out /tmp/search-evidence]

First a warm-up run (every cell once, 8 steps) fills this host's caches (kernel races, the
matmul peak, the machine probe), so that neither side pays them. Then `--pairs` pairs of runs,
the order alternating (grid then pareto, then pareto then grid), so that a drift of the machine
does not favour one side. For each pair it prints:

- the fastest cell of each (the highest median tokens/s among ok cells) and whether the grid
  itself separated it from the others beyond noise;
- the Pareto front of each (the report's: tokens/s against train memory, on the medians) and the
  grid's cells not dominated beyond noise (the report's front and "within noise" cells);
- every pruned cell that is on the grid's front (a wrong prune: there should be none);
- the cell-seconds of each (the sum of every repetition's wall seconds, records.jsonl's
  duration_s; the pareto side adds its probes, probes.jsonl) and their ratio.

The issue's bar: the same fastest cell and the same front in at most 40 % of the grid's
cell-seconds. Run it on a quiet host (nothing else running): timings on a shared host say
nothing. Every run folder stays under --out.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def txsuite_run(matrix: Path, results: Path, run_id: str, *settings: str) -> None:
    cmd = [sys.executable, "-m", "txsuite.cli", "run", str(matrix), *settings, "--run-id", run_id, "--no-report",
           "--results-dir", str(results)]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode not in (0, 1):
        sys.exit(f"txsuite run ended with exit {done.returncode}")


def summarise(run_dir: Path) -> dict:
    """What the report would say of a run: its fastest cell, its front, its cell-seconds."""
    from txsuite.report.pareto import FRONT, NEAR_FRONT
    from txsuite.report.run_report import table_for
    from txsuite.results import RunFolder
    from txsuite.run.search import load_probes, read_search
    from txsuite.verdict import BETTER

    run = RunFolder(run_dir).load()
    table = table_for(run)
    ok = table.ok
    label = {row["cell_id"]: row["label"] for _, row in table.cells.iterrows()}
    fastest = ok.loc[ok["tokens_per_s"].idxmax()]["cell_id"] if len(ok) else None
    separated = fastest is not None and all(
        table.verdicts.verdict(fastest, other, "tokens_per_s") == BETTER
        for other in ok["cell_id"] if other != fastest)
    probes = load_probes(run_dir)
    search = read_search(run_dir) or {}
    return {
        "label": label,
        "fastest": fastest,
        "fastest_separated": separated,
        "front": set(ok[ok["front"] == FRONT]["cell_id"]),
        "not_dominated": set(ok[ok["front"].isin([FRONT, NEAR_FRONT])]["cell_id"]),
        "pruned": {p["cell"]["cell_id"] for p in search.get("pruned", [])},
        "cell_seconds": sum(r.duration_s or 0.0 for r in run.records),
        "probe_seconds": sum(r.duration_s or 0.0 for r in probes),
    }


def names(cells: set, label: dict) -> str:
    return "; ".join(sorted(label.get(c, c) for c in cells)) or "(none)"


def compare(k: int, grid: dict, pareto: dict) -> dict:
    label = grid["label"]
    grid_cost = grid["cell_seconds"]
    pareto_cost = pareto["cell_seconds"] + pareto["probe_seconds"]
    wrong = pareto["pruned"] & grid["front"]
    out = {"pair": k, "same_fastest": grid["fastest"] == pareto["fastest"], "same_front": grid["front"] == pareto["front"],
           "wrong_prunes": len(wrong), "ratio": pareto_cost / grid_cost if grid_cost else float("nan"),
           "pruned": len(pareto["pruned"])}
    print(f"\npair {k}")
    print(f"  fastest, grid:   {label.get(grid['fastest'])} "
          f"({'separated from every other cell' if grid['fastest_separated'] else 'not separated beyond noise'})")
    print(f"  fastest, pareto: {label.get(pareto['fastest'])}  -> {'same' if out['same_fastest'] else 'DIFFERENT'}")
    print(f"  front, grid:     {names(grid['front'], label)}")
    print(f"  front, pareto:   {names(pareto['front'], label)}  -> {'same' if out['same_front'] else 'DIFFERENT'}")
    print(f"  grid cells not dominated beyond noise: {names(grid['not_dominated'], label)}")
    print(f"  pruned by pareto ({len(pareto['pruned'])}): {names(pareto['pruned'], label)}")
    print(f"  pruned cells on the grid's front (wrong prunes): {names(wrong, label)}")
    print(f"  cell-seconds: grid {grid_cost:,.1f} s; pareto {pareto_cost:,.1f} s "
          f"({pareto['probe_seconds']:,.1f} s of probes) -> {out['ratio']:.0%} of the grid's")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", type=Path, default=REPO / "matrices" / "search.yaml")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/search-evidence"))
    args = parser.parse_args()
    matrix, results = args.matrix.resolve(), args.out.resolve() / "results"
    txsuite_run(matrix, args.out.resolve() / "warmup", "warmup", "search=grid", "repeats=1", "train.steps=8")
    rows = []
    for k in range(args.pairs):
        order = ("grid", "pareto") if k % 2 == 0 else ("pareto", "grid")
        for mode in order:
            txsuite_run(matrix, results, f"{mode}-{k}", f"search={mode}")
        name = _matrix_name(matrix)
        grid, pareto = (summarise(results / name / f"{mode}-{k}") for mode in ("grid", "pareto"))
        rows.append(compare(k, grid, pareto))
    print("\n| pair | same fastest | same front | pruned | wrong prunes | pareto / grid cell-seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {'yes' if r['same_fastest'] else 'no'} | {'yes' if r['same_front'] else 'no'} | "
              f"{r['pruned']} | {r['wrong_prunes']} | {r['ratio']:.0%} |")


def _matrix_name(matrix: Path) -> str:
    from txsuite.config.matrix import load_matrix
    return load_matrix(matrix).name


if __name__ == "__main__":
    main()
