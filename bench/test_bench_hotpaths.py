"""pytest-benchmark suite of txsuite's hot paths, for `--benchmark-compare-fail` in CI.

- one training step per precision (fp32, bf16, bf16-pure) on the tiny reference model, built
  as the worker builds it (txsuite.train.build_training), over a few fixed batches of its data;
- matrix expansion of a shipped matrix (txsuite.config.matrix.load_matrix on matrices/precision.yaml);
- the guard's own comparison of a 6-cell, 2-repeat run (txsuite.guard.compare).
Report rendering is timed by bench/test_bench_report.py.

Save a reference once, then compare every later run with it (docs/guard.md):

    pytest bench/test_bench_hotpaths.py --benchmark-autosave
    pytest bench/test_bench_hotpaths.py --benchmark-compare --benchmark-compare-fail=median:5%

Every benchmark has a fixed number of rounds (pedantic), so two runs measure the same work.
"""
from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from txsuite.config.host import Host
from txsuite.config.matrix import load_matrix
from txsuite.config.record import Record
from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
from txsuite.guard import compare, side_from_records
from txsuite.train import Trainer, build_training

REPO = Path(__file__).resolve().parents[1]
SEQ, BATCH, VOCAB = 128, 8, 256
STEP_ROUNDS, STEP_WARMUP = 40, 5


def _trainer(precision: str) -> tuple[Trainer, object]:
    cell = CellConfig(model=ModelSpec(preset="tiny"), data=DataSpec(seq_len=SEQ),
                      train=TrainSpec(steps=1000, warmup_steps=0, micro_batch=BATCH), precision=precision,
                      device="cpu")
    training = build_training(cell)
    assert training.model_cfg.vocab_size == VOCAB
    fixed = [next(training.batches) for _ in range(4)]  # the same tensors every round
    return training.trainer, itertools.cycle(fixed)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-pure"])
def test_train_step(benchmark, precision):
    trainer, stream = _trainer(precision)
    benchmark.group = "train-step"
    benchmark.extra_info.update({"model": "tiny", "seq_len": SEQ, "micro_batch": BATCH,
                                 "threads": torch.get_num_threads()})
    loss = benchmark.pedantic(lambda: trainer.step(stream), rounds=STEP_ROUNDS, iterations=1,
                              warmup_rounds=STEP_WARMUP)
    assert torch.isfinite(loss)


def test_matrix_expansion(benchmark):
    path = REPO / "matrices" / "precision.yaml"
    benchmark.group = "matrix"
    matrix = benchmark.pedantic(load_matrix, args=(path,), kwargs={"host": Host()}, rounds=30, iterations=1,
                                warmup_rounds=2)
    assert matrix.cells


def _synthetic_run(scale: float, seed: int):
    rng = np.random.default_rng(seed)
    recs = []
    for c in range(6):
        for r in range(2):
            steps = [float(x) for x in 0.01 * (1 + c) * scale * np.exp(rng.normal(0, 0.05, 40))]
            tps = statistics.median(2048 / t for t in steps)
            recs.append(Record(matrix="bench", run_id=f"s{seed}", cell_id=f"cell{c}", repeat=r, config={},
                               status="ok", label=f"cell={c}",
                               metrics={"step_times_s": steps, "tokens_per_s": tps, "tokens_per_step": 2048,
                                        "samples_per_step": 8, "peak_mem_bytes": 4e8 + c, "peak_flops": 1e12}))
    return side_from_records(recs, path=f"s{seed}", meta={"guard": {"tokens_per_s": "-5%",
                                                                     "peak_mem_bytes": "+10%"}})


def test_guard_compare(benchmark):
    run, base = _synthetic_run(1.0, 1), _synthetic_run(1.0, 2)
    benchmark.group = "guard"
    result = benchmark.pedantic(compare, args=(run, base), rounds=10, iterations=1, warmup_rounds=1)
    assert len(result.rows) == 12
