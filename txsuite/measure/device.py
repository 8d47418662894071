"""What torch sees of the device a cell runs on: the record's device fingerprint, and the Host
the worker checks the cell against (txsuite.config.host; the plan built its own from nvidia-smi)."""
from __future__ import annotations

import os

from txsuite.config.host import Host
from txsuite.measure.env import cpu_model, installed_packages


def device_fingerprint(torch, device) -> dict:
    env = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": props.name,
            "cuda_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "gpu_memory_bytes": props.total_memory,
        })
    else:
        env["device_name"] = cpu_model()
        env["mkldnn"] = torch.backends.mkldnn.is_available()
    return env


def worker_host(torch, device) -> Host:
    """The Host as this process's torch sees it: whether CUDA works here and, for a CUDA cell,
    its device's compute capability."""
    has_cuda = torch.cuda.is_available()
    capability = name = None
    if device.type == "cuda" and has_cuda:
        capability = tuple(torch.cuda.get_device_capability(device))
        name = torch.cuda.get_device_name(device)
    return Host(has_cuda=has_cuda, gpu_count=torch.cuda.device_count() if has_cuda else 0,
                compute_capability=capability, gpu_name=name, packages=installed_packages())
