"""`model.attention: auto`: the fastest correct attention kernel for this host, device, dtype and
attention shape, measured once and cached (txsuite.measure.host_cache), like the matmul peak.

Why measure instead of a rule: which kernel wins depends on the host. On CPUs SDPA's fused
kernel is the faster one in fp32 but its bf16 path can be slower than two plain bf16 matmuls
and a softmax (docs/measurements.md, attention.yaml); on GPUs flash attention wins and also saves the T x T
scores. A rule written from one machine would be wrong on the next.

The trial: causal attention forward + backward on random q, k, v of the cell's per-rank shape
[micro_batch, heads, seq_len, head_dim] in the dtype its attention computes in. Not one sequence
to save time: the ranking depends on the batch (SDPA can win at batch 8 and lose at batch 1,
its threads split over batch x heads). Beyond TRIAL_ROWS (sequence, head) pairs the trial runs
TRIAL_ROWS // heads sequences: there the time per sequence is flat (docs/measurements.md,
"Precision, attention, batch and checkpointing", has both measurements), and a full trial at a
cell's large batch would cost seconds, or the memory that cell is about to be refused for. Each kernel's
output and input gradients are first checked against a float64 reference (a kernel that is fast
but wrong is never chosen), then the kernels race (txsuite.measure.kernel_race: alternating timed
rounds) and the lower median wins.

With a BlockTrial (what cells use: txsuite.techniques.kernel_trial) the correct kernels race
inside a whole Transformer block of the cell's shape and precision instead, forward + backward,
since the block predicts the step and the kernel alone did not (kernel_race's docstring). Its
cache entry is keyed by the block's shape, apart from the kernel trial's.
"""
from __future__ import annotations

from typing import Callable

from txsuite.measure.kernel_race import BlockTrial, Race, decide, measured_choice, medians, race_candidates, screen

# the dtype a cell's attention computes in, by precision (fp8 casts only the linear layers)
ATTENTION_DTYPE = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                   "fp16": "float16", "fp8": "bfloat16"}
TRIAL_ROWS = 64  # most (sequence, head) pairs a trial runs
# kept unless another kernel is faster beyond the trial's noise: in fp32 here the two tie in a
# block trial while SDPA's whole step is a few per cent faster (docs/measurements.md)
DEFAULT = "sdpa"


def choose_attention(torch, device, precision: str, shape: tuple[int, int, int, int], device_name: str,
                     kernels: dict[str, Callable], use_cache: bool = True, block: BlockTrial | None = None,
                     race_fn: Race | None = None) -> dict:
    """-> {"attention": chosen kernel name, "times_s": {name: median fwd+bwd seconds},
    "rejected": {name: why}, "trial": "block" or "kernel", "key": cache key, "cached": bool}.
    shape: (batch, heads, seq, head_dim), the batch capped at TRIAL_ROWS // heads for the
    correctness check and a kernel trial; kernels: name -> causal attention(q, k, v)
    (txsuite.model.gpt.attention_kernels); block: race them inside this block (times_s are then
    the block's forward + backward); use_cache=False measures without reading or writing the
    host's cache (tests); race_fn: injected measurements (tests)."""
    dtype = ATTENTION_DTYPE[precision]
    b, h, t, d = shape
    b = max(1, min(b, TRIAL_ROWS // h))
    shape = (b, h, t, d)
    measure = lambda: trial(torch, device, getattr(torch, dtype), shape, kernels, block, race_fn)  # noqa: E731
    shape_key = block.shape_key if block is not None else f"B{b} H{h} T{t} D{d}"
    return measured_choice("attention.json", torch, device, device_name, dtype, shape_key, kernels,
                           measure, use_cache)


def reference_attention(torch, q, k, v):
    """Causal softmax(q k^T / sqrt(D)) v, written out: the float64 yardstick every kernel is
    checked against, independent of the kernels under test. [B, H, T, D] -> [B, H, T, D]."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def trial(torch, device, dtype, shape, candidates: dict[str, Callable], block: BlockTrial | None = None,
          race_fn: Race | None = None) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad_out = (torch.randn(*shape, generator=gen).to(device) for _ in range(4))
    correct, rejected = screen(torch, candidates, lambda *x: reference_attention(torch, *x),
                               [x[:1] for x in (q, k, v)], grad_out[:1], dtype)  # one sequence suffices
    if not correct:
        raise RuntimeError(f"no attention kernel computed causal attention correctly: {rejected}")
    samples, level = race_candidates(torch, device, correct, [x.to(dtype) for x in (q, k, v)], grad_out.to(dtype),
                                     block, race_fn)
    times = medians(samples)
    default = DEFAULT if DEFAULT in samples else min(times, key=times.get)  # SDPA rejected: the fastest
    return {"attention": decide(samples, default), "times_s": times, "rejected": rejected, "trial": level}
