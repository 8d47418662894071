"""Shared pieces of the side-by-side benchmarks in this folder (see bench/README.md).

Everything here is exposed through the `kit` fixture (a conftest is not an importable module):
the benchmark setting, pre-made batches, the hand-written training step, the interleaved
timing loop and the statistics (medians, paired ratios, confidence intervals).

Why interleaved: on a shared machine the speed drifts by tens of percent over seconds to
minutes. Two variants timed one after the other would mostly measure that drift; alternating
them step by step (and pairing each step with its neighbour) makes the drift hit both alike.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
import types
from typing import Callable, Iterator, Sequence

# Time the step under the OpenMP setting the runner gives a CPU worker (txsuite/run/runner.py:
# bounded spinning, GOMP_SPINCOUNT=10000, unless the user set OMP_WAIT_POLICY). libgomp reads
# it when it loads, i.e. when torch is first imported: this must run before that.
PLAIN_ENV = dict(os.environ)  # the environment as the user gave it: what a peer's process gets
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
OMP_SETTING_APPLIED = "torch" not in sys.modules

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The setting of the issue and DATA.md's peer figures: 4 layers x 256 wide, 4 heads,
# seq 256, batch 8. Vocabulary: byte-level (256), txsuite's default tokenizer.
N_LAYER, N_HEAD, D_MODEL, D_FF = 4, 4, 256, 1024
SEQ, BATCH, VOCAB = 256, 8, 256
N_BATCHES = 8  # distinct pre-made batches, cycled
# Optimizer/schedule settings shared by every variant (txsuite's TrainSpec defaults).
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP, MIN_LR_RATIO = 3.0e-4, (0.9, 0.95), 0.1, 1.0, 0.1
# Sample counts scale with TXSUITE_BENCH_SCALE (e.g. 0.2 for a quick look, 2 for tighter CIs).
SCALE = float(os.environ.get("TXSUITE_BENCH_SCALE", "1"))
CONFIDENCE = 0.95


def make_batches(n: int = N_BATCHES, vocab: int = VOCAB, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n pre-made (x, y) pairs of int64 [BATCH, SEQ] token ids; y is x shifted by one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=g)
        out.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return out


def cosine_factor(total_steps: int) -> Callable[[int], float]:
    """LR multiplier: cosine from 1 to MIN_LR_RATIO over total_steps (no LR warm-up)."""
    def factor(step: int) -> float:
        progress = min(1.0, step / max(1, total_steps))
        return MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def bare_step(forward: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module,
              batches: Sequence[tuple[torch.Tensor, torch.Tensor]], precision: str,
              total_steps: int, impl: dict | None = None) -> Callable[[], torch.Tensor]:
    """A hand-written PyTorch training step: forward, cross-entropy, backward, clip, AdamW,
    zero_grad, LR schedule. `forward(x)` returns logits [B, T, V]. The AdamW settings are the
    ones txsuite uses (decay on matrices only). `impl` picks the kernel ({"foreach": ...,
    "fused": ...}; each caller says which: the overhead bench copies the cell's, the peer
    bench gives each model its own default); foreach when not given."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, **(impl if impl is not None else {"foreach": True}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(total_steps))
    bf16 = precision == "bf16"
    model.train()
    i = 0

    def step() -> torch.Tensor:
        nonlocal i
        x, y = batches[i % len(batches)]
        i += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


class Samples(list):
    """Timed calls of one variant: (start, duration) pairs in seconds, perf_counter clock."""

    @property
    def durations(self) -> list[float]:
        return [d for _, d in self]

    def median(self) -> float:
        return statistics.median(self.durations)


def timed(fn: Callable[[], object], sink: Samples) -> Callable[[], None]:
    """fn, recording each call's (start, wall time) in sink. Returns None (pytest-benchmark's
    `setup`/`teardown` hooks must)."""
    def run() -> None:
        t0 = time.perf_counter()
        fn()
        sink.append((t0, time.perf_counter() - t0))
    return run


