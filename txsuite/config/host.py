"""What a machine offers a cell, and the one function that says whether it can run one (L0).

The plan builds a Host from nvidia-smi and installed packages without importing torch
(txsuite.measure.env.plan_host); the worker builds one from what torch sees on its device
(txsuite.measure.device.worker_host). Both ask `host_problems(cell, host)`, so a cell is skipped
for the same reasons, in the same words, whichever finds out first. What only a kernel can
tell (an int4 or 2:4 kernel that will not run) is probed by the technique before training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig


@dataclass(frozen=True)
class Host:
    has_cuda: bool = False
    gpu_count: int = 0
    # the lowest compute capability among the GPUs (a cell may land on any); None if unknown
    compute_capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    # optional packages that can be imported here (found without importing them); None: not
    # looked at, so no cell is skipped for a package
    packages: frozenset[str] | None = None
    # whether the CPU has bf16 matmul instructions (AVX512_BF16 or AMX-BF16); None: not known.
    # Without them torch emulates bf16, and a bf16 step takes several times an fp32 one, many
    # times with torch's Linear (docs/measurements.md, "bf16 on a CPU without bf16 instructions").
    cpu_bf16: bool | None = None
    # memory a cell may take, in bytes: this host's RAM (host_memory_bytes) and the smallest GPU's
    # memory; None: not known, and no cell is refused for memory
    memory_bytes: int | None = None
    gpu_memory_bytes: int | None = None

    def lacks(self, package: str) -> bool:
        """Known not to be installed here."""
        return self.packages is not None and package not in self.packages

    def device_of(self, cell: "CellConfig") -> str:
        """The device a cell runs on: its own, or this host's for `auto`."""
        if cell.device != "auto":
            return cell.device
        return "cuda" if self.has_cuda else "cpu"


def host_problems(cell: "CellConfig", host: Host) -> str | None:
    """Why a valid cell cannot run on this host (recorded as skipped, never faked), or None:
    each family's host rule, in a fixed order (the device first: nothing else matters on a
    device the host lacks)."""
    from txsuite.config.spec import device, precision
    for rule in (device.host_problem, precision.host_problem, cell.train.host_problem, cell.compress.host_problem):
        reason = rule(cell, host)
        if reason:
            return reason
    return None


def memory_problem(cell: "CellConfig", host: Host, needed_bytes: int) -> str | None:
    """Why a valid cell cannot fit this host, whose planned memory per rank (the plan's estimate,
    txsuite.config.estimate) is `needed_bytes`, or None: more than the GPU's memory for a CUDA
    cell, more than the host's RAM for a CPU cell. Unknown memory refuses nothing."""
    from txsuite.config.numbers import size_text
    if host.device_of(cell) == "cuda":
        available, what = host.gpu_memory_bytes, f"the memory of {host.gpu_name or 'this GPU'}"
    else:
        available, what = host.memory_bytes, "this host's memory"
    if available is None or needed_bytes <= available:
        return None
    return (f"the plan estimates {size_text(needed_bytes)} of training memory per rank, more than {what} "
            f"({size_text(available)})")


def host_memory_bytes() -> int | None:
    """This host's memory for cells: /proc/meminfo's MemTotal, or less where a cgroup limits the
    processes here (a container, a Slurm job); None where neither can be read."""
    import os
    known: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not known:
        try:
            known.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 2**60:  # "max", or v1's "unlimited" 2^63 - page
            known.append(int(text))
    return min(known) if known else None


def parse_memory_text(text: str) -> int | None:
    """nvidia-smi's memory.total ("81559 MiB") -> bytes; None for anything else."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    parts = str(text).strip().split()
    if len(parts) != 2 or parts[1].lower() not in units:
        return None
    try:
        value = float(parts[0])
    except ValueError:
        return None
    return int(value * units[parts[1].lower()]) if 0 < value < 2**40 else None


def parse_capability(text: str) -> tuple[int, int] | None:
    """"8.9" (nvidia-smi's compute_cap) -> (8, 9); None for anything else."""
    major, _, minor = str(text).strip().partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


def emulated_bf16_note(cells, host: Host) -> str | None:
    """A note for the plan when bf16 cells will run on a CPU that emulates bf16: they run (the
    slowness is a finding), but they take minutes each and the user should know before. None
    otherwise. cells: PlannedCell-like (`.config`, `.skip_reason`)."""
    if host.cpu_bf16 is not False:
        return None
    slow = [c for c in cells if c.skip_reason is None and host.device_of(c.config) == "cpu"
            and c.config.precision in ("bf16", "bf16-pure")]
    if not slow:
        return None
    return (f"note: this CPU has no bf16 instructions (AVX512_BF16, AMX-BF16), so torch emulates bf16 and "
            f"runs bf16 steps several times slower than fp32, many times with model.linear: torch "
            f"(docs/measurements.md); {len(slow)} bf16 cell(s) will take minutes each. "
            f"They are run and recorded as they are; --only precision=fp32 leaves them out.")
