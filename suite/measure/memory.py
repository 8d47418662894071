"""Peak memory of the cell's own process.

- host RSS: `ru_maxrss` of this process, the kernel's high-water mark of resident memory since
  the process started (includes the Python interpreter and torch's libraries, ~0.3-0.5 GB; the
  baseline before the model is built is reported beside it so the delta can be read).
- CUDA: torch's caching allocator: max allocated (tensors alive at the peak) and max reserved
  (allocated + cached blocks held from the driver), and allocation retries (cudaMalloc failed,
  cache flushed, retried: a sign of fragmentation near the memory limit).
"""
from __future__ import annotations

import resource
import sys


def host_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def host_current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os
    return pages * os.sysconf("SC_PAGE_SIZE")


def cuda_memory(torch, device) -> dict:
    stats = torch.cuda.memory_stats(device)
    reserved = torch.cuda.max_memory_reserved(device)
    allocated = torch.cuda.max_memory_allocated(device)
    return {
        "cuda_max_allocated_bytes": allocated,
        "cuda_max_reserved_bytes": reserved,
        "cuda_alloc_retries": stats.get("num_alloc_retries", 0),
        # share of reserved memory not holding tensors at the peak
        "cuda_fragmentation": (1 - allocated / reserved) if reserved else None,
    }
