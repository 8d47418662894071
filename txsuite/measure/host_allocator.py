"""How the cell's process gets host memory from the C library: `measure.host_allocator`.

A CPU training step frees and re-allocates the same activations every step. glibc's malloc
hands large blocks back to the kernel: a block above its mmap threshold (128 KiB, raised on the
fly up to 32 MiB) is unmapped when freed, and free memory at the top of the heap beyond the trim
threshold is trimmed. The next step maps that memory again and the kernel zero-fills it page by
page. The `small` model takes thousands of page faults per step that way, and a 2-layer model
with GPT-2's 50,257-token vocabulary hundreds of thousands, gigabytes zero-filled per step (the
figures, their date and host: docs/measurements.md, "Host memory allocator").

Policies:
- `system` (default): malloc as the C library configures it.
- `cache`: every block up to 2 GiB stays with malloc (mmap threshold 2 GiB, trimming off): in
  steady state a step takes no page fault at all. Much faster where large blocks are freed
  every step, but the peak resident memory then includes what the allocator holds, and that
  distorts memory comparisons. glibc 2.36's aligned allocation (torch asks for 64-byte
  alignment) cannot give a freed block back for a request of the same size, so a large buffer
  allocated every step strands a copy or a few before the heap settles.

What `txsuite run` measured (docs/measurements.md, "Host memory allocator", has the figures
with their date, host and command):
- matrices/allocator.yaml (a large BPE vocabulary): `cache` made steps markedly faster and took
  a small fraction of the page faults, for a higher peak RSS (how much `cache` strands depends
  on the heap's history).
- matrices/checkpointing.yaml: under `cache` the saving full checkpointing shows falls to a
  fraction of what it is under `system`: the figure measures the allocator as much as the
  technique. Hence `system` is the default, as peak memory is one of the suite's two headline
  figures; `cache` is for throughput studies, where it is what the CPU runs at without the
  kernel zero-filling freed memory again every step.
- The `small` model (vocabulary 256, no block above 8 MiB): its faults per step all but vanish,
  and its steps ran no faster beyond noise.
An intermediate policy (keep only blocks up to 32 MiB) was tried and dropped: no speed gain
beyond noise, and still a higher peak RSS under full checkpointing.

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
