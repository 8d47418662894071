"""Inference speed of a (compressed) model: prefill and per-token decode, no gradients.

prefill   one forward over [PREFILL_BATCH, seq_len] prompts; tokens/s = prompt tokens / time.
decode    greedy generation of DECODE_TOKENS tokens for one sequence, one at a time, from a
          prompt of half the context. The reference model has no KV cache (it stays pure), so
          every generated token re-runs the forward over the whole context so far: this
          measures the cost of a forward over a growing context, not an optimized decoder
          (a KV cache would make each step a one-token forward). It compares compression
          methods on the same model; absolute numbers understate what a cached decoder reaches.

The fastest of a few timed repetitions after one warm-up (interference from other processes
only ever slows a run down, and a shared CPU has plenty), timed with time.perf_counter and
torch.cuda.synchronize on CUDA. Inputs are fixed random tokens (content does not change the
cost) from a private generator, so the global RNG is not disturbed. The whole measurement
takes a second or two for the tiny preset on a CPU (docs/measurements.md, "Compression").
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch
from torch import nn

PREFILL_BATCH = 4
PREFILL_REPEATS = 5
DECODE_TOKENS = 8
DECODE_REPEATS = 3


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


@torch.no_grad()
def benchmark(model: nn.Module, vocab_size: int, seq_len: int, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
              ) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    sync = _sync(device)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab_size, (PREFILL_BATCH, seq_len), generator=gen).to(device)

    def prefill() -> None:
        with autocast():
            model(prompts)
    prefill_s = _timed(prefill, sync, PREFILL_REPEATS)

    new_tokens = min(DECODE_TOKENS, max(1, seq_len - 1))
    prompt_len = max(1, min(seq_len // 2, seq_len - new_tokens))
    start = prompts[:1, :prompt_len]

    def decode() -> None:
        context = start
        for _ in range(new_tokens):
            with autocast():
                logits = model(context[:, -seq_len:])  # [1, t, V]: the whole context again
            context = torch.cat([context, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    decode_s = _timed(decode, sync, DECODE_REPEATS)
    model.train(was_training)
    return {
        "prefill_tokens_per_s": PREFILL_BATCH * seq_len / prefill_s,
        "prefill_batch": PREFILL_BATCH,
        "prefill_seq_len": seq_len,
        "decode_tokens_per_s": new_tokens / decode_s,
        "decode_ms_per_token": decode_s / new_tokens * 1e3,
        "decode_new_tokens": new_tokens,
        "decode_prompt_len": prompt_len,
        "decode_kv_cache": False,
    }


def _timed(fn: Callable[[], None], sync: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy kernel selection
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)
