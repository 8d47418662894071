"""How the cell's process gets host memory from the C library: `measure.host_allocator`.

A CPU training step frees and re-allocates the same activations every step. glibc's malloc
hands large blocks back to the kernel: a block above its mmap threshold (128 KiB, raised on the
fly up to 32 MiB) is unmapped when freed, and free memory at the top of the heap beyond the trim
threshold is trimmed. The next step maps that memory again and the kernel zero-fills it page by
page. Measured (fp32, 2-core AMD EPYC, glibc 2.36): the `small` model (4 x 256, seq 256, batch
8) took 1,000-21,000 page faults per step, and a 2-layer model with GPT-2's 50,257-token
vocabulary 440,000 (1.7 GB zero-filled) per step.

Policies:
- `system` (default): malloc as the C library configures it.
- `cache`: every block up to 2 GiB stays with malloc (mmap threshold 2 GiB, trimming off): in
  steady state a step takes no page fault at all. Much faster where large blocks are freed
  every step, but the peak resident memory then includes what the allocator holds, and that
  distorts memory comparisons. glibc 2.36's aligned allocation (torch asks for 64-byte
  alignment) cannot give a freed block back for a request of the same size, so a large buffer
  allocated every step strands a copy or a few before the heap settles.

Measured with `txsuite run` (fp32, 2-core AMD EPYC, glibc 2.36, one process per repetition):
- matrices/allocator.yaml (2 layers x 256, 32,768-token BPE vocabulary, 12 steps, 2 repeats),
  two runs: `cache` 1,906 / 2,085 and 1,846 / 1,802 tokens/s against 1,219 / 1,458 and
  1,313 / 1,290 under `system` (1.40-1.57x); 4,700 page faults per step against 241,000; peak
  RSS 1,519 and 1,822 MiB against 1,292-1,359 and 1,348 (+12-18 % and +35 %: how much `cache`
  strands depends on the heap's history).
- matrices/checkpointing.yaml (8 x 512, seq 512): no checkpointing 1,903-1,913 MiB peak against
  1,926-1,927; full checkpointing 1,731-1,798 against 1,546-1,570. The saving full
  checkpointing shows falls from 356-381 MiB to 115-172 MiB: under `cache` the figure measures
  the allocator as much as the technique. Hence `system` is the default, as peak memory is one
  of the suite's two headline figures; `cache` is for throughput studies, where it is what
  the CPU runs at without the kernel zero-filling freed memory again every step.
- The `small` model (vocabulary 256, no block above 8 MiB): 1,000-21,000 faults per step
  become ~0, and steps ran 1.00-1.04x faster in three interleaved comparisons, within noise.
An intermediate policy (keep only blocks up to 32 MiB) was tried and dropped: no speed gain
beyond noise, and still +6 % peak RSS under full checkpointing.

This is what the PyTorch CPU tuning guide gets from jemalloc/tcmalloc, without a library to
preload. A user's own allocator settings win over `cache`: with glibc's malloc tunables in the
environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES=glibc.malloc...) or
a jemalloc/tcmalloc/mimalloc in LD_PRELOAD nothing is changed, and a `cache` cell is recorded
as `skipped` with the reason (run as it is, it would be a `system` cell under another label).
So is one on a C library other than glibc (musl, macOS): there is no `mallopt` to call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from txsuite.config.spec.measure import HOST_ALLOCATORS as POLICIES

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# `cache`: mallopt takes an int, 2 GiB - 1 is the largest threshold it can be given. A block
# above it is still mapped and unmapped by itself; trimming starts only when 2 GiB lie free at
# the top of the heap: never, in practice.
CACHE_THRESHOLD = 2**31 - 1
USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def apply_host_allocator(policy: str) -> dict:
    """Configure this process's malloc for `policy` (one of POLICIES) and return the record's
    fields: {"host_allocator": the policy the process now runs with; "host_allocator_reason":
    None, or why the policy asked for was not applied (the process then runs `system`)}.
    Process-wide and one-way: call it once, at the start of a cell's process."""
    if policy not in POLICIES:
        raise ValueError(f"measure.host_allocator: {policy!r} is not one of {', '.join(POLICIES)}")
    reason = _why_not_configurable() if policy == "cache" else None
    if policy == "cache" and not reason:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # 1 on success, 0 when glibc refuses the value
        if mallopt(M_MMAP_THRESHOLD, CACHE_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, CACHE_THRESHOLD):
            return {"host_allocator": "cache", "host_allocator_reason": None}
        reason = "glibc's mallopt refused the thresholds"
    return {"host_allocator": "system", "host_allocator_reason": reason}


def _why_not_configurable() -> str | None:
    """None when malloc can be configured here, else the reason it is not."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent on musl and macOS
    except (ValueError, OSError):
        libc = None
    if not (libc or "").startswith("glibc"):
        return f"the C library of this {platform.system()} host is not glibc: no mallopt to call"
    preloaded = [name for name in PRELOADED_ALLOCATORS if name in os.environ.get("LD_PRELOAD", "")]
    if preloaded:
        return f"{preloaded[0]} is preloaded (LD_PRELOAD): it, not glibc's malloc, serves the cell"
    tunables = [name for name in USER_TUNABLES if os.environ.get(name)
                and (name != "GLIBC_TUNABLES" or "malloc" in os.environ[name])]
    if tunables:
        return f"{tunables[0]} is set in the environment: the user's malloc settings are kept"
    return None
