"""`model.linear: auto`: whether this host needs the linear layers' input gradient computed
against a transposed copy of the weight, measured once per host, dtype and shape and cached
(txsuite.measure.host_cache), like the attention kernel and the matmul peak.

Why: a Linear's three products meet three operand layouts (forward x W^T, input gradient g W,
weight gradient g^T x). Where torch has no native kernel for a dtype, its fallback matmul is fast
for some layouts and slow for others: on a CPU without bf16 instructions (AVX2 only) a bf16
product is more than ten times slower with both operands contiguous, the input gradient's
layout, than with the second transposed (`python bench/matmul_layouts.py`; docs/measurements.md,
"bf16 on a CPU without bf16 instructions"). Where the
kernels are native (fp32 anywhere, bf16 with AVX512-BF16/AMX or on GPUs) every layout runs at
the same speed and the copy only costs. A rule written from one machine would be wrong on the
next, so the suite measures.

The trial: one Linear of the cell's MLP shape (d_model -> d_ff, per rank) forward + backward on
min(micro_batch x seq_len, TRIAL_TOKENS) random tokens in the dtype its matmuls compute in.
Each kernel's output and gradients are checked against float64 first; then they race
(txsuite.measure.kernel_race). torch's own Linear stays unless the other kernel is faster in
every round than torch's Linear in any round: a tie, or an overlap of their rounds, keeps the
code path every other training script runs.

With a BlockTrial (what cells use: txsuite.techniques.kernel_trial) the kernels race inside a
whole Transformer block of the cell's shape and precision, whose linear layers all run the
candidate, rather than one Linear alone (txsuite.measure.kernel_race's docstring says why).
"""
from __future__ import annotations

from typing import Callable

from txsuite.measure.attention import ATTENTION_DTYPE
from txsuite.measure.kernel_race import BlockTrial, Race, decide, measured_choice, medians, race_candidates, screen

DEFAULT = "torch"
# Most rows a trial's product has. The ratio between the kernels hardly depends on it but the
# trial's time grows with it, to seconds where torch's kernel is slow (docs/measurements.md,
# "bf16 on a CPU without bf16 instructions").
TRIAL_TOKENS = 512
CHECK_TOKENS = 64  # rows checked against float64


def choose_linear(torch, device, precision: str, shape: tuple[int, int, int], device_name: str,
                  kernels: dict[str, Callable], use_cache: bool = True, block: BlockTrial | None = None,
                  race_fn: Race | None = None) -> dict:
    """-> {"linear": chosen kernel, "times_s": {name: median fwd+bwd seconds}, "rejected":
    {name: why}, "trial": "block" or "kernel", "key", "cached"}. shape: (tokens, d_in, d_out),
    tokens capped at TRIAL_TOKENS; kernels: name -> linear(x, weight, bias), DEFAULT among them;
    block: race them inside this block; race_fn: injected measurements (tests)."""
    dtype = ATTENTION_DTYPE[precision]  # the dtype the cell's matmuls compute in
    tokens, d_in, d_out = shape
    shape = (min(tokens, TRIAL_TOKENS), d_in, d_out)
    measure = lambda: trial(torch, device, getattr(torch, dtype), shape, kernels, block, race_fn)  # noqa: E731
    shape_key = block.shape_key if block is not None else f"M{shape[0]} K{d_in} N{d_out}"
    return measured_choice("linear.json", torch, device, device_name, dtype, shape_key, kernels, measure, use_cache)


def trial(torch, device, dtype, shape: tuple[int, int, int], kernels: dict[str, Callable],
          block: BlockTrial | None = None, race_fn: Race | None = None) -> dict:
    tokens, d_in, d_out = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    x, grad_out = torch.randn(tokens, d_in, generator=gen), torch.randn(tokens, d_out, generator=gen)
    weight = torch.randn(d_out, d_in, generator=gen) * d_in ** -0.5
    bias = torch.randn(d_out, generator=gen)
    x, grad_out, weight, bias = (t.to(device) for t in (x, grad_out, weight, bias))
    correct, rejected = screen(torch, kernels, torch.nn.functional.linear,
                               [x[:CHECK_TOKENS], weight, bias], grad_out[:CHECK_TOKENS], dtype)
    if DEFAULT not in correct:
        raise RuntimeError(f"torch's own Linear failed its check against float64: {rejected}")
    samples, level = race_candidates(torch, device, correct, [t.to(dtype) for t in (x, weight, bias)],
                                     grad_out.to(dtype), block, race_fn)
    return {"linear": decide(samples, DEFAULT), "times_s": medians(samples), "rejected": rejected, "trial": level}
