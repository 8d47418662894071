"""Quantization through torchao (imported only when a cell quantizes).

    int8-weight    Int8WeightOnlyConfig: int8 weights (per output row, symmetric), float activations
    int8-dynamic   Int8DynamicActivationInt8WeightConfig: int8 weights, activations quantized to
                   int8 per token at run time
    int4-weight    Int4WeightOnlyConfig: int4 weights in groups along the input dimension
    qat-int8       QATConfig(Int8DynamicActivationIntxWeightConfig(weight_dtype=int8, per row)):
                   `prepare` swaps the linears for fake-quantizing ones before training (int8
                   per-token activations, int8 per-row weights, straight-through gradients);
                   `convert` turns them into real int8 weights after it
    fp8            float8 training, the conversion precision fp8 uses: txsuite/techniques/float8.py

What is quantized: the four linears of every block (attn.qkv, attn.proj, mlp.fc, mlp.proj).
The lm_head shares its weight with tok_emb; quantizing it would untie the two and store a
second (int8) copy of the table beside the float embedding, so both stay as they are.

torch.ao.quantization is not used: torchao has a CPU path for every method above except
int4-weight, and for that one torch.ao has no int4 kernel either. A method a host cannot run
raises Unsupported with the reason (the cell is recorded as skipped), never a substitute.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from txsuite.compress.targets import is_target, target_linears
from txsuite.config.record import Unsupported

INT4_GROUP_SIZES = (128, 64, 32)


def torchao_version() -> str:
    try:
        import torchao
    except Exception as exc:  # noqa: BLE001 - not installed, or built for another torch
        raise Unsupported(f"quantization needs torchao, which cannot be imported here "
                          f"({type(exc).__name__}: {exc})") from None
    return torchao.__version__


def check_host(quantization: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """Raise Unsupported when this host cannot run `quantization` (before any training)."""
    if quantization in ("none", "fp8"):
        return  # fp8 is float8 training: txsuite.techniques.float8 checks the GPU before converting
    version = torchao_version()
    if quantization == "int4-weight":
        _probe_int4(device, dtype, version)


def _probe_int4(device: torch.device, dtype: torch.dtype, version: str) -> None:
    """Int4WeightOnlyConfig runs on kernels torchao does not ship on every host (torchao 0.18's
    default packing needs the mslk package, built for CUDA); try it on one small layer."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    probe = nn.Sequential(nn.Linear(256, 256, device=device, dtype=dtype))
    try:
        quantize_(probe, Int4WeightOnlyConfig(group_size=128))
        with torch.no_grad():
            probe(torch.zeros(2, 256, device=device, dtype=dtype))
    except (ImportError, NotImplementedError, RuntimeError, AssertionError) as exc:
        raise Unsupported(f"int4-weight: torchao {version}'s Int4WeightOnlyConfig cannot run on this "
                          f"{device.type} host ({type(exc).__name__}: {exc})") from None


def quantize_post_training(model: nn.Module, quantization: str) -> dict[str, Any]:
    """Quantize a trained model in place; returns facts for the record."""
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8WeightOnlyConfig, quantize_)
    facts: dict[str, Any] = {}
    if quantization == "int8-weight":
        config = Int8WeightOnlyConfig()
    elif quantization == "int8-dynamic":
        config = Int8DynamicActivationInt8WeightConfig()
    elif quantization == "int4-weight":
        group = int4_group_size(model)
        config = Int4WeightOnlyConfig(group_size=group)
        facts["int4_group_size"] = group
    else:
        raise ValueError(f"not a post-training quantization: {quantization!r}")
    quantize_(model, config, filter_fn=is_target)
    facts.update(_layer_facts(model, type(config).__name__))
    return facts


def int4_group_size(model: nn.Module) -> int:
    """The largest group size torchao offers that divides every target's input dimension
    (torchao would otherwise leave such a layer unquantized, silently)."""
    widths = [m.in_features for m in target_linears(model)]
    for group in INT4_GROUP_SIZES:
        if all(w % group == 0 for w in widths):
            return group
    raise Unsupported(f"int4-weight needs input widths divisible by 32; this model has {sorted(set(widths))}")


def _qat_base_config():
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis
    # int8 weights, one scale per output row (PerAxis(0)), int8 asymmetric per-token activations.
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def qat_prepare(model: nn.Module) -> dict[str, Any]:
    """Swap the target linears for fake-quantizing ones (the same weight Parameters, so the
    optimizer built afterwards trains them)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    quantize_(model, QATConfig(_qat_base_config(), step="prepare"), filter_fn=is_target)
    n = sum(1 for m in model.modules() if type(m).__name__ == "FakeQuantizedLinear")
    return {"qat_fake_quantized_layers": n}


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn the QAT fake quantizers on or off (off: the same weights evaluated in float)."""
    from torchao.quantization.qat.linear import enable_linear_fake_quant
    model.apply(lambda m: enable_linear_fake_quant(m, enabled))


def qat_convert(model: nn.Module) -> dict[str, Any]:
    """Fake-quantizing linears -> linears with real int8 weights (what QAT trained for)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    config = _qat_base_config()
    quantize_(model, QATConfig(config, step="convert"), filter_fn=is_target)
    return _layer_facts(model, f"QATConfig({type(config).__name__}, int8 weights per row)")


def _layer_facts(model: nn.Module, config_name: str) -> dict[str, Any]:
    targets = target_linears(model)
    quantized = [m for m in targets if hasattr(m.weight, "__tensor_flatten__")]
    return {"quantized_layers": len(quantized), "quantizable_layers": len(targets),
            "quantization_config": config_name, "quantization_backend": f"torchao {torchao_version()}"}