def warm(fns: Sequence[Callable[[], object]], steps: int) -> float:
    """Interleaved warm-up (allocator caches, oneDNN primitives, optimizer state). Returns the
    median wall time of one round (one step of each fn) over the second half of the warm-up."""
    rounds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for fn in fns:
            fn()
        rounds.append(time.perf_counter() - t0)
    return statistics.median(rounds[steps // 2:])


def plan_rounds(round_s: float, budget_s: float, lo: int, hi: int) -> int:
    """Rounds that fit the time budget, within [lo, hi] (all three scaled by
    TXSUITE_BENCH_SCALE, at least 5): fixed before measuring, from the warm-up's round time, so
    a loaded machine runs fewer, slower rounds but never fewer than lo."""
    return max(5, int(min(max(budget_s / round_s, lo), hi) * SCALE))


def rotation(names: Sequence[str], rnd: int) -> list[str]:
    """Order of the variants in round rnd: cycles through every permutation for 2-3 variants
    (AB, BA, ...; ABC, BCA, CAB, CBA, BAC, ACB) so no variant always follows the same one."""
    k = len(names)
    shift = rnd % k
    order = list(names[shift:]) + list(names[:shift])
    return order[::-1] if (rnd // k) % 2 else order


# ---------------------------------------------------------------- statistics ------------

def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Median and a distribution-free confidence interval from order statistics: the
    interval [x_(j), x_(n-j+1)] covers the true median with probability
    1 - 2 P(Binomial(n, 1/2) < j), which is chosen >= confidence."""
    xs = sorted(values)
    n = len(xs)
    med = statistics.median(xs)
    alpha = 1.0 - confidence
    cdf, j = 0.0, 0
    # largest j with P(Bin(n, .5) <= j - 1) <= alpha / 2
    while True:
        p = math.comb(n, j) / 2.0 ** n
        if cdf + p > alpha / 2:
            break
        cdf += p
        j += 1
    if j == 0:  # too few samples for this confidence: the whole range
        return med, xs[0], xs[-1]
    return med, xs[j - 1], xs[n - j]


def paired_bootstrap_ratio(num: Sequence[float], den: Sequence[float], n_boot: int = 4000,
                           confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """median(num) / median(den), with a percentile bootstrap interval that resamples the
    rounds (pairs), so the two medians keep the correlation their interleaving gave them."""
    n = min(len(num), len(den))
    num, den = num[:n], den[:n]
    est = statistics.median(num) / statistics.median(den)
    rng = random.Random(seed)
    reps = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        reps.append(statistics.median([num[i] for i in idx]) / statistics.median([den[i] for i in idx]))
    reps.sort()
    lo = reps[int(math.floor((1 - confidence) / 2 * n_boot))]
    hi = reps[int(math.ceil((1 + confidence) / 2 * n_boot)) - 1]
    return est, lo, hi


def drift_corrected_ratios(num: Samples, den: Samples) -> list[float]:
    """For each step of `num`, its time over the time `den` took at that moment: the linear
    interpolation, at the num step's midpoint, between the den steps just before and just
    after it (one side only at the ends). Drift slower than a few steps cancels, and so does a
    fixed position effect (every num step is bracketed by den steps)."""
    mids = [(t0 + d / 2, d) for t0, d in sorted(den)]
    out = []
    j = 0
    for t0, d in sorted(num):
        m = t0 + d / 2
        while j < len(mids) and mids[j][0] < m:
            j += 1
        before = mids[j - 1] if j > 0 else None
        after = mids[j] if j < len(mids) else None
        if before and after:
            w = (m - before[0]) / (after[0] - before[0])
            ref = before[1] * (1 - w) + after[1] * w
        else:
            ref = (before or after)[1]
        out.append(d / ref)
    return out


def compare(num: Samples, den: Samples) -> dict:
    """The ratio of per-step times num/den measured in the same interleaved run, two ways:
    `paired`  the median of the drift-corrected per-step ratios, with its order-statistic CI:
              the headline figure, robust to the machine's load changing under the run;
    `ratio`   median(num) / median(den), with a bootstrap CI over rounds (paired
              resampling): the plain ratio of the two reported medians."""
    pm, plo, phi = median_ci(drift_corrected_ratios(num, den))
    est, lo, hi = paired_bootstrap_ratio(num.durations, den.durations)
    return {"paired": pm, "paired_ci": (plo, phi), "ratio": est, "ratio_ci": (lo, hi)}


def fmt_ratio(c: dict, invert: bool = False) -> str:
    """`c` as text; invert=True shows den/num (a speed ratio from a time ratio)."""
    def show(x, lo, hi):
        if invert:
            x, lo, hi = 1 / x, 1 / hi, 1 / lo
        return f"{x:.4f} [{lo:.4f}, {hi:.4f}]"
    return (f"{show(c['paired'], *c['paired_ci'])} "
            f"(ratio of medians {show(c['ratio'], *c['ratio_ci'])}; {int(CONFIDENCE * 100)}% CIs)")


def host_line() -> str:
    from txsuite.measure.env import cpu_model
    omp = ", ".join(f"{k}={os.environ[k]}" for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ)
    if not OMP_SETTING_APPLIED:
        omp += " (torch was imported before bench/conftest.py: the OpenMP setting may not apply)"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {omp or 'OpenMP defaults'}, "
            f"{cpu_model()}, load average {os.getloadavg()[0]:.2f}")


def cpu_flags_line() -> str:
    """The instruction sets that decide a CPU step's kernels (bf16 native or emulated)."""
    from txsuite.measure.env import cpu_flags
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    have = set(cpu_flags())
    return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)


@pytest.fixture(scope="session")
def kit() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        N_LAYER=N_LAYER, N_HEAD=N_HEAD, D_MODEL=D_MODEL, D_FF=D_FF, SEQ=SEQ, BATCH=BATCH,
        VOCAB=VOCAB, LR=LR, BETAS=BETAS, WEIGHT_DECAY=WEIGHT_DECAY, GRAD_CLIP=GRAD_CLIP,
        MIN_LR_RATIO=MIN_LR_RATIO, CONFIDENCE=CONFIDENCE, make_batches=make_batches,
        bare_step=bare_step, Samples=Samples, timed=timed, warm=warm, plan_rounds=plan_rounds,
        rotation=rotation, median_ci=median_ci, drift_corrected_ratios=drift_corrected_ratios,
        paired_bootstrap_ratio=paired_bootstrap_ratio, compare=compare, fmt_ratio=fmt_ratio,
        host_line=host_line, cpu_flags_line=cpu_flags_line, cycle=cycle, PLAIN_ENV=PLAIN_ENV,
    )


def cycle(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches
