"""How well `txsuite plan` predicts on real runs: a fresh host (an empty cache folder) runs one
matrix, then matrices the model never saw, each predicted from what the host measured before it.

    python bench/predict_evidence.py --out /tmp/predict-evidence \
        --first matrices/precision.yaml --then matrices/checkpointing.yaml matrices/accumulation.yaml

For each matrix in order it prints the plan's estimated sweep time, runs it (`txsuite run
--no-report`, the cache folder --out/cache, so the first matrix meets a fresh host), times it,
and reads the predictions every record carries: the median absolute error of predicted tokens/s
and train memory over the matrix's cells (medians over their ok repetitions), with the worst
cell, and what the prediction was fitted on. A Markdown table at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from txsuite.results import RunFolder  # noqa: E402


def errors(run_dir: Path, metric: str, predicted: str) -> list[tuple[float, str]]:
    cells: dict[str, dict] = {}
    for r in RunFolder(run_dir).records():
        if r.status != "ok" or not r.metrics.get(predicted) or not r.metrics.get(metric):
            continue
        cell = cells.setdefault(r.cell_id, {"label": r.label, "measured": [], "predicted": r.metrics[predicted]})
        cell["measured"].append(r.metrics[metric])
    return [(abs(c["predicted"] / statistics.median(c["measured"]) - 1), c["label"]) for c in cells.values()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/predict-evidence"))
    parser.add_argument("--first", default="matrices/precision.yaml")
    parser.add_argument("--then", nargs="+", default=["matrices/checkpointing.yaml", "matrices/accumulation.yaml"])
    args = parser.parse_args()
    env = {**os.environ, "TXSUITE_CACHE": str(args.out / "cache")}
    rows = []
    for i, matrix in enumerate([args.first, *args.then]):
        plan = subprocess.run([sys.executable, "-m", "txsuite.cli", "plan", matrix], capture_output=True, text=True,
                              env=env, cwd=REPO).stdout
        estimate = re.search(r"estimated time: (.*)", plan)
        fitted = re.search(r"predictions: (.*)", " ".join(plan.split()))
        started = time.monotonic()
        run_id = f"ev{i}"
        subprocess.run([sys.executable, "-m", "txsuite.cli", "run", matrix, "--run-id", run_id, "--no-report",
                        "--results-dir", str(args.out / "results")], env=env, cwd=REPO, capture_output=True)
        took = time.monotonic() - started
        name = Path(matrix).stem
        run_dir = next((args.out / "results").glob(f"*/{run_id}"))
        speed = errors(run_dir, "tokens_per_s", "predicted_tokens_per_s")
        memory = errors(run_dir, "train_mem_bytes", "predicted_train_mem_bytes")
        row = (name, fitted.group(1).split(" (txsuite")[0] if fitted else "?",
               estimate.group(1) if estimate else "?", f"{took:.0f} s",
               f"{statistics.median(e for e, _ in speed):.0%} ({len(speed)} cells; worst {max(speed)[0]:.0%} "
               f"{max(speed)[1]})" if speed else "–",
               f"{statistics.median(e for e, _ in memory):.0%} ({len(memory)} cells; worst {max(memory)[0]:.0%} "
               f"{max(memory)[1]})" if memory else "–")
        print(" | ".join(row), flush=True)
        rows.append(row)
    print("\n| matrix | predicted from | plan's estimate | took | tokens/s error, median | train memory error, median |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
