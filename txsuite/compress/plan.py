"""What a cell's `compress` block does, and when: the one place phases are decided.

    quantization   qat-int8, fp8                      during training (they are training methods)
                   int8-weight, int8-dynamic, int4-weight   after training
    pruning        magnitude-<s>     `compress.phase`: post (default) after training, train on a schedule
                   heads-/neurons-/structured-<r>, 2:4      after training
After training the order is: prune -> fine-tune (optionally distilled) -> make the masks
permanent -> quantize (QAT: convert), so a fine-tune trains float weights and the quantized
model is the final one. The plan (CompressSpec.problems, txsuite/config/spec/compress.py) has
already rejected combinations that cannot work; what remains host-dependent is `check_host`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from txsuite.compress import quantize
from txsuite.compress.prune import probe_semi_structured
from txsuite.config.spec import CellConfig
from txsuite.config.spec.compress import TRAINING_QUANTIZATIONS


@dataclass(frozen=True)
class Plan:
    quantization: str
    quantization_phase: str | None  # "train", "post", None when not quantized
    pruning: str  # the value as written
    pruning_kind: str  # none, magnitude, heads, neurons, structured, 2:4
    pruning_amount: float | None
    pruning_phase: str | None
    finetune_steps: int
    distill: bool
    # 2:4 weights are stored and multiplied in the cell's half precision: the sparse kernels
    # (cuSPARSELt, CUTLASS) take fp16/bf16/int8/fp8, never fp32 (the plan requires bf16 or fp16)
    sparse_dtype: torch.dtype | None = None

    @property
    def active(self) -> bool:
        return self.quantization != "none" or self.pruning_kind != "none"

    @property
    def has_post_steps(self) -> bool:
        return "post" in (self.quantization_phase, self.pruning_phase)

    def facts(self) -> dict:
        return {"quantization_phase": self.quantization_phase, "pruning_phase": self.pruning_phase}


def plan_for(cell: CellConfig) -> Plan:
    k = cell.compress
    kind, amount = k.pruning_target()
    q_phase = None if k.quantization == "none" else ("train" if k.quantization in TRAINING_QUANTIZATIONS else "post")
    p_phase = None if kind == "none" else ("train" if kind == "magnitude" and k.phase == "train" else "post")
    return Plan(quantization=k.quantization, quantization_phase=q_phase, pruning=k.pruning,
                pruning_kind=kind, pruning_amount=amount, pruning_phase=p_phase,
                finetune_steps=k.finetune_steps if p_phase == "post" else 0,
                distill=k.distill and p_phase == "post" and k.finetune_steps > 0,
                sparse_dtype=HALF_DTYPES.get(cell.precision) if kind == "2:4" else None)


HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_host(plan: Plan, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """Raise Unsupported if this host's kernels cannot run the plan; called before training, so
    a cell that would fail after training is skipped without training first. The device and
    its compute capability were checked already (txsuite.config.host.host_problems); this probes
    what only running a kernel tells: torchao's import, int4's kernels, 2:4's sparse kernels."""
    quantize.check_host(plan.quantization, device, dtype)
    if plan.pruning_kind == "2:4":
        probe_semi_structured(device, plan.sparse_dtype or torch.bfloat16)
