"""DeepSpeed ZeRO stages 0-3 and CPU offload (`parallel.engine: deepspeed`).

DeepSpeed's engine owns the model, the optimizer, the LR schedule, gradient accumulation,
clipping and precision together, so the cell's settings become a DeepSpeed config
(`deepspeed_config`) and the engine is built once the optimizer exists: `apply` registers
`initialize` as the setup's engine, and txsuite.train builds it after the optimizer and steps it
with txsuite.train.deepspeed.DeepSpeedTrainer.

Ordering: in the data-parallel slot (with ddp and fsdp); `precision` leaves the cell to
DeepSpeed (`owns_precision`), since its bf16/fp16 sections cast the model and keep fp32
master weights with their own loss scaler, and autocasting as well would double it. The plan
rejects what DeepSpeed cannot do here (txsuite/config/spec/parallel.py): tp/pp, precisions other
than fp32/bf16/fp16, compile, and a non-Adam optimizer with offload on a GPU (DeepSpeed would
replace it with DeepSpeedCPUAdam).
"""
from __future__ import annotations

import functools
import logging
from typing import Any

from txsuite.techniques.setup import TrainSetup, Unsupported


def owns_precision(cell) -> bool:
    return cell.parallel.engine == "deepspeed"


def deepspeed_config(cell, device_type: str) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent to the cell (pure: unit-tested)."""
    t, p = cell.train, cell.parallel
    zero: dict[str, Any] = {"stage": p.zero_stage}
    if p.offload in ("optimizer", "optimizer+params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if p.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * p.dp,
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": cell.precision == "bf16"},
        # dynamic loss scaling (loss_scale 0), as torch's GradScaler: start at 2^16
        "fp16": {"enabled": cell.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        # our torch optimizer is the optimizer in every cell, so ZeRO must accept a client optimizer
        "zero_allow_untested_optimizer": True,
    }
    if p.offload != "none" and device_type == "cpu":
        # DeepSpeedCPUAdam compiles a C++ extension on first use (minutes on a 2-core host;
        # docs/measurements.md, "Parallelism");
        # on a CPU host the offloaded step runs torch's fused AdamW instead (recorded as a fact).
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def apply(setup: TrainSetup, cell) -> TrainSetup:
    if not owns_precision(cell):
        return setup
    check_precision(cell.precision)
    setup.engine = functools.partial(initialize, cell=cell)
    return setup


def check_precision(precision: str) -> None:
    """DeepSpeed refuses a 16-bit type its accelerator does not support (its CPU accelerator
    has fp16 only with AVX512-FP16/AMX-FP16): the cell is skipped with that reason."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
    if precision in supported and not supported[precision]():
        raise Unsupported(f"DeepSpeed's {accelerator.device_name()} accelerator reports no {precision} support on "
                          f"this host (on a CPU, fp16 needs AVX512-FP16 or AMX-FP16)")


def initialize(setup: TrainSetup, optimizer, schedule, cell):
    """DeepSpeed's engine over the setup's model, optimizer and schedule -> (engine, its
    optimizer, its schedule)."""
    import deepspeed
    import torch

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config = deepspeed_config(cell, setup.device.type)
    if cell.parallel.offload != "none" and setup.device.type == "cuda":
        # DeepSpeed's own CPU Adam is the optimizer that makes offload worth having on GPUs (the
        # plan allows only adamw with offload, so this is the cell's optimizer)
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        t = cell.train
        optimizer = DeepSpeedCPUAdam(optimizer.param_groups, lr=t.lr, betas=(t.hyper("beta1"), t.hyper("beta2")))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambdas[0])
    # the optimizer that steps the parameters (ZeRO wraps it in its own partitioning optimizer)
    setup.facts.update({"zero_stage": cell.parallel.zero_stage, "offload": cell.parallel.offload,
                        "deepspeed_optimizer": type(optimizer).__name__})
    engine, optimizer, _, schedule = deepspeed.initialize(model=setup.model, optimizer=optimizer,
                                                          lr_scheduler=schedule, config=config)
    return engine, optimizer, schedule
