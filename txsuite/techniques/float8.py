"""fp8 training with torchao's float8 (`precision: fp8`, or `compress.quantization: fp8`):
a model converter, the first of the three (float8, qat, prune_schedule).

`torchao.float8.convert_to_float8_training` swaps the chosen `nn.Linear` layers for
`Float8Linear`: each matmul casts its input, weight and output gradient to fp8 (e4m3 forward,
e5m2 for gradients) with dynamic per-tensor scales and runs on fp8 tensor cores
(`torch._scaled_mm`); master weights, optimizer state and everything outside those matmuls
keep their dtype. As torchao recommends, the step runs under bf16 autocast: the unconverted
layers (attention's SDPA, the lm_head, layer norms) compute in bf16, and Float8Linear takes
its input from autocast's dtype.

Layers converted: every Linear whose in and out features are multiples of 16 (the fp8 GEMM's
alignment), except the lm_head: it is tied to the token embedding and produces the logits, the
most precision-sensitive matmul (torchao's and torchtitan's examples leave the output layer in
high precision too).

Needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper and newer: fp8 tensor cores) and
torchao; elsewhere the cell is `skipped` (Unsupported) with the reason, never run in another
precision. fp8's speed comes from fusing the casts: without `compile.mode` the casts run as
separate kernels and an fp8 cell is usually *slower* than bf16 (torchao: "torch.compile is
required for good performance").

Ordering: right after `precision`, before pipeline, tensor_parallel, checkpointing, ddp/fsdp
and compile, as torchtitan converts the whole model before splitting and parallelizing it: the
pipeline stages, checkpoint wrappers and data-parallel wrappers must hold the final
Float8Linear modules, and compile must trace them. The plan refuses it with DeepSpeed, which
owns precision, and with tp > 1, which would need torchao's float8 tensor-parallel styles.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from txsuite.config.spec.precision import FP8_ALIGN, FP8_MIN_CAPABILITY
from txsuite.techniques.setup import TrainSetup, Unsupported

MIN_CAPABILITY = FP8_MIN_CAPABILITY
ALIGN = FP8_ALIGN


def apply(setup: TrainSetup, cell) -> TrainSetup:
    """A model converter: precision `fp8`, or quantization `fp8` (the same conversion; the
    quantization keeps the cell's own precision around it, as torchao's recipe for bf16 cells)."""
    if not cell.fp8_training:
        return setup
    check_supported(setup.device)
    # (DeepSpeed owns precision and has no fp8 mode; tp > 1 needs float8 tensor-parallel styles:
    # the plan rejects both, txsuite/config/spec/parallel.py and precision.py)
    try:
        import torchao
        from torchao.float8 import convert_to_float8_training
    except Exception as exc:  # noqa: BLE001 - not installed, or built for another torch
        raise Unsupported(f"fp8 training uses torchao.float8, which cannot be imported here "
                          f"({type(exc).__name__}: {exc}); pip install -e '.[compress]'") from exc
    converted, kept = convert(setup.model, convert_to_float8_training)
    if not converted:
        raise Unsupported("fp8: no Linear layer of this model has dims divisible by 16; nothing would run in fp8")
    if cell.precision == "fp8":
        setup.autocast = functools.partial(torch.autocast, device_type=setup.device.type, dtype=torch.bfloat16)
    setup.facts.update({
        "fp8_linear_layers": len(converted),
        "fp8_kept_layers": kept,
        "fp8_recipe": "tensorwise (dynamic per-tensor scales)",
    })
    if cell.compress.quantization == "fp8":
        setup.facts["quantization_backend"] = f"torchao {torchao.__version__}"
    return setup


def check_supported(device: torch.device, capability: tuple[int, int] | None = None,
                    device_name: str | None = None) -> None:
    """Raise Unsupported unless `device` is a CUDA GPU with fp8 tensor cores. `capability` and
    `device_name` are read from torch when not given (the tests pass them)."""
    if device.type != "cuda":
        raise Unsupported(f"fp8 training (torchao float8) needs a CUDA GPU with fp8 tensor cores "
                          f"(compute capability >= 8.9: Ada, Hopper or newer); this cell runs on {device.type}")
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
        device_name = device_name or torch.cuda.get_device_name(device)
    if tuple(capability) < MIN_CAPABILITY:
        raise Unsupported(f"fp8 training needs fp8 tensor cores (compute capability >= 8.9: Ada, Hopper "
                          f"or newer); {device_name or 'this GPU'} has compute capability "
                          f"{capability[0]}.{capability[1]}")


def module_filter(model: nn.Module):
    """(module, fqn) -> convert it? Linear layers with both dims divisible by 16, never the
    lm_head (matched by identity and by name, so a wrapped model is handled too)."""
    lm_head = getattr(model, "lm_head", None)

    def keep_high_precision(mod: nn.Module, fqn: str) -> bool:
        if mod is lm_head or fqn.split(".")[-1] == "lm_head":
            return True
        return mod.in_features % ALIGN != 0 or mod.out_features % ALIGN != 0

    def convert_it(mod: nn.Module, fqn: str) -> bool:
        return isinstance(mod, nn.Linear) and not keep_high_precision(mod, fqn)

    return convert_it


def convert(model: nn.Module, convert_to_float8_training) -> tuple[list[str], list[str]]:
    """Convert `model` in place with torchao's function (passed in, so callers decide the
    import); -> (names converted, names of the Linear layers kept in high precision)."""
    wants = module_filter(model)
    linears = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    converted = [name for name, mod in linears if wants(mod, name)]
    kept = [name for name, mod in linears if not wants(mod, name)]
    convert_to_float8_training(model, module_filter_fn=wants)
    return converted, kept
