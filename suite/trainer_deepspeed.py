"""The optimizer step of a DeepSpeed cell (L2): ZeRO stages 0-3 and CPU offload.

DeepSpeed's engine owns the model, the optimizer, the LR schedule, gradient accumulation,
clipping and precision together, so the cell's settings are turned into a DeepSpeed config
(`deepspeed_config`) instead of being applied as separate techniques."""
from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from suite.model import lm_loss
from suite.techniques import TrainSetup, Unsupported
from suite.trainer import mean_val_loss


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
        # our torch AdamW is the optimizer in every cell, so ZeRO must accept a client optimizer
        "zero_allow_untested_optimizer": True,
    }
    if p.offload != "none" and device_type == "cpu":
        # DeepSpeedCPUAdam compiles a C++ extension on first use (~3.5 min on this 2-core host);
        # on a CPU host the offloaded step runs torch's fused AdamW instead (recorded as a fact).
        config["zero_force_ds_cpu_optimizer"] = False
    return config


class DeepSpeedTrainer:
    holds_loss = True

    def __init__(self, setup: TrainSetup, optimizer: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LRScheduler, cell):
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        _check_precision(cell.precision)
        config = deepspeed_config(cell, setup.device.type)
        if cell.parallel.offload != "none" and setup.device.type == "cuda":
            # DeepSpeed's own CPU Adam is the optimizer that makes offload worth having on GPUs
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            t = cell.train
            optimizer = DeepSpeedCPUAdam(optimizer.param_groups, lr=t.lr, betas=(t.beta1, t.beta2))
            schedule = _rebind_schedule(schedule, optimizer)
        self.engine, self.optimizer, _, self.schedule = deepspeed.initialize(
            model=setup.model, optimizer=optimizer, lr_scheduler=schedule, config=config)
        self.device = setup.device
        self.grad_accum = cell.train.grad_accum
        setup.facts.update({"zero_stage": cell.parallel.zero_stage, "offload": cell.parallel.offload,
                            "deepspeed_optimizer": type(optimizer).__name__})

    def step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self.engine.train()
        total = torch.zeros((), device=self.device)
        for _ in range(self.grad_accum):
            x, y = next(batches)
            loss = lm_loss(self.engine(x.to(self.device)), y.to(self.device))
            self.engine.backward(loss)  # scales by 1/grad_accum itself
            self.engine.step()  # steps optimizer and schedule at the accumulation boundary only
            total += loss.detach() / self.grad_accum
        return total

    def evaluate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        # the engine is a module: the shared evaluation runs it (DeepSpeed owns precision, so no autocast)
        return mean_val_loss(self.engine, batches, self.device)


def _check_precision(precision: str) -> None:
    """DeepSpeed refuses a 16-bit type its accelerator does not support (its CPU accelerator
    has fp16 only with AVX512-FP16/AMX-FP16): the cell is skipped with that reason."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
    if precision in supported and not supported[precision]():
        raise Unsupported(f"DeepSpeed's {accelerator.device_name()} accelerator reports no {precision} support on "
                          f"this host (on a CPU, fp16 needs AVX512-FP16 or AMX-FP16)")


def _rebind_schedule(schedule, optimizer):
    """The same LambdaLR on another optimizer (DeepSpeedCPUAdam replaces torch's AdamW)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambdas[0])
