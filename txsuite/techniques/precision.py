"""Numerical precision of training.

fp32       parameters, activations and matmuls in fp32 (tf32 explicitly off on CUDA).
tf32       fp32 tensors, tensor-core tf32 matmuls (CUDA only; the plan skips it on CPU).
bf16       autocast: fp32 master parameters, matmuls and activations in bf16.
bf16-pure  parameters, gradients and optimizer state in bf16 (no master copy): half the
           memory, at the cost of updates smaller than bf16's resolution being lost.
fp16       autocast to fp16 plus dynamic loss scaling (GradScaler) so small gradients do not
           underflow.
fp8        torchao Float8Linear with bf16 autocast on CUDA GPUs of compute capability >= 8.9
           (txsuite.techniques.float8); skipped with the reason anywhere else.
"""
from __future__ import annotations

import functools

import torch

from txsuite.techniques import deepspeed
from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    precision = cell.precision
    device = setup.device
    if device.type == "cuda":
        allow = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    if deepspeed.owns_precision(cell):
        # DeepSpeed owns precision: its config casts the model and keeps fp32 master weights
        # (bf16/fp16 sections, with its own loss scaler); autocasting as well would double it.
        setup.facts["precision_owner"] = "deepspeed"
        return setup
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        setup.autocast = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
    if precision == "fp16":
        setup.scaler = torch.amp.GradScaler(device.type)
    if precision == "bf16-pure":
        setup.model = setup.model.to(torch.bfloat16)
    setup.facts["param_dtype"] = str(next(setup.model.parameters()).dtype).replace("torch.", "")
    return setup
