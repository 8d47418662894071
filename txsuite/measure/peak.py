"""The host's matmul peak at a given precision, measured once and cached (never a table).

MFU = achieved model FLOP/s / this peak (`utilization`). The peak is the best of several timed
square matmuls large enough to saturate the device; it is cached per (device model, torch
version, thread count, precision) under the txsuite cache folder, so every cell on a host
shares one figure. On CUDA the precisions are bf16/fp16 tensor cores, tf32 tensor cores, fp32
with tf32 explicitly off, and fp8 (`torch._scaled_mm`, e4m3 x e4m3 -> bf16, compute capability
>= 8.9). The vendor's nominal dense peak (txsuite.measure.nominal) is returned beside it, for
reference only: a datasheet figure is never used as the denominator of `mfu`.

A stable denominator (issue 31: the same cell read a lower MFU at a higher tokens/s in a later
run, its peak having moved between them; docs/gpu.md, "A stable peak, named in every record"):
- measured under the cells' own conditions: the thread count and the OpenMP spin setting
  (GOMP_SPINCOUNT / OMP_WAIT_POLICY, which the runner sets for CPU cells) are part of the key,
  and the sweep measures it in a process started as its cells are (txsuite.run.host_setup);
- the best of several timed bursts is kept, with every burst's figure and their spread;
- a later measurement replaces a cached peak only when it is higher (a noisy moment can only
  make a reading lower), so two runs on one host divide by one figure;
- every record names the peak it divided by (`mfu_peak`: value, dtype, key, when measured,
  spread), so two records with the same peak have MFU ratios equal to their tokens/s ratios.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

from txsuite.measure.host_cache import locked_update

# matmul dtype of each cell precision
MATMUL_DTYPE = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                "fp16": "float16", "fp8": "float8"}


def utilization(tokens_per_s: float | None, flops_per_token: float | None,
                hardware_flops_per_token: float | None, peak_flops: float | None,
                world: int = 1) -> tuple[float | None, float | None]:
    """(MFU, HFU) of a run (pure arithmetic).

    tokens_per_s              global tokens per second (all ranks together)
    flops_per_token           model FLOPs per token for forward + backward (no recomputation)
    hardware_flops_per_token  FLOPs per token the hardware actually executes (model FLOPs plus
                              the forward passes recomputed under activation checkpointing)
    peak_flops                one device's peak FLOP/s at the cell's precision
    world                     devices (ranks) the run used

    MFU = tokens_per_s * flops_per_token / (peak_flops * world), HFU likewise with the hardware
    FLOPs. Either is None when an input is missing or the peak is not positive."""
    if tokens_per_s is None or not peak_flops or peak_flops <= 0 or world < 1:
        return None, None
    capacity = peak_flops * world
    mfu = tokens_per_s * flops_per_token / capacity if flops_per_token is not None else None
    hfu = tokens_per_s * hardware_flops_per_token / capacity if hardware_flops_per_token is not None else None
    return mfu, hfu


class PeakReading(float):
    """A peak measurement: the best burst's FLOP/s, with every burst's figure (`trials`)."""
    trials: tuple[float, ...] = ()

    def __new__(cls, best: float, trials: tuple[float, ...] = ()) -> "PeakReading":
        reading = super().__new__(cls, best)
        reading.trials = tuple(trials)
        return reading


# GOMP_SPINCOUNT a CPU cell's worker gets unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT
# (txsuite.run.runner.worker_env says why)
CELL_SPINCOUNT = "10000"


def cell_openmp_env(env) -> dict[str, str]:
    """The OpenMP spin variable a CPU cell's worker is given on top of `env`: none where the user
    chose OMP_WAIT_POLICY, else GOMP_SPINCOUNT (the user's, or CELL_SPINCOUNT)."""
    if "OMP_WAIT_POLICY" in env:
        return {}
    return {"GOMP_SPINCOUNT": env.get("GOMP_SPINCOUNT", CELL_SPINCOUNT)}


def spin_setting(env=os.environ) -> str:
    """The OpenMP setting that decides whether idle threads spin (cell_openmp_env): part of a
    CPU peak's key."""
    if env.get("OMP_WAIT_POLICY"):
        return f"wait {env['OMP_WAIT_POLICY'].lower()}"
    return f"spin {env.get('GOMP_SPINCOUNT') or 'default'}"


def format_peak_key(device_name: str, torch_version: str, threads: int, kind: str, spin: str | None = None,
                    op: str = "linear") -> str:
    """A peak's cache key from its parts (threads 0 and no spin setting on CUDA): `op` "linear"
    for a matmul peak of dtype `kind`, "copy" for the memory bandwidth (kind BANDWIDTH_KIND). The
    plan's predictions (txsuite.measure.predict) build it without torch."""
    spin_part = f"|{spin}" if spin else ""
    return f"{device_name}|torch {torch_version}|threads {threads}{spin_part}|{op}|{kind}"


BANDWIDTH_KIND = "bytes"  # the kind of the memory bandwidth's key (op "copy")


def peak_key(torch, device, precision: str, device_name: str) -> str:
    """The cache key of a peak: device model, torch, threads and spin setting (CPU), the op
    measured ("linear": F.linear, the op nn.Linear runs; an earlier version timed `a @ b`, which
    for fp16 on a CPU takes a far slower path, and those entries are not reused) and its dtype."""
    return host_key(torch, device, device_name, MATMUL_DTYPE[precision], "linear")


def host_key(torch, device, device_name: str, kind: str, op: str) -> str:
    """A cached measurement's key under this process's conditions: threads and the OpenMP spin
    setting on CPU, neither on CUDA."""
    if device.type == "cpu":
        return format_peak_key(device_name, torch.__version__, torch.get_num_threads(), kind, spin_setting(), op=op)
    return format_peak_key(device_name, torch.__version__, 0, kind, op=op)


def peak_flops(torch, device, precision: str, device_name: str, at_least: float | None = None) -> dict:
    """-> {"peak_flops": measured FLOP/s, "peak_key": cache key, "peak_cached": bool,
    "peak_remeasured": bool, "nominal_peak_flops": the vendor's dense FLOP/s for this device and
    precision, or None, "peak": what a record's `mfu_peak` states (peak_record)}.

    A peak is the most the device does; a measurement can only fall short of it (another
    process on the cores, a clock not yet up). So the cache keeps the best measurement, and a
    cached peak below `at_least` (FLOP/s a cell has just achieved with matmuls, which cannot
    exceed the true peak) is measured again and replaced by the better of the two. Found here:
    a 2-thread fp32 peak cached while a neighbour loaded the cores made a cell report MFU above
    100 % (docs/measurements.md, "Precision, attention, batch and checkpointing")."""
    from txsuite.measure.nominal import nominal_peak_flops
    nominal = nominal_peak_flops(device_name, precision) if device.type == "cuda" else None
    kind = MATMUL_DTYPE[precision]
    key = peak_key(torch, device, precision, device_name)

    def best(cache: dict) -> tuple[dict, bool, bool]:
        entry = cache.get(key)
        if entry is not None and (at_least is None or entry["flops"] >= at_least or _recent(entry)):
            return entry, True, False
        cache[key] = kept_peak(entry, measure_matmul_flops(torch, device, kind), time.strftime("%Y-%m-%dT%H:%M:%S"))
        return cache[key], False, entry is not None
    entry, cached, remeasured = locked_update("peaks.json", best)
    return {"peak_flops": entry["flops"], "peak_key": key, "peak_cached": cached, "peak_remeasured": remeasured,
            "nominal_peak_flops": nominal, "peak": peak_record(entry, key, kind)}


def bandwidth_key(torch, device, device_name: str) -> str:
    """The cache key of the memory bandwidth: device model, torch, threads and spin setting (CPU)."""
    return host_key(torch, device, device_name, BANDWIDTH_KIND, "copy")


def memory_bandwidth(torch, device, device_name: str) -> dict:
    """-> {"memory_bandwidth": bytes read and written per second, "bandwidth_key": its cache key,
    "bandwidth_cached": bool}: the host's memory bandwidth, measured once under the cells'
    conditions (threads, OpenMP spin setting) and cached beside the matmul peaks. The plan's
    uncorrected roofline divides the bytes a step moves by it (txsuite.measure.predict)."""
    key = bandwidth_key(torch, device, device_name)
    entry, cached = measured_once(key, lambda: kept_peak(None, measure_copy_bandwidth(torch, device),
                                                         time.strftime("%Y-%m-%dT%H:%M:%S"), field="bytes_per_s"))
    return {"memory_bandwidth": entry["bytes_per_s"], "bandwidth_key": key, "bandwidth_cached": cached}


def measured_once(key: str, measure: Callable[[], dict]) -> tuple[dict, bool]:
    """-> (the entry cached under `key` in peaks.json, whether it was cached): `measure()`'s entry,
    stamped `measured_at` unless it says when, made and cached only where none is. Unlike a matmul
    peak (peak_flops), a later reading never replaces it: a bandwidth, an overhead or an optimizer
    step has no 'best' that a noisy moment could only fall short of."""
    def read_or_measure(cache: dict) -> tuple[dict, bool]:
        entry = cache.get(key)
        if isinstance(entry, dict):
            return entry, True
        cache[key] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **measure()}
        return cache[key], False
    return locked_update("peaks.json", read_or_measure)


