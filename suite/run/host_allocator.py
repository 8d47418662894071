"""How the cell's process gets host memory from the C library: `measure.host_allocator`.

A CPU training step frees and re-allocates the same activations every step. glibc's malloc
hands large blocks back to the kernel: a block above its mmap threshold (128 KiB, raised on the
fly up to 32 MiB) is unmapped when freed, and free memory at the top of the heap beyond the trim
threshold is trimmed. The next step maps that memory again and the kernel zero-fills it page by
page. Measured (fp32, 2-core AMD EPYC, glibc 2.36; how: bench/README.md):
the `small` model (4 x 256, seq 256, batch 8) took 1,000-21,000 page faults per step, and a
2-layer model with GPT-2's 50,257-token vocabulary 440,000 (1.7 GB zero-filled) per step.

Policies:
- `reuse` (default): freed blocks up to 32 MiB stay with malloc (mmap threshold fixed at
  32 MiB, glibc's own ceiling for its moving threshold; trimming off), so the next step takes
  them back without a page fault. Blocks above 32 MiB are mapped afresh as under `system`.
  `small`: ~0 faults per step, steps 1.026x faster, peak RSS +1 % (7 MB).
- `cache`: every block up to 2 GiB stays with malloc. The 50,257-vocabulary model: 0 faults,
  steps 1.46x faster, but peak RSS +80 % (3.2 GB against 1.8 GB): glibc 2.36's aligned
  allocation (torch asks for 64-byte alignment) cannot hand a freed block back for a request of
  the same size, so each large buffer strands a copy before the heap settles. Peak memory
  figures of such cells measure the allocator as much as the model; opt-in, for speed.
- `system`: malloc as the C library configures it.

This is what the PyTorch CPU tuning guide gets from jemalloc/tcmalloc, without a library to
preload. A user's own allocator settings win: with glibc's malloc tunables in the environment
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES=glibc.malloc...) or a
jemalloc/tcmalloc/mimalloc in LD_PRELOAD nothing is changed, and the record says `system` and
why. So does a C library other than glibc (musl, macOS): there is no `mallopt` to call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from suite.config.spec.measure import HOST_ALLOCATORS as POLICIES

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# policy -> mmap threshold in bytes. mallopt takes an int: 2 GiB - 1 is the largest it can be
# given; a block above the threshold is still mapped and unmapped by itself.
MMAP_THRESHOLD = {"reuse": 32 * 2**20, "cache": 2**31 - 1}
NO_TRIM = 2**31 - 1  # trim only when 2 GiB lie free at the top of the heap: never, in practice
USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def apply_host_allocator(policy: str) -> dict:
    """Configure this process's malloc for `policy` (one of POLICIES) and return the record's
    fields: {"host_allocator": the policy the process now runs with; "host_allocator_reason":
    None, or why the policy asked for was not applied (the process then runs `system`)}.
    Process-wide and one-way: call it once, at the start of a cell's process."""
    if policy not in POLICIES:
        raise ValueError(f"measure.host_allocator: {policy!r} is not one of {', '.join(POLICIES)}")
    reason = _why_not_configurable() if policy in MMAP_THRESHOLD else None
    if policy in MMAP_THRESHOLD and not reason:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # 1 on success, 0 when glibc refuses the value
        if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD[policy]) and mallopt(M_TRIM_THRESHOLD, NO_TRIM):
            return {"host_allocator": policy, "host_allocator_reason": None}
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
