"""`precision`: the numeric format of training (txsuite/techniques/precision.py applies it;
fp8 through txsuite/techniques/float8.py, which `compress.quantization: fp8` shares)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.host import Host
    from txsuite.config.spec.cell import CellConfig

PRECISIONS = ("fp32", "tf32", "bf16", "bf16-pure", "fp16", "fp8")
# fp8 tensor cores: Ada, Hopper and newer (the plan checks nvidia-smi's capability, the worker torch's)
FP8_MIN_CAPABILITY = (8, 9)
FP8_ALIGN = 16  # fp8 GEMMs need their inner dimension a multiple of this
CHOICES = {"": PRECISIONS}


def problems(cell: "CellConfig") -> Iterator[Problem]:
    if cell.fp8_training:
        # the weight gradient is grad_out^T [N, M] @ input [M, K] with M = the micro-batch's (or
        # pipeline chunk's) tokens, and fp8 GEMMs need their inner dimension a multiple of 16
        chunks = cell.parallel.pp_chunks
        tokens = cell.train.micro_batch // chunks * cell.data.seq_len
        if tokens % FP8_ALIGN:
            yield Problem("train.micro_batch",
                          f"fp8 matmuls need the tokens of one micro-batch{' chunk' if chunks > 1 else ''} "
                          f"(micro_batch x seq_len = {tokens}) to be a multiple of {FP8_ALIGN}, the inner "
                          f"dimension of the weight-gradient GEMM.",
                          f"micro_batch and data.seq_len whose product is a multiple of {FP8_ALIGN}")
        if cell.parallel.tp > 1:
            # sharding Float8Linear needs torchao's Float8ColwiseParallel/Float8RowwiseParallel
            # styles in the tensor-parallel plan, which txsuite does not wire in
            yield Problem("parallel.tp", "fp8 training with tensor parallelism needs torchao's float8 "
                                         "tensor-parallel styles, which txsuite does not wire in.", "tp: 1")


def host_problem(cell: "CellConfig", host: "Host") -> str | None:
    device = host.device_of(cell)
    cap = capability_text(FP8_MIN_CAPABILITY)
    if cell.fp8_training:
        if device == "cpu":
            return ("fp8 training (torchao float8) needs a CUDA GPU with fp8 tensor cores (compute capability "
                    f">= {cap}: Ada, Hopper or newer); this cell is on cpu")
        if host.compute_capability is not None and host.compute_capability < FP8_MIN_CAPABILITY:
            return (f"fp8 training needs fp8 tensor cores (compute capability >= {cap}: Ada, Hopper or newer); "
                    f"{host.gpu_name or 'this GPU'} has {capability_text(host.compute_capability)}")
        if host.lacks("torchao"):
            # a GPU whose driver does not report its capability leaves that check to the worker
            return "fp8 training uses torchao.float8, which is not installed (pip install -e '.[compress]')"
    if device == "cpu" and cell.precision == "tf32":
        return "tf32 is a CUDA tensor-core matmul mode; on cpu it would silently be fp32"
    return None


def capability_text(version: tuple[int, int]) -> str:
    """(8, 9) -> "8.9", as nvidia-smi reports a compute capability."""
    return f"{version[0]}.{version[1]}"
