"""`model.attention: auto` and `model.linear: auto`, decided on what predicts the step: each
candidate kernel runs inside one Transformer block of the cell's shape and precision, forward +
backward, at the process's thread count (txsuite.measure.kernel_race.BlockTrial).

Why a block and not the kernel alone: in bf16 on a host with AVX512_BF16 the isolated attention
trial chose SDPA (faster alone), yet the whole bf16 step ran faster with plain matmul attention
(issue 31). Inside the block the kernel meets the casts autocast inserts, the layouts the
projections hand it and the threads' state between operators, as it does in the step.

The block: the model's own `Block` (layer norms, attention, MLP, residuals) with the cell's
d_model, heads, d_ff and dropout, on min(micro_batch, BLOCK_TOKENS // seq_len) sequences (at
least one) of the cell's length, in the cell's precision (bf16 and fp16 under autocast, as the
cell; bf16-pure cast; fp8 as bf16 autocast, as its attention runs). Each candidate gets its own
copy of one block (the same weights). Not modelled: activation checkpointing's recomputation,
torch.compile, the embedding and the lm_head (which no candidate changes). Tensor-parallel cells
keep the kernel trial (a rank's block is a shard the model's Block does not describe).

The choice is cached per host, threads, precision and block shape (txsuite.measure.host_cache),
so only the first cell of a shape pays the trial, and the sweep's host measurements
(txsuite.train.host_trials) pay it before any cell.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any, Callable

import torch

from txsuite.measure.kernel_race import BlockTrial
from txsuite.model.gpt import Block, GPTConfig

# Most tokens a block trial runs: its time per token is flat beyond a few sequences, and the
# trial is part of a sweep's one-time cost (bounded rounds of kernel_race on top).
BLOCK_TOKENS = 1024
AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


def block_batch(micro_batch: int, seq_len: int) -> int:
    """Sequences a block trial runs: the cell's micro-batch, capped at BLOCK_TOKENS tokens, at
    least one."""
    return max(1, min(micro_batch, BLOCK_TOKENS // seq_len))


def block_trial(cell, device: torch.device, vary: str, fixed: dict[str, str]) -> BlockTrial | None:
    """The BlockTrial racing the candidates of `vary` ("attention" or "linear") with the other
    setting held at fixed[...] ({"attention": "sdpa"}, {"linear": "torch"}); None where a block
    cannot stand for the cell (tensor parallelism)."""
    if cell.parallel.tp > 1:
        return None
    _, n_head, d_model, d_ff = cell.model.dims
    seq_len, batch = cell.data.seq_len, block_batch(cell.train.micro_batch, cell.data.seq_len)
    held = ",".join(f"{k} {v}" for k, v in sorted(fixed.items()))
    shape_key = (f"block B{batch} T{seq_len} C{d_model} H{n_head} F{d_ff} p{cell.model.dropout} "
                 f"{cell.precision} {held}")

    def steps(names: list[str]) -> dict[str, Callable[[], object]]:
        cfg = GPTConfig(vocab_size=1, max_seq_len=seq_len, n_layer=1, n_head=n_head, d_model=d_model, d_ff=d_ff,
                        dropout=cell.model.dropout, attention=fixed.get("attention", "sdpa"))
        torch.manual_seed(0)
        base = Block(cfg).to(device)
        dtype = torch.bfloat16 if cell.precision == "bf16-pure" else torch.float32
        base = base.to(dtype)
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch, seq_len, d_model, generator=gen).to(device=device, dtype=dtype)
        grad = torch.randn(batch, seq_len, d_model, generator=gen).to(device=device, dtype=dtype)
        autocast = (functools.partial(torch.autocast, device_type=device.type, dtype=AUTOCAST_DTYPE[cell.precision])
                    if cell.precision in AUTOCAST_DTYPE else contextlib.nullcontext)
        out = {}
        for name in names:
            block = copy.deepcopy(base)
            configure(block, {**fixed, vary: name})
            out[name] = functools.partial(forward_backward, block, x, grad, autocast)
        return out
    return BlockTrial(shape_key=shape_key, steps=steps)


def configure(block: Block, settings: dict[str, str]) -> None:
    """Set the block's attention kernel and linear kernel, as the model and the converter would."""
    from txsuite.techniques.linear_kernel import TRIAL_KERNEL, convert
    block.attn.attention = settings.get("attention", block.attn.attention)
    if settings.get("linear") == TRIAL_KERNEL:
        convert(block)


def forward_backward(block: Block, x: torch.Tensor, grad: torch.Tensor, autocast) -> None:
    """One training pass of the block: gradients dropped first, as a step's zero_grad does, so
    every call allocates them afresh. x: [B, T, C]; grad: the output's gradient, [B, T, C]."""
    for p in block.parameters():
        p.grad = None
    leaf = x.detach().requires_grad_()
    with autocast():
        y = block(leaf)
    y.backward(grad)


def rng_untouched(device: torch.device):
    """A context in which a trial may draw random numbers (the block's initialisation, dropout)
    without moving the global generators: the cell's initial weights and dropout masks must not
    depend on whether its trial ran or was read from the cache."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def resolve_attention(cell, device: torch.device) -> dict[str, Any]:
    """{"attention": the kernel the model runs, ...}: the cell's own choice, or for `auto` the
    fastest correct kernel for this cell (txsuite.measure.attention), raced inside a block of
    its shape and precision, with the trial's times, its level and whether they came from the
    host's cache."""
    if cell.model.attention != "auto":
        return {"attention": cell.model.attention}
    from txsuite.measure.attention import choose_attention
    from txsuite.measure.device import device_fingerprint
    from txsuite.model.gpt import attention_kernels
    _, n_head, d_model, _ = cell.model.dims
    # tensor parallelism gives each rank n_head / tp heads
    shape = (cell.train.micro_batch, n_head // cell.parallel.tp, cell.data.seq_len, d_model // n_head)
    # torch's Linear in the block whatever the cell's `linear` (decided after attention, by
    # txsuite.techniques.linear_kernel): cells that differ only in their linear kernel then share
    # one attention choice, and compare the linear kernel alone
    with rng_untouched(device):
        choice = choose_attention(torch, device, cell.precision, shape, device_fingerprint(torch, device)["device_name"],
                                  attention_kernels(), block=block_trial(cell, device, "attention", {"linear": "torch"}))
    return {"attention": choice["attention"], "attention_auto": trial_facts(choice)}


def trial_facts(choice: dict) -> dict[str, Any]:
    """What the record states of an auto trial: each candidate's median seconds (a block's
    forward + backward, or the kernel's alone), at which level it ran, what was rejected, and
    whether the figures came from the host's cache (measured when: `measured_at`)."""
    return {"times_s": choice["times_s"], "rejected": choice["rejected"], "trial": choice.get("trial", "kernel"),
            "cached": choice["cached"], "measured_at": choice.get("measured_at")}
