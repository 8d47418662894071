"""Quantization-aware training (`compress.quantization: qat-int8`): a model converter.

torchao's QAT `prepare` swaps the linears of every block for fake-quantizing ones (int8
per-token activations, int8 per-row weights, straight-through gradients), keeping the same
weight Parameters, so the optimizer built afterwards trains them. After training, the
compression technique converts them to real int8 weights (txsuite/compress/quantize.py).

Ordering: a converter, with float8 and prune_schedule, after precision and before anything
splits, wraps or traces the model (torchtitan's model converters): checkpoint wrappers and
compile must hold the fake-quantizing modules.
"""
from __future__ import annotations

from txsuite.compress import quantize
from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    if cell.compress.quantization != "qat-int8":
        return setup
    quantize.torchao_version()  # Unsupported (skipped) when torchao cannot be imported here
    setup.facts.update(quantize.qat_prepare(setup.model))
    return setup
