"""build_training: the one place a cell's training is assembled (L4).

Everything that trains (the worker, the benchmarks, the tests, the fine-tune after pruning)
builds through here, in the one order that works:

    seed -> data -> the pure model -> techniques, in txsuite.techniques.ORDER (each reads the
    cell; they may replace the model, split it, wrap it, register step hooks or an engine)
    -> the optimizer over the final module's parameters -> the LR schedule -> the trainer
    that steps it (DeepSpeed's engine, a pipeline schedule, or the plain step) -> this rank's
    training batches and the shared validation batches.

The optimizer comes after every technique because techniques change which tensors are the
parameters (bf16-pure casts, FSDP shards, QAT wraps, pipelining drops other stages' blocks).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from txsuite.config.spec import CellConfig
from txsuite.data import build_dataset
from txsuite.data.steps import step_batches
from txsuite.model import GPT, GPTConfig, resolve_model
from txsuite.techniques import TrainSetup, apply_all
from txsuite.techniques.kernel_trial import resolve_attention
from txsuite.techniques.mesh import build_mesh, coordinate
from txsuite.train.evaluation import EVAL_BATCH
from txsuite.train.optimizers import build_optimizer
from txsuite.train.schedule import build_schedule
from txsuite.train.trainer import Objective, Trainer, language_modelling


@dataclass
class Training:
    """What one rank trains, and with what."""
    cell: CellConfig
    device: torch.device
    dataset: Any
    model_cfg: GPTConfig
    n_params: int  # of the whole model, before any technique split or sharded it
    setup: TrainSetup
    trainer: Trainer
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]  # this rank's micro-batches, in order
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]  # the same windows for every cell
    world: int = 1
    augmenter: Any = None  # txsuite.data.augment.Augmenter when data.augment corrupts the batches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_training(cell: CellConfig, device: torch.device | str | None = None, dataset: Any = None,
                   world: int = 1) -> Training:
    """The cell's training on this rank. `device` defaults to the cell's; `dataset` may be
    passed to share one between several trainings (benchmarks); `world` is the number of
    ranks the process group holds (1 without one)."""
    device = torch.device(device or cell.device)
    t = cell.train
    seed_everything(t.seed)
    if dataset is None:
        dataset = build_dataset(cell.data, seed=t.seed)
    attention = resolve_attention(cell, device)
    model_cfg = resolve_model(replace(cell.model, attention=attention["attention"]), dataset.vocab_size,
                              cell.data.seq_len)
    model = GPT(model_cfg).to(device)  # the same initial weights on every rank (same seed)
    if t.init != "scratch":  # transfer: trained weights replace the initialisation, before any technique
        from txsuite.train.checkpoint import load_weights
        load_weights(model, t.init)  # the runner resolved cell:<...> to that cell's checkpoint folder
    n_params = model.num_params()
    mesh = build_mesh(cell, device)
    setup = apply_all(TrainSetup(model=model, device=device, mesh=mesh), cell)
    setup.facts.update(attention)  # the record states the kernel, and why when it was chosen
    del model  # setup holds what this rank trains; under pipelining, the other stages' blocks go
    optimizer = build_optimizer(setup.model, t, device)
    objective = language_modelling
    if t.adversarial_eps is not None:  # the plan allows it for one process, without fp16 or compile
        from txsuite.train.adversarial import FastGradient, token_embedding
        objective = FastGradient(t.adversarial_eps, token_embedding(setup.model))
    trainer = make_trainer(setup, optimizer, build_schedule(optimizer, t), cell, objective)
    if cell.measure.noise_scale:  # the plan allows it for one process, grad_accum >= 2, not fp16
        from txsuite.train.noise_scale import NoiseScale
        trainer.noise_scale = NoiseScale(t.micro_batch, t.grad_accum)
    # tp ranks and pipeline stages of one data-parallel replica read the same samples
    augmenter = None
    if cell.data.augment != "none":  # training batches only; validation stays clean
        from txsuite.data.augment import Augmenter
        augmenter = Augmenter(cell.data.augment, dataset.vocab_size, t.seed)
    batches = step_batches(dataset, t.micro_batch, t.grad_accum, t.seed, rank=coordinate(mesh, "dp"),
                           dp=cell.parallel.dp, pin=device.type == "cuda", augment=augmenter)
    val_batches = dataset.val_batches(EVAL_BATCH, t.eval_batches)
    return Training(cell=cell, device=device, dataset=dataset, model_cfg=model_cfg, n_params=n_params,
                    setup=setup, trainer=trainer, batches=batches, val_batches=val_batches, world=world,
                    augmenter=augmenter)


def make_trainer(setup: TrainSetup, optimizer: torch.optim.Optimizer, schedule, cell: CellConfig,
                 objective: Objective = language_modelling) -> Trainer:
    """The step for how the cell is parallelised: an engine that owns the step (DeepSpeed), a
    pipeline schedule, or the plain step (one process, DDP, FSDP, tensor parallel)."""
    t = cell.train
    if setup.engine is not None:
        from txsuite.train.deepspeed import DeepSpeedTrainer
        engine, optimizer, schedule = setup.engine(setup, optimizer, schedule)
        return DeepSpeedTrainer(setup, engine, optimizer, schedule, t.grad_accum, objective)
    if setup.pipeline is not None:
        from txsuite.train.pipeline import PipelineTrainer
        return PipelineTrainer(setup, optimizer, schedule, t.grad_accum, t.grad_clip, objective)
    return Trainer(setup, optimizer, schedule, t.grad_accum, t.grad_clip, objective)
