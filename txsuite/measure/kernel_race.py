"""Timing candidate kernels against each other on a shared machine (the `auto` choices:
txsuite.measure.attention, txsuite.measure.linear).

Each candidate is a zero-argument callable that runs the kernel once (forward and backward on
inputs it already holds). A round calls it enough times to last MIN_ROUND_S; candidates
alternate round by round, so a neighbour's load or the clock's drift hits every kernel alike.
After EARLY_ROUNDS a candidate whose fastest round is SEPARATED times the leader's slowest is
out of the race: it has lost beyond any noise, and timing it further only costs the cell time
(an emulated bf16 kernel takes a second per call).

What races: either the kernels alone (forward and backward of the one operation), or, through a
BlockTrial, each kernel inside a whole Transformer block of the cell's shape and precision. The
block is what predicts the step: an isolated kernel trial chose SDPA for a bf16 cell (faster
alone) whose whole step then ran faster with plain matmul attention (issue 31), because the
rest of the block (the casts, the layouts the kernels hand on, the threads' state) changes
which kernel wins. The kernels are still checked alone for correctness first (cheap, and exact).
"""
from __future__ import annotations

import functools
import hashlib
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

from txsuite.measure.host_cache import measured_once

ROUNDS = 5  # timed rounds per candidate, alternating
EARLY_ROUNDS = 3  # rounds every candidate runs before the clearly slower ones stop
SEPARATED = 1.5  # min(candidate) / max(leader) beyond this ends the candidate's race
MIN_ROUND_S = 0.02  # a round repeats the kernel until it has run this long (short shapes)
# max |kernel - float64 reference| allowed, relative to the reference's largest magnitude: a few
# units in the last place of the dtype, summed over the products' reduction (T terms for
# attention, d_in for a linear layer)
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}


Race = Callable[[dict[str, Callable[[], object]], Callable[[], None]], dict[str, list[float]]]


@dataclass(frozen=True)
class BlockTrial:
    """A trial at the level of a whole block. shape_key: the block's shape and precision (part of
    the cache key, so a block trial never reads an isolated kernel's entry); steps(names) ->
    {name: a zero-argument callable running one forward + backward of the block with that
    kernel}, for the kernel names that passed the correctness check."""
    shape_key: str
    steps: Callable[[list[str]], dict[str, Callable[[], object]]]


def measured_choice(cache_file: str, torch, device, device_name: str, dtype: str, shape_key: str,
                    kernels: dict[str, Callable], measure: Callable[[], dict], use_cache: bool) -> dict:
    """measure()'s entry for this host, torch, thread count and OpenMP spin setting (CPU), dtype,
    shape and set of kernels, from the host's cache_file when it has one
    (txsuite.measure.host_cache), with "key" and "cached" added. use_cache=False measures without
    reading or writing the cache (tests)."""
    from txsuite.measure.peak import spin_setting
    threads = f"threads {torch.get_num_threads()}|{spin_setting()}" if device.type == "cpu" else "threads 0"
    key = (f"{device_name}|torch {torch.__version__}|{threads}|{dtype}|{shape_key}|{','.join(sorted(kernels))}"
           f"|code {kernels_code({**kernels, 'decided by': measure, 'raced by': race})}")
    entry, cached = measured_once(cache_file, key, measure) if use_cache else (measure(), False)
    return {**entry, "key": key, "cached": cached}


