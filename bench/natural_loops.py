"""Each model of the peer benchmark trained the way its own users train it (bench/step_server.py
`natural` mode), beside the shared-step comparison where every model runs one hand-written step.

- ours: a txsuite cell at its defaults (`model: small`, seq 256, micro-batch 8), built as the
  worker builds it and stepped by the cell's own loop (txsuite.train.loop.train_steps: its data
  pipeline, hooks, host sync, loss read-back and log line), one step per call.
- hf-sdpa, hf-eager: transformers' GPT2LMHeadModel with the loss it computes from `labels`,
  AdamW over the parameter groups its Trainer makes (no decay on biases and LayerNorm weights),
  torch's default AdamW kernel, clipping, a scheduler step.
- litgpt: its GPT, litgpt's chunked cross-entropy, AdamW over all parameters with weight decay
  (litgpt's pretraining default), torch's default kernel, clipping.
- minimal-gpt: bench/minimal_gpt.py with its loss inside forward, its configure_optimizer and
  its hand-set cosine learning rate, zero_grad(set_to_none=True).

bf16: each under torch.autocast around the forward and the loss (what every one of them does on
CPU), backward outside it. The same dims, pre-made batches and learning-rate settings for all.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

import conftest as kit

NATURAL = ("ours", "hf-sdpa", "hf-eager", "litgpt", "minimal-gpt")


def natural_step(name: str, precision: str, total_steps: int) -> tuple[torch.nn.Module, Callable[[], object], dict]:
    """(model, one training step, what to report) for `name` in its own loop."""
    if name == "ours":
        return ours_cell(precision, total_steps)
    import step_server
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    batches = kit.cycle(kit.make_batches())
    torch.manual_seed(0)
    if name.startswith("hf-"):
        model = step_server.hf_model(name.removeprefix("hf-"))
        no_decay = ("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")  # the Trainer's grouping
        params = dict(model.named_parameters())
        groups = [{"params": [p for n, p in params.items() if not n.endswith(no_decay)], "weight_decay": kit.WEIGHT_DECAY},
                  {"params": [p for n, p in params.items() if n.endswith(no_decay)], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=kit.LR, betas=kit.BETAS)
        loss_of = lambda x, y: model(input_ids=x, labels=x).loss  # noqa: E731  (HF shifts the labels itself)
    elif name == "litgpt":
        from litgpt.utils import chunked_cross_entropy
        model = step_server.litgpt_model()
        opt = torch.optim.AdamW(model.parameters(), lr=kit.LR, betas=kit.BETAS, weight_decay=kit.WEIGHT_DECAY)
        loss_of = lambda x, y: chunked_cross_entropy(model(x), y)  # noqa: E731
    elif name == "minimal-gpt":
        from minimal_gpt import cosine_lr
        model = step_server.minimal_gpt_model()
        opt = model.configure_optimizer(kit.WEIGHT_DECAY, kit.LR, kit.BETAS, "cpu")
        loss_of = lambda x, y: model(x, y)[1]  # noqa: E731
    else:
        raise ValueError(f"no natural loop for {name!r}; known: {', '.join(NATURAL)}")
    sched = None if name == "minimal-gpt" else torch.optim.lr_scheduler.LambdaLR(opt, kit.cosine_factor(total_steps))
    model.train()
    done = 0

    def step() -> None:
        nonlocal done
        if sched is None:  # minimal-gpt sets its learning rate by hand, as its design does
            for group in opt.param_groups:
                group["lr"] = cosine_lr(done, kit.LR, 0, total_steps, kit.LR * kit.MIN_LR_RATIO)
        x, y = next(batches)
        with autocast():
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), kit.GRAD_CLIP)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        done += 1
    impl = opt.defaults
    return model, step, {"attention": None, "linear": None, "host_allocator": "system",
                         "adamw": {"foreach": impl.get("foreach"), "fused": impl.get("fused")}}


def ours_cell(precision: str, total_steps: int) -> tuple[torch.nn.Module, Callable[[], object], dict]:
    """The default cell, one step of its own loop per call (the overhead bench's construction)."""
    from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
    from txsuite.config.spec.measure import MeasureSpec
    from txsuite.measure.host_allocator import apply_host_allocator
    from txsuite.train import build_training
    from txsuite.train.loop import train_steps
    allocator = apply_host_allocator(MeasureSpec().host_allocator)["host_allocator"]  # first, as the worker
    cell = CellConfig(model=ModelSpec(preset="small"), data=DataSpec(seq_len=kit.SEQ),
                      train=TrainSpec(steps=total_steps, micro_batch=kit.BATCH), precision=precision, device="cpu")
    training = build_training(cell)
    one_step = dataclasses.replace(training, cell=dataclasses.replace(
        cell, train=dataclasses.replace(cell.train, steps=1, warmup_steps=0)))
    log = open(os.devnull, "w")  # a cell's step lines go to its log file

    def step() -> None:
        train_steps(one_step, sync=lambda: None, log=lambda line: print(line, file=log, flush=True))
    facts = training.setup.facts
    adamw = training.trainer.optimizer.defaults
    return training.setup.model, step, {
        "attention": facts["attention"], "attention_trial_s": facts.get("attention_auto", {}).get("times_s"),
        "linear": facts["linear"], "host_allocator": allocator,
        "adamw": {"foreach": adamw.get("foreach"), "fused": adamw.get("fused")}}
