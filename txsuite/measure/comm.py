"""Share of step time during which a collective or point-to-point transfer is in flight.

Measured with torch.profiler over a few untimed warm-up steps (so the profiler's overhead never
touches the timed steps). gloo records each collective as a `gloo:<op>` event on its worker
threads with the real duration; NCCL kernels appear as `ncclDevKernel*`/`ncclKernel*` CUDA
activities. The intervals are merged before summing, so overlapping transfers count once.
Communication that overlaps computation (DDP's bucketed all-reduce, FSDP's prefetch) is still
counted: the share is the time the network is busy, an upper bound on what it costs the step.
"""
from __future__ import annotations

import re
import time

COMM_EVENT = re.compile(r"^(gloo|nccl):|nccl(Dev)?Kernel", re.IGNORECASE)


def busy_share(intervals: list[tuple[float, float]], wall: float) -> float:
    """Merged length of [start, end) intervals divided by the wall time (same units)."""
    if wall <= 0:
        return 0.0
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return min(1.0, total / wall)


class CommProfiler:
    """start() before the first profiled step, stop() after the last: the comm share."""

    def __init__(self, device_type: str):
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
        self._profile = profile(activities=activities)
        self._t0 = 0.0

    def start(self) -> None:
        self._profile.__enter__()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        wall_us = (time.perf_counter() - self._t0) * 1e6
        self._profile.__exit__(None, None, None)
        intervals = [(e.time_range.start, e.time_range.end) for e in self._profile.events()
                     if COMM_EVENT.search(e.name)]
        return busy_share(intervals, wall_us)


class CommWindow:
    """Profiles the last (up to 3) warm-up steps after the first for the communication share:
    warm-up steps are untimed, so the profiler never slows a measured step. Disabled in one
    process, or with fewer than 2 warm-up steps (share stays None)."""

    def __init__(self, world: int, warmup_steps: int, device_type: str):
        self.first = max(1, warmup_steps - 3)
        self.end = warmup_steps  # exclusive
        self.enabled = world > 1 and self.end > self.first
        self.device_type = device_type
        self.share = None
        self.steps = 0
        self._profiler = None

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            self._profiler = CommProfiler(self.device_type)
            self._profiler.start()

    def after(self, step: int) -> None:
        if self._profiler is not None and step == self.end - 1:
            self.share = self._profiler.stop()
            self.steps = self.end - self.first
            self._profiler = None
