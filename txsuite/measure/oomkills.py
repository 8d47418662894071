"""The kernel's count of OOM kills in this process's memory cgroup (stdlib only).

A cell killed by the kernel's OOM killer dies by SIGKILL without a word; comparing this count
before and after the cell tells an OOM kill from any other SIGKILL. cgroup v2 keeps it in
`memory.events` (`oom_kill N`), v1 in `memory.oom_control`. None where neither is readable.
"""
from __future__ import annotations

from pathlib import Path


def oom_kill_count() -> int | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2 unified hierarchy
            count = _read_counter(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            count = _read_counter(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control")
        else:
            continue
        if count is not None:
            return count
    return None


def _read_counter(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None
