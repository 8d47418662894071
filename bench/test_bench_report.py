"""How long the HTML report of a large matrix takes to render.

200 cells (a 20 x 10 grid: learning rate x micro-batch, so the heatmap is drawn too), 3 repeats
each, loss curves of 100 points and 60 step times per repeat, a few failed cells. The report is
the last step of every `txsuite run`; it must take seconds, not minutes.

    python -m pytest bench/test_bench_report.py -q -s
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from txsuite.config.record import Record
from txsuite.report import render_report
from txsuite.results import RunFolder, write_atomic

LRS = [round(1e-4 * 1.25**i, 7) for i in range(20)]
MICRO_BATCHES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
REPEATS = 3
BUDGET_S = 60.0  # generous for a slow CI runner; a laptop takes a few seconds


def large_run(run_dir: Path) -> Path:
    rnd = random.Random(0)
    lines = []
    for lr in LRS:
        for mb in MICRO_BATCHES:
            config = {"model": {"preset": "tiny"}, "precision": "bf16", "device": "cpu",
                      "train": {"steps": 100, "micro_batch": mb, "grad_accum": 1, "lr": lr}}
            cell_id = f"c{LRS.index(lr):02d}{MICRO_BATCHES.index(mb):02d}"
            label = f"train.lr={lr} train.micro_batch={mb}"
            for repeat in range(REPEATS):
                if mb == 32 and lr > 1e-3 and repeat == 0:
                    lines.append(Record(matrix="big", run_id=run_dir.name, cell_id=cell_id, repeat=repeat,
                                        config=config, status="oom", label=label,
                                        reason="CUDA out of memory. Tried to allocate 2.00 GiB").to_json())
                    continue
                tok = 900 * mb ** 0.8 * (1 + rnd.gauss(0, 0.03))
                final = 1.6 + abs(math.log(lr / 6e-4)) * 0.1
                curve = [[s, s * 256 * mb / tok, final + 3.0 * math.exp(-s / 25) + rnd.gauss(0, 0.02)]
                         for s in range(100)]
                metrics = {
                    "tokens_per_s": tok, "samples_per_s": tok / 256, "step_time_p50_s": 256 * mb / tok,
                    "step_time_p90_s": 1.1 * 256 * mb / tok, "peak_mem_bytes": (0.3 + 0.12 * mb) * 2**30,
                    "mfu": min(0.6, 0.02 * mb ** 0.7), "loss_curve": curve, "val_loss": final + 0.05,
                    "time_to_target_s": None, "energy_per_token_j": 2e-4 / mb ** 0.3,
                    "step_times_s": [256 * mb / tok * (1 + abs(rnd.gauss(0, 0.05))) for _ in range(60)],
                }
                lines.append(Record(matrix="big", run_id=run_dir.name, cell_id=cell_id, repeat=repeat,
                                    config=config, status="ok", label=label, metrics=metrics,
                                    env={"host": "bench", "torch": "2.6.0"}).to_json())
    # One write, not 600 appends: RunFolder.append rewrites the file each time (atomicity first).
    write_atomic(run_dir / "records.jsonl", "\n".join(lines) + "\n")
    RunFolder(run_dir).write_json("matrix.json", {
        "name": "big", "description": "200-cell learning-rate x micro-batch sweep (synthetic numbers)",
        "axes": {"train.lr": LRS, "train.micro_batch": MICRO_BATCHES}, "repeats": REPEATS})
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return large_run(tmp_path_factory.mktemp("results") / "big" / "run1")


def test_render_200_cells(benchmark, run_dir, tmp_path):
    out = tmp_path / "big.html"
    result = benchmark.pedantic(render_report, args=(run_dir, out), rounds=3, iterations=1, warmup_rounds=0)
    assert result == out and out.stat().st_size > 0
    html = out.read_text()
    assert html.count("<svg") >= 6
    assert 'data-chart="heatmap"' in html
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call, no timing)
        assert benchmark.stats.stats.max < BUDGET_S