# the buffer a bandwidth burst copies: on a CPU twice the largest last-level cache of this
# project's hosts (32 MiB), so the copy streams through memory rather than the cache
COPY_BYTES = {"cpu": 64 * 2**20, "cuda": 2**30}


def measure_copy_bandwidth(torch, device, seconds: float = 0.1, trials: int = 5) -> PeakReading:
    """Best bytes per second (read + written) over `trials` timed bursts of copying one buffer of
    COPY_BYTES into another (Tensor.copy_, on the cell's threads), with every burst's figure."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = COPY_BYTES["cuda" if device.type == "cuda" else "cpu"] // 4
    source = torch.ones(n, device=device)
    target = torch.empty(n, device=device)
    target.copy_(source)  # both buffers' pages touched before the clock starts
    sync()
    readings = []
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while True:
            target.copy_(source)
            count += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        readings.append(2 * 4 * n * count / elapsed)
    return PeakReading(max(readings), tuple(readings))


def kept_peak(entry: dict | None, reading: float, now: str, field: str = "flops") -> dict:
    """The cache entry after a measurement: the new reading (its bursts and their spread) when it
    is the first or higher than the cached peak; else the cached entry unchanged but for
    `checked_at` and `lower_reading`, so a noisy moment never lowers the peak, and says so.
    `field`: what the reading is ("flops", or "bytes_per_s" for the memory bandwidth)."""
    if entry is not None and entry[field] >= reading:
        return {**entry, "checked_at": now, "lower_reading": float(reading)}
    trials = [float(t) for t in getattr(reading, "trials", ())] or [float(reading)]
    return {field: float(reading), "measured_at": now, "trials": trials, "spread": spread(trials)}


def spread(trials: list[float]) -> float:
    """(best - median) / best of a peak's bursts: how far a typical burst fell short of the kept
    one (0 when they agree; a loaded host gives a large spread)."""
    best = max(trials)
    return round((best - statistics.median(trials)) / best, 4) if best > 0 else 0.0


def peak_record(entry: dict, key: str, kind: str) -> dict:
    """The peak as a record names it (`mfu_peak`): the FLOP/s MFU divides by, its matmul dtype,
    its cache key, when it was measured, its bursts' spread and count."""
    return {"flops": entry["flops"], "dtype": kind, "key": key, "measured_at": entry.get("measured_at"),
            "spread": entry.get("spread"), "trials": len(entry.get("trials") or ()) or None}


