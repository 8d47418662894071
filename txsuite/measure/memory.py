"""Peak memory of the cell's own process.

- host RSS: `ru_maxrss` of this process, the kernel's high-water mark of resident memory since
  the process started (includes the Python interpreter and torch's libraries, a few hundred MB; the
  baseline before the model is built is reported beside it so the delta can be read).
- CUDA: torch's caching allocator, read from `torch.cuda.memory_stats` (docs/gpu.md):
  max allocated (`allocated_bytes.all.peak`: bytes of live tensors at their high-water mark),
  max reserved (`reserved_bytes.all.peak`: segments held from the driver, allocated + cached),
  allocation retries (`num_alloc_retries`: a cudaMalloc failed, the cache was flushed and the
  allocation retried - slow, and a sign of fragmentation near the memory limit), OOMs
  (`num_ooms`), and fragmentation two ways:
    cuda_fragmentation = 1 - max allocated / max reserved: the share of the reserved
        high-water mark that did not hold tensors at the allocated high-water mark (cached free
        blocks plus fragments). Both are peaks since the last `reset_peak_memory_stats`; they
        can fall at different moments, but reserved >= allocated at every moment, so it lies
        in [0, 1).
    cuda_inactive_split_peak_bytes (`inactive_split_bytes.all.peak`): the most bytes ever
        stranded in free pieces of split blocks: fragmentation proper (free, but unusable for a
        larger request and not returnable to the driver).
  Retries and OOMs are cumulative counters since the process started (not reset by
  `reset_peak_memory_stats`). A value the allocator does not report is None, never 0.
"""
from __future__ import annotations

import contextlib
import resource
import sys


def minor_page_faults() -> int:
    """Page faults of this process so far that the kernel served without I/O: mostly fresh
    anonymous pages it had to zero-fill (ru_minflt, all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def host_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _address_space_bytes() -> tuple[int, int]:
    """(mapped, resident) bytes of this process now: /proc/self/statm's size and resident
    pages (VmSize and VmRSS). Linux only."""
    import os
    with open("/proc/self/statm") as fh:
        size, resident = (int(v) for v in fh.read().split()[:2])
    page = os.sysconf("SC_PAGE_SIZE")
    return size * page, resident * page


def mapped_not_resident_bytes() -> int:
    """Address space this process has mapped but not resident now: library mappings never
    touched, reserved stacks."""
    mapped, resident = _address_space_bytes()
    return max(0, mapped - resident)


def host_current_rss_bytes() -> int:
    return _address_space_bytes()[1]


class TrainingWindow:
    """The resident memory the training steps themselves add, on Linux with glibc.

    Memory the build freed (kernel trials, tokenizer, data) can stay resident in glibc's heap,
    and the kernel's high-water mark remembers the build's own peak: read as they are, "peak
    minus before" charges training with neither what it uses nor what the build did. So `open`
    first hands freed heap memory back to the system (malloc_trim) and resets the high-water
    mark to the current resident set (/proc/self/clear_refs, value 5, Linux >= 4.0); `peak` is
    then the high-water mark of the training window alone (VmHWM). What the build leaves live
    and warm (a kernel library's caches, thread pools) still counts as before-training memory:
    a cell's first repetition on a fresh host, which runs the kernel trials, reads lower train
    memory than the next (docs/verdicts.md). Where either step is unavailable, `peak` is None
    and the caller keeps the process's whole peak.

    What runs inside the window but is not training (the machine-state probe's workload, a few
    MiB of its own tensors) runs under `excluded()`: the mark reached before it is kept, and the
    mark starts again after it."""

    def __init__(self):
        self.before = host_current_rss_bytes()
        self.reset = False
        self.held_peak = 0  # the high-water mark reached before the last `excluded` part

    def open(self) -> "TrainingWindow":
        self.reset = _reset_high_water_mark()
        self.before = host_current_rss_bytes()
        self.held_peak = 0
        return self

    def restart_peak(self) -> None:
        """Hand freed heap memory back and reset the high-water mark again, keeping `before`:
        after the profiled warm-up step, whose profiler holds memory of its own that is not
        training's (the steps that follow reach training's steady peak)."""
        if self.reset:
            self.reset = _reset_high_water_mark()
            self.held_peak = 0

    @contextlib.contextmanager
    def excluded(self):
        """A part of the window whose own memory is not training's: its peak does not count.
        The heap is not trimmed after it (the steps that follow find it as they left it), so
        what the part leaves resident, freed but kept by glibc, counts only where the steps
        themselves reach it."""
        if self.reset:
            self.held_peak = max(self.held_peak, _high_water_mark() or 0)
        try:
            yield
        finally:
            if self.reset:
                self.reset = _restart_high_water_mark()

    def peak(self) -> int | None:
        if not self.reset:
            return None
        mark = _high_water_mark()
        return None if mark is None else max(mark, self.held_peak)


def _high_water_mark() -> int | None:
    """VmHWM of this process in bytes (None: not readable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """malloc_trim, then VmHWM := VmRSS; False where the kernel refuses."""
    _malloc_trim()
    return _restart_high_water_mark()


def _restart_high_water_mark() -> bool:
    """VmHWM := VmRSS (/proc/self/clear_refs, value 5); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to hand back this way
        pass


def cuda_memory(torch, device) -> dict:
    return cuda_memory_from_stats(torch.cuda.memory_stats(device))


def cuda_memory_from_stats(stats: dict) -> dict:
    """The record's CUDA memory fields from a `torch.cuda.memory_stats()` dict (pure).
    An empty dict (allocator statistics unavailable, e.g. PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    gives None everywhere."""
    allocated = stats.get("allocated_bytes.all.peak")
    reserved = stats.get("reserved_bytes.all.peak")
    return {
        "cuda_max_allocated_bytes": allocated,
        "cuda_max_reserved_bytes": reserved,
        "cuda_alloc_retries": stats.get("num_alloc_retries"),
        "cuda_ooms": stats.get("num_ooms"),
        "cuda_fragmentation": (1 - allocated / reserved) if (allocated is not None and reserved) else None,
        "cuda_inactive_split_peak_bytes": stats.get("inactive_split_bytes.all.peak"),
    }
