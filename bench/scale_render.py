"""How long the report of a large run and the history of many runs take to render (issue 28:
a 20,000-record run under 60 s, with progress shown; issue 29: 500 runs under a minute).

    python bench/scale_render.py report --records 20000 [--dir DIR] [--profile FILE]
    python bench/scale_render.py history --runs 500 [--dir DIR] [--profile FILE]

`report` writes one run folder of --records records (cells x 3 repeats, shaped like real ones:
bench/store_scale.py's record, two axes over the cells) and times `txsuite report` on it.
`history` writes --runs run folders of a 2-cell matrix (two repeats each, tokens/s with ±2 %
noise) and times `txsuite history` over them. Both print the command's own output (its progress)
and the wall time, and for `report` the size of the page written (a 20,000-record report must
stay light enough to open). --profile FILE runs the command under cProfile, its statistics
written to FILE (`python -m pstats FILE`: sort cumulative, stats 40): the wall time is then the
profiler's, not the judged figure.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from store_scale import record  # noqa: E402

from txsuite.config.record import Record  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402


def write_large_run(root: Path, n: int) -> Path:
    folder = RunFolder(root / "results" / "scale" / "r")
    folder.create()
    cells = {}
    with open(folder.records_path, "w") as fh:
        for i in range(n):
            r = record(i)
            cell = i // 3
            micro_batch, lr = 2 ** (cell % 8), round(1e-4 * (1 + cell // 8), 6)
            r.config = {**r.config, "train": {"steps": 300, "micro_batch": micro_batch, "lr": lr}}
            r.label = f"train.micro_batch={micro_batch} train.lr={lr}"
            r.metrics = {**r.metrics, "tokens_per_s": 1000.0 * micro_batch ** 0.5 * random.Random(i).uniform(0.97, 1.03),
                         "peak_mem_bytes": 2**20 * (100 + micro_batch), "train_mem_bytes": 2**20 * micro_batch,
                         "mfu": 0.1, "val_loss": 2.0 + lr}
            cells[r.cell_id] = r.label
            fh.write(r.to_json() + "\n")
    folder.write_json("matrix.json", {"name": "scale", "axes": {"train.micro_batch": sorted({2 ** k for k in range(8)}),
                                                                 "train.lr": []}, "repeats": 3,
                                       "cells": [{"cell_id": c, "label": label} for c, label in cells.items()]})
    return folder.dir


def write_runs(root: Path, runs: int) -> Path:
    rng = random.Random(0)
    for i in range(runs):
        folder = RunFolder(root / "results" / "m" / f"run{i:04d}")
        env = {"host": "bench", "cpu": "x86_64", "txsuite_commit": f"{i:010d}"}
        for cell in ("none", "full"):
            for repeat in range(2):
                folder.append(Record(matrix="m", run_id=f"run{i:04d}", cell_id=cell, repeat=repeat, status="ok",
                                     label=f"memory.activation_checkpointing={cell}", config={"memory": cell},
                                     env=env, metrics={"tokens_per_s": 1000 * rng.uniform(0.98, 1.02),
                                                       "train_mem_bytes": 2**25, "mfu": 0.1, "val_loss": 2.0,
                                                       "step_flops": 1e9, "loss_curve": []},
                                     started_at=f"2026-01-01T00:00:{i:06d}", finished_at="", duration_s=1.0))
        folder.write_json("env.json", env)
    return root / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["report", "history"])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--profile", default=None, metavar="FILE", help="cProfile statistics of the command, to FILE")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix=f"scale-{args.what}-", dir=args.dir))
    if args.what == "report":
        target = write_large_run(root, args.records)
        command = ["report", str(target), "-o", str(root / "report.html")]
    else:
        target = write_runs(root, args.runs)
        command = ["history", str(target), "-o", str(root / "site")]
    profiler = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *profiler, "-m", "txsuite.cli", *command], capture_output=True, text=True)
    took = time.monotonic() - started
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    page = root / "report.html"
    print(json.dumps({"what": args.what, "records": args.records if args.what == "report" else None,
                      "runs": args.runs if args.what == "history" else None, "exit": proc.returncode,
                      "seconds": round(took, 1), "profiled": bool(args.profile),
                      "html_mb": round(page.stat().st_size / 1e6, 1) if page.exists() else None,
                      "folder": str(root)}))


if __name__ == "__main__":
    main()