REMEASURE_AFTER_S = 600  # a peak measured this recently is not measured again for one cell


def _recent(entry: dict) -> bool:
    """Measured less than REMEASURE_AFTER_S ago: then a cell above it is not a reason to measure
    again (by the FLOP-counting convention a cell can exceed a fresh peak; cells would otherwise
    each pay a measurement)."""
    try:
        # a reading below the peak (checked_at) counts as a measurement as recent as itself
        measured = time.mktime(time.strptime(entry.get("checked_at") or entry["measured_at"], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, ValueError):
        return False
    return time.time() - measured < REMEASURE_AFTER_S


def measure_matmul_flops(torch, device, kind: str, seconds: float = 0.3, trials: int = 5) -> PeakReading:
    """Best FLOP/s over `trials` timed bursts of n x n x n matmuls (2 n^3 FLOPs each), with every
    burst's figure.

    n grows (CPU: 512 -> 2048, CUDA: 4096 -> 8192) while one matmul stays short, so a slow
    precision (fp16 on a CPU without fp16 units, through `a @ b`) is still measured in about
    a second, and a fast one gets a matrix large enough to saturate it."""
    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tf32_before = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    try:
        for n in sizes:
            mm = _matmul(torch, device, kind, n)
            mm()
            sync()
            start = time.perf_counter()
            mm()
            sync()
            if time.perf_counter() - start > 0.05:
                break
        readings = []
        for _ in range(trials):
            count, start = 0, time.perf_counter()
            while True:
                mm()
                count += 1
                # CUDA launches are asynchronous: synchronise only every few launches
                if device.type != "cuda" or count % 8 == 0:
                    sync()
                    elapsed = time.perf_counter() - start
                    if elapsed >= seconds:
                        break
            readings.append(2 * n ** 3 * count / elapsed)
        return PeakReading(max(readings), tuple(readings))
    finally:
        if tf32_before is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32_before


def _matmul(torch, device, kind: str, n: int):
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    if kind == "float8":
        # _scaled_mm wants the second operand column-major
        a, b = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.tensor(1.0, device=device)
        # fast accumulation: the faster mode on Hopper, which torchao's forward GEMM uses; the
        # peak must be the best the device does, or fp8 MFU would be flattered
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                        use_fast_accum=True)
    if device.type == "cuda":  # fp32 must not silently run on tf32 tensor cores (restored after)
        torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    if kind != "tf32":
        a, b = a.to(getattr(torch, kind)), b.to(getattr(torch, kind))
    # F.linear (a @ b.T), the op the model's nn.Linear layers run: on a CPU without fp16 units
    # `a @ b` in fp16 takes a reference path far slower (docs/measurements.md,
    # "Precision, attention, batch and checkpointing"), which made fp16 cells report MFU above
    # 100%. Same FLOPs, same cuBLAS on CUDA.
    return lambda: torch.nn.functional.linear(a, b)
