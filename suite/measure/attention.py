"""`model.attention: auto`: the fastest correct attention kernel for this host, device, dtype and
attention shape, measured once and cached (suite.measure.host_cache), like the matmul peak.

Why measure instead of a rule: which kernel wins depends on the host. On CPUs SDPA's fused
kernel is the faster one in fp32 but its bf16 path can be slower than two plain bf16 matmuls
and a softmax (README, attention.yaml); on GPUs flash attention wins and also saves the T x T
scores. A rule written from one machine would be wrong on the next.

The trial: causal attention forward + backward on random q, k, v of the cell's per-rank shape
[micro_batch, heads, seq_len, head_dim] in the dtype its attention computes in. Not one sequence
to save time: the ranking depends on the batch (measured here, fp32, 4 heads x 256 x 64: SDPA
wins at batch 8 but takes twice matmul's time at batch 1, its threads split over batch x heads).
Beyond TRIAL_ROWS (sequence, head) pairs the trial runs TRIAL_ROWS // heads sequences: measured
here (fp32, 4 heads x 256 x 64) the time per sequence is flat from batch 4 to 32 (SDPA 2.3-2.6 ms,
matmul 3.8-6.6 ms), and a full trial at a cell's large batch would cost seconds, or the memory
that cell is about to be refused for. Each kernel's
output and input gradients are first checked against a float64 reference (a kernel that is fast
but wrong is never chosen), then the kernels alternate over timed rounds and the lower median
wins.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

from suite.measure.host_cache import measured_once

# the dtype a cell's attention computes in, by precision (fp8 casts only the linear layers)
ATTENTION_DTYPE = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                   "fp16": "float16", "fp8": "bfloat16"}
# max |kernel - fp32 reference| allowed, relative to the reference's largest magnitude: a few
# units in the last place of the dtype, summed over T terms
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
ROUNDS = 5  # timed rounds per kernel, alternating
TRIAL_ROWS = 64  # most (sequence, head) pairs a trial runs
SEPARATED = 1.5  # after 3 rounds: min(slower) / max(leader) beyond this ends the slower one's trial
MIN_ROUND_S = 0.02  # a round repeats the kernel until it has run this long (short shapes)


def choose_attention(torch, device, precision: str, shape: tuple[int, int, int, int], device_name: str,
                     kernels: dict[str, Callable], use_cache: bool = True) -> dict:
    """-> {"attention": chosen kernel name, "times_s": {name: median fwd+bwd seconds},
    "rejected": {name: why}, "key": cache key, "cached": bool}. shape: (batch, heads, seq,
    head_dim), the batch capped at TRIAL_ROWS // heads for the trial; kernels: name -> causal
    attention(q, k, v) (suite.model.gpt.attention_kernels); use_cache=False measures without
    reading or writing the host's cache (tests)."""
    dtype = ATTENTION_DTYPE[precision]
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    b, h, t, d = shape
    b = max(1, min(b, TRIAL_ROWS // h))
    shape = (b, h, t, d)
    key = (f"{device_name}|torch {torch.__version__}|threads {threads}|{dtype}|B{b} H{h} T{t} D{d}"
           f"|{','.join(sorted(kernels))}")
    measure = lambda: trial(torch, device, getattr(torch, dtype), shape, kernels)  # noqa: E731
    if use_cache:
        entry, cached = measured_once("attention.json", key, measure)
    else:
        entry, cached = measure(), False
    return {**entry, "key": key, "cached": cached}


def reference_attention(torch, q, k, v):
    """Causal softmax(q k^T / sqrt(D)) v, written out: the float64 yardstick every kernel is
    checked against, independent of the kernels under test. [B, H, T, D] -> [B, H, T, D]."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def trial(torch, device, dtype, shape, candidates: dict[str, Callable]) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad_out = (torch.randn(*shape, generator=gen).to(device) for _ in range(4))
    full = [x.to(dtype) for x in (q, k, v, grad_out)]
    q, k, v, grad_out = (x[:1] for x in (q, k, v, grad_out))  # correctness: one sequence suffices
    reference, ref_grads = _forward_backward(torch, lambda *x: reference_attention(torch, *x),
                                             *(x.double() for x in (q, k, v, grad_out)))
    scale = max(float(reference.abs().max()), *(float(g.abs().max()) for g in ref_grads), 1e-12)
    inputs = [x.to(dtype) for x in (q, k, v, grad_out)]
    rejected, correct = {}, {}
    for name, fn in candidates.items():
        try:
            out, grads = _forward_backward(torch, fn, *inputs)
        except RuntimeError as e:  # no kernel for this dtype/device
            rejected[name] = f"failed: {str(e).splitlines()[0][:160]}"
            continue
        error = max(float((x.double() - r).abs().max()) for x, r in zip((out, *grads), (reference, *ref_grads)))
        if not error <= TOLERANCE[str(dtype).removeprefix("torch.")] * scale:
            rejected[name] = f"wrong: max error {error:.3g} against float64 (scale {scale:.3g})"
            continue
        correct[name] = fn
    if not correct:
        raise RuntimeError(f"no attention kernel computed causal attention correctly: {rejected}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    repeats = {}
    for name, fn in correct.items():  # how many calls make one round long enough to time
        start = time.perf_counter()
        _forward_backward(torch, fn, *full)
        sync()
        repeats[name] = max(1, int(MIN_ROUND_S / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in correct}
    running = dict(correct)
    for rnd in range(ROUNDS):  # alternate, so drift of a shared machine hits every kernel alike
        for name, fn in running.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                _forward_backward(torch, fn, *full)
            sync()
            samples[name].append((time.perf_counter() - start) / repeats[name])
        if rnd == 2:  # a kernel whose fastest round is 1.5x the leader's slowest is out of the race
            leader = min(max(samples[n]) for n in running)
            running = {n: f for n, f in running.items() if min(samples[n]) <= SEPARATED * leader}
    times = {name: statistics.median(s) for name, s in samples.items()}
    return {"attention": min(times, key=times.get), "times_s": times, "rejected": rejected}


def _forward_backward(torch, fn, q, k, v, grad_out):
    """(output, (dq, dk, dv)) of fn on leaf copies of q, k, v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), grads
