"""Vendors' nominal dense peaks, reported *next to* the peak txsuite measures (txsuite.measure.peak).

MFU in txsuite is always against the measured peak (`mfu`); `mfu_nominal` against this table
says how far the measured peak itself is from the datasheet (clocks, power limits, cuBLAS).
Values are NVIDIA's datasheet / architecture whitepaper figures in TFLOP/s, *dense* (NVIDIA
prints tensor-core figures "with sparsity"; those are halved here), for the tensor-core path a
training matmul takes:

  float32   fp32 on CUDA cores (no tensor cores: tf32 off, as txsuite's fp32 cells run)
  tf32      tf32 tensor cores
  bfloat16  bf16 tensor cores, fp32 accumulation
  float16   fp16 tensor cores, fp32 accumulation
  float8    fp8 (e4m3/e5m2) tensor cores, fp32 accumulation (torch._scaled_mm, torchao)

A device without a precision (A100: no fp8) has no entry for it -> None. An unknown device -> None:
never guessed from a similar name.
"""
from __future__ import annotations

import re

TERA = 1e12

# name -> {matmul kind: dense TFLOP/s}; sources in the comments.
NOMINAL_TFLOPS: dict[str, dict[str, float]] = {
    # H100 SXM5 datasheet: FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958* (*sparse);
    # whitepaper exact dense values 494.7 / 989.4 / 1978.9.
    "H100 SXM": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float8": 1978.9},
    # H100 PCIe datasheet: FP32 51, TF32 756*, BF16/FP16 1513*, FP8 3026*.
    "H100 PCIe": {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.5, "float16": 756.5, "float8": 1513.0},
    # H100 NVL datasheet (per GPU): FP32 60, TF32 835*, BF16/FP16 1671*, FP8 3341*.
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
    # H200 SXM datasheet: the H100 SXM's compute (FP32 67, TF32 989*, BF16 1979*, FP8 3958*).
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float8": 1978.9},
    # H200 NVL datasheet: FP32 60, TF32 835*, BF16/FP16 1671*, FP8 3341*.
    "H200 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
    # A100 (SXM4 and PCIe, 40 and 80 GB alike) datasheet: FP32 19.5, TF32 156 (312*),
    # BF16/FP16 312 (624*). No fp8 tensor cores.
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    # L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*.
    "L4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0, "float8": 242.5},
    # GeForce RTX 4090, Ada architecture whitepaper: FP32 82.6, TF32 82.6, FP16/BF16 with FP32
    # accumulate 165.2, FP8 with FP32 accumulate 330.3 (GeForce runs FP32 accumulation at half
    # the FP16-accumulate rate, 330.3 / 660.6; PyTorch's matmuls accumulate in FP32).
    "RTX 4090": {"float32": 82.6, "tf32": 82.6, "bfloat16": 165.2, "float16": 165.2, "float8": 330.3},
}

# (pattern on the normalised name, table key): first match wins, so variants come first.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bh100\b.*\bpcie\b", "H100 PCIe"),
    (r"\bh100\b.*\bnvl\b", "H100 NVL"),
    (r"\bh100\b", "H100 SXM"),          # "NVIDIA H100 80GB HBM3", "H100 SXM5 80GB"
    (r"\bh200\b.*\bnvl\b", "H200 NVL"),
    (r"\bh200\b", "H200"),              # "NVIDIA H200"
    (r"\ba100\b", "A100"),              # "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"
    (r"^l4$", "L4"),                    # "NVIDIA L4" (not L40, L40S)
    (r"\brtx 4090$", "RTX 4090"),       # not "RTX 4090 D", not the laptop part
)


def normalise(device_name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx 4090'; 'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb'."""
    name = device_name.lower().replace("-", " ").replace("_", " ")
    name = re.sub(r"\b(nvidia|geforce|tesla)\b", " ", name)
    return " ".join(name.split())


def nominal_key(device_name: str | None) -> str | None:
    """The table entry for a device name (as torch or nvidia-smi spell it), or None."""
    if not device_name:
        return None
    name = normalise(device_name)
    for pattern, key in _PATTERNS:
        if re.search(pattern, name):
            return key
    return None


def nominal_peak_flops(device_name: str | None, precision: str) -> float | None:
    """The vendor's dense peak in FLOP/s for a cell precision (fp32, tf32, bf16, bf16-pure,
    fp16, fp8) or a matmul kind (float32, tf32, bfloat16, float16, float8); None when the
    device is not in the table or has no such tensor-core path."""
    from txsuite.measure.peak import MATMUL_DTYPE  # stdlib-only module: no torch import
    kind = MATMUL_DTYPE.get(precision, precision)
    key = nominal_key(device_name)
    if key is None:
        return None
    tflops = NOMINAL_TFLOPS[key].get(kind)
    return tflops * TERA if tflops is not None else None