def kernels_code(kernels: dict[str, Callable]) -> str:
    """A digest of the source files that define these callables (for the model's attention
    kernels txsuite/model/gpt.py, whose Block the block trial also runs; measured_choice adds the
    trial and the decision rule): a cached choice was made by that code, and a change to it (a
    faster kernel, a stricter rule) must be measured again, not read back."""
    files = set()
    for fn in kernels.values():
        while isinstance(fn, functools.partial):
            fn = fn.func
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if getattr(module, "__file__", None):
            files.add(module.__file__)
    digest = hashlib.sha1()
    for path in sorted(files):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def device_sync(torch, device) -> Callable[[], None]:
    """What waits for the device's queued work: CUDA's synchronize, nothing on a CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def race_candidates(torch, device, correct: dict[str, Callable], inputs, grad_out, block: BlockTrial | None,
                    race_fn: Race | None = None) -> tuple[dict[str, list[float]], str]:
    """(samples, "block" or "kernel"): the correct kernels raced inside the block when there is
    one, else alone (forward + backward on `inputs`, leaf copies, with `grad_out`). race_fn:
    race() unless a test injects its measurements."""
    race_fn = race_fn or race
    if block is not None:
        return race_fn(block.steps(list(correct)), device_sync(torch, device)), "block"
    return race_fn({name: functools.partial(forward_backward, torch, fn, inputs, grad_out)
                    for name, fn in correct.items()}, device_sync(torch, device)), "kernel"


def race(candidates: dict[str, Callable[[], object]], sync: Callable[[], None] = lambda: None
         ) -> dict[str, list[float]]:
    """{name: seconds per call of each round it ran}. `sync` waits for the device (CUDA)."""
    repeats = {}
    for name, run in candidates.items():  # how many calls make one round long enough to time
        start = time.perf_counter()
        run()
        sync()
        repeats[name] = max(1, int(MIN_ROUND_S / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    running = dict(candidates)
    for rnd in range(ROUNDS):
        for name, run in running.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                run()
            sync()
            samples[name].append((time.perf_counter() - start) / repeats[name])
        if rnd == EARLY_ROUNDS - 1:
            leader = min(max(samples[n]) for n in running)
            running = {n: r for n, r in running.items() if min(samples[n]) <= SEPARATED * leader}
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(s) for name, s in samples.items()}


def decide(samples: dict[str, list[float]], default: str) -> str:
    """`default`, unless another kernel's slowest round beat the default's fastest (then the
    fastest such kernel by median): a choice away from the default kernel must be beyond the
    trial's noise."""
    floor = min(samples[default])
    clear = {name: s for name, s in samples.items() if name != default and max(s) < floor}
    if not clear:
        return default
    times = medians(clear)
    return min(times, key=times.get)


def forward_backward(torch, fn, inputs, grad_out):
    """(output, input gradients) of fn(*inputs) on leaf copies of inputs, given the output's
    gradient."""
    leaves = tuple(x.detach().requires_grad_() for x in inputs)
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads


def screen(torch, candidates: dict[str, Callable], reference: Callable, inputs, grad_out, dtype
           ) -> tuple[dict[str, Callable], dict[str, str]]:
    """(correct, rejected): each candidate's output and input gradients on `inputs` (cast to
    dtype) against `reference` in float64; max |error| beyond TOLERANCE[dtype] x the reference's
    largest magnitude rejects it, so a kernel that is fast but wrong is never chosen. rejected:
    name -> why (an exception: no kernel for this dtype or device)."""
    tolerance = TOLERANCE[str(dtype).removeprefix("torch.")]
    expected, expected_grads = forward_backward(torch, reference, [x.double() for x in inputs], grad_out.double())
    scale = max(float(expected.abs().max()), *(float(g.abs().max()) for g in expected_grads), 1e-12)
    rejected, correct = {}, {}
    for name, fn in candidates.items():
        try:
            out, grads = forward_backward(torch, fn, [x.to(dtype) for x in inputs], grad_out.to(dtype))
        except RuntimeError as e:
            rejected[name] = f"failed: {str(e).splitlines()[0][:160]}"
            continue
        error = max(float((x.double() - r).abs().max())
                    for x, r in zip((out, *grads), (expected, *expected_grads)))
        if not error <= tolerance * scale:
            rejected[name] = f"wrong: max error {error:.3g} against float64 (scale {scale:.3g})"
            continue
        correct[name] = fn
    return correct, rejected
