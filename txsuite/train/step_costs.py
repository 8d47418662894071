"""Two parts of a training step's time that neither the matmul peak nor the memory bandwidth
tells, measured once per host and cached beside them (peaks.json, txsuite.measure.host_cache):

- the **per-operator overhead** of a precision: what a step costs when its arithmetic is
  negligible (the dispatcher, autograd, autocast's casts, the Python of every module). The
  reference model at a tiny shape (OVERHEAD_WIDTH wide, OVERHEAD_TOKENS tokens) trains a few
  steps with OVERHEAD_LAYERS[0] and with OVERHEAD_LAYERS[1] layers: the difference per layer is
  `layer_s`, what remains of the shallow step `micro_batch_s` (embedding, head, loss, clipping,
  the optimizer's launch);
- the **optimizer step** at a cell's own parameter shapes and parameter dtype: the optimizers
  differ by far more than the bytes their state moves (a 4-bit AdamW dequantizes and quantizes
  every block, Muon runs Newton-Schulz matmuls, Adafactor factors its second moment), so the
  step is timed on the cell's real model with random gradients.

The cost model (txsuite.measure.predict) adds them to the matmuls at the peak and the bytes at
the bandwidth. Measured in the sweep's host setup (txsuite.train.host_trials), in a process
started as the cells are (threads, OpenMP spin setting: both are in the key), so the plan and
every cell's prediction read them without paying for them.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

from txsuite.config.spec import CellConfig
from txsuite.measure.peak import host_key, measured_once
from txsuite.measure.predict import cost_kind

OVERHEAD_LAYERS = (1, 4)  # the shallow and the deep tiny model: their difference is the layers' overhead
OVERHEAD_WIDTH = 32  # d_model of the tiny model (2 heads): its matmuls take microseconds
OVERHEAD_TOKENS = 16  # sequence length, at micro-batch 1
OVERHEAD_STEPS = 20  # timed steps per model and round, after OVERHEAD_WARMUP; the median is its step time
OVERHEAD_WARMUP = 5
OVERHEAD_ROUNDS = 3  # rounds of alternated steps; the fastest round of each model is kept
OVERHEAD_MAX_ROUNDS = 9  # while a part comes out at or below zero (noise), rounds go on up to this many
OPTIMIZER_STEPS = 5  # timed optimizer steps after OPTIMIZER_WARMUP (torchao's low-bit optimizers compile at first)
OPTIMIZER_WARMUP = 2


def overhead(torch, device, device_name: str, cell: CellConfig) -> dict:
    """-> {"layer_s", "micro_batch_s", "overhead_key", "overhead_cached"} for the cell's precision,
    measured once per host and cached."""
    key = host_key(torch, device, device_name, cost_kind(cell, "overhead"), "overhead")
    entry, cached = measured_once(key, lambda: measure_overhead(torch, device, cell))
    return {"layer_s": entry["layer_s"], "micro_batch_s": entry["micro_batch_s"], "overhead_key": key,
            "overhead_cached": cached}


def optimizer_step(torch, device, device_name: str, cell: CellConfig) -> dict:
    """-> {"optimizer_s", "optimizer_key", "optimizer_cached"}: one step of the cell's optimizer
    at its parameter shapes, measured once per host and cached."""
    key = host_key(torch, device, device_name, cost_kind(cell, "optimizer"), "optimizer")
    entry, cached = measured_once(key, lambda: {"seconds": measure_optimizer_step(torch, device, cell)})
    return {"optimizer_s": entry["seconds"], "optimizer_key": key, "optimizer_cached": cached}


def measures_optimizer(cell: CellConfig) -> bool:
    """Whether the optimizer step can be timed apart from the cell: one process holding every
    parameter (a sharded or pipelined optimizer steps on a part, under an engine)."""
    return not cell.parallel.distributed and not cell.fp8_training


def measure_overhead(torch, device, cell: CellConfig) -> dict:
    """Median step times of the tiny shallow and deep models in the cell's precision, their steps
    alternated one by one (a moment of noise, or a neighbour on the cores, falls on both alike)
    for OVERHEAD_ROUNDS rounds, the fastest round of each kept; more rounds, up to
    OVERHEAD_MAX_ROUNDS, while the deep model's extra time per layer and what remains of the
    shallow step are not both above zero (a real step has both):
    -> {"layer_s", "micro_batch_s", "step_s": [shallow, deep], "rounds"}."""
    from txsuite.data import build_dataset
    from txsuite.train.build import build_training

    tiny = [_tiny(cell, layers) for layers in OVERHEAD_LAYERS]
    dataset = build_dataset(tiny[0].data, seed=tiny[0].train.seed)  # one for both: its tokens are most of the build
    trainings = [build_training(c, device, dataset=dataset) for c in tiny]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for training in trainings:
        for _ in range(OVERHEAD_WARMUP):
            training.trainer.step(training.batches)
    best = [float("inf")] * len(trainings)
    rounds = 0
    while rounds < OVERHEAD_ROUNDS or (rounds < OVERHEAD_MAX_ROUNDS and not _both_parts_positive(*best)):
        best = [min(b, m) for b, m in zip(best, _alternated_medians(trainings, sync))]
        rounds += 1
    layer_s, micro_batch_s = _parts(*best)
    return {"layer_s": max(0.0, layer_s), "micro_batch_s": max(0.0, micro_batch_s), "step_s": best, "rounds": rounds}


def _parts(shallow: float, deep: float) -> tuple[float, float]:
    """-> (a layer pass, what remains of the shallow step), before clamping: a round of noise can
    put either at or below zero. The micro-batch's part is taken with the layer's clamped at 0."""
    layer_s = (deep - shallow) / (OVERHEAD_LAYERS[1] - OVERHEAD_LAYERS[0])
    return layer_s, shallow - OVERHEAD_LAYERS[0] * max(0.0, layer_s)


def _both_parts_positive(shallow: float, deep: float) -> bool:
    return all(part > 0 for part in _parts(shallow, deep))


def _alternated_medians(trainings, sync) -> list[float]:
    """OVERHEAD_STEPS steps of each training, one of each in turn (the first of a pair alternates,
    so neither always follows the other): -> the median step time of each."""
    times = [[] for _ in trainings]
    for pair in range(OVERHEAD_STEPS):
        order = range(len(trainings)) if pair % 2 == 0 else reversed(range(len(trainings)))
        for i in order:
            sync()
            start = time.perf_counter()
            trainings[i].trainer.step(trainings[i].batches)
            sync()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measure_optimizer_step(torch, device, cell: CellConfig) -> float:
    """Median seconds of OPTIMIZER_STEPS steps of the cell's optimizer over the reference model at
    the cell's shapes and parameter dtype, with random gradients."""
    from txsuite.config.estimate import approx_vocab
    from txsuite.model import GPT, resolve_model
    from txsuite.train.optimizers import build_optimizer

    model = GPT(resolve_model(replace(cell.model, attention="sdpa"), approx_vocab(cell), cell.data.seq_len)).to(device)
    if cell.precision == "bf16-pure":  # its parameters, gradients and state are bf16 (techniques/precision.py)
        model = model.to(torch.bfloat16)
    optimizer = build_optimizer(model, cell.train, device)
    generator = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype) * 1e-3
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(OPTIMIZER_WARMUP + OPTIMIZER_STEPS):
        sync()
        start = time.perf_counter()
        optimizer.step()
        sync()
        if step >= OPTIMIZER_WARMUP:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tiny(cell: CellConfig, layers: int) -> CellConfig:
    """The cell's precision and optimizer on a model whose arithmetic is negligible: one process,
    the synthetic markov task (no corpus to read), nothing recomputed or compiled."""
    model = replace(cell.model, preset="tiny", n_layer=layers, n_head=2, d_model=OVERHEAD_WIDTH, d_ff=None,
                    attention="sdpa", linear="torch")
    return replace(cell, model=model, data=replace(cell.data, dataset="markov", seq_len=OVERHEAD_TOKENS,
                                                   tokenizer="byte", vocab_size=None, symbols=None, augment="none"),
                   train=replace(cell.train, micro_batch=1, grad_accum=1, init="scratch"),
                   parallel=type(cell.parallel)(), memory=type(cell.memory)(), compile=type(cell.compile)())
