"""Environment fingerprint: what a result depends on besides the config.

Gathered without importing torch (the runner must not); the worker adds the device details that
only torch can see (`device_fingerprint`).
"""
from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from txsuite.config.host import Host, host_memory_bytes, parse_capability, parse_memory_text

# Keys whose value differs between two runs of the same code on the same machine (which process
# started a cell): never an environment difference.
EPHEMERAL = ("launched_on",)

PACKAGES = ("torch", "numpy", "deepspeed", "torchao", "transformers", "tokenizers", "triton",
            "nvidia-ml-py")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that decide CPU matmul speed (AVX-512, AMX for bf16/int8)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return []


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def visible_devices(env=os.environ) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (NVML indices or UUIDs) as CUDA reads them: up to the
    first empty or invalid one, where CUDA stops; None when the variable is not set."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


@functools.lru_cache(maxsize=1)
def gpus_from_nvidia_smi() -> tuple[dict, ...]:
    """GPU names, driver, memory and compute capability via nvidia-smi, or () on a host without
    one. Asked once per process (the plan, the executor and the fingerprint all want it; the
    GPUs do not change under a run): treat the dicts as read-only."""
    fields = ["name", "driver", "memory", "compute_cap"]
    lines = _nvidia_smi_lines(["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    if not lines:  # drivers older than the compute_cap field reject the whole query
        fields = fields[:3]
        lines = _nvidia_smi_lines(["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return tuple(dict(zip(fields, (part.strip() for part in line.split(",")))) for line in lines)


def _nvidia_smi_lines(args: list[str]) -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.strip().splitlines() if out.returncode == 0 else []


# Optional packages that decide whether a cell can run (found without importing them).
OPTIONAL_PACKAGES = ("torchao", "deepspeed")


def installed_packages() -> frozenset[str]:
    import importlib.util
    return frozenset(name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is not None)


def plan_host(env=os.environ) -> Host:
    """The Host the plan checks cells against: nvidia-smi's GPUs (as many as a
    CUDA_VISIBLE_DEVICES the run was started with leaves visible) and the optional packages
    installed. Without torch, so `txsuite plan` and the runner stay light."""
    gpus = gpus_from_nvidia_smi()
    visible = visible_devices(env)
    usable = min(len(gpus), len(visible)) if visible is not None else len(gpus)
    capabilities = [parse_capability(gpu.get("compute_cap", "")) for gpu in gpus]
    known = None if not capabilities or None in capabilities else min(capabilities)
    name = next((gpu.get("name") for gpu, cap in zip(gpus, capabilities) if cap == known), None)
    flags = cpu_flags()
    cpu_bf16 = any(f in flags for f in ("avx512_bf16", "amx_bf16")) if flags else None
    memories = [parse_memory_text(gpu.get("memory", "")) for gpu in gpus]
    gpu_memory = None if not memories or None in memories else min(memories)
    return Host(has_cuda=usable > 0, gpu_count=usable, compute_capability=known, gpu_name=name,
                packages=installed_packages(), cpu_bf16=cpu_bf16, memory_bytes=host_memory_bytes(),
                gpu_memory_bytes=gpu_memory)


def host_fingerprint() -> dict:
    suite_root = Path(__file__).resolve().parents[2]
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": list(gpus_from_nvidia_smi()),
        "packages": package_versions(),
        "txsuite_commit": git_commit(suite_root),
    }
