"""Compression after training, and what it costs in quality, size and inference speed: the
last technique in the order (the training-time methods are the converters qat, float8 and
prune_schedule; docs/compression.md).

`apply`, before training: checks the host for the cell's compression (Unsupported, so an
impossible cell is skipped before it trains: fp8 without a capable GPU, 2:4 without sparse
tensor cores or kernels, int4-weight without its kernels) and registers `finish` to run after
training and the final evaluation, for every single-process cell: the dense control needs its
size and inference speed too, for the compressed cells' deltas.

`finish(AfterTraining)`: completes the training-time methods (final sparsity, masks made
permanent, QAT convert), then applies the post-training ones (prune -> optional fine-tune,
distilled from a copy of the dense model -> quantize), evaluates, measures size and inference
speed. The model is compressed in place. Returns the record's metrics:
    compressed_val_loss, compressed_val_ppl      after compression
    uncompressed_val_loss                        the same trained weights before the post-training
                                                 steps (QAT: fake quant off; None for
                                                 prune-while-training alone)
    quality_delta_vs_uncompressed                compressed - uncompressed
    model_size_bytes, dense_model_size_bytes     parameters + buffers as stored
    size_ratio_vs_uncompressed
    prefill_tokens_per_s, decode_tokens_per_s, decode_ms_per_token (+ their settings)
    quantization_phase, pruning_phase, sparsity_achieved, pruned_weights, quantized_layers,
    quantization_config, quantization_backend, heads/neurons removed, finetune_loss_curve,
    distill_kl_curve, compress_wall_s ... (what applies)
The model operations live in txsuite/compress (quantize, prune, structured, distill, inference,
size); which method runs when is txsuite/compress/plan.py.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from txsuite.compress import inference, prune, quantize, structured
from txsuite.compress.distill import Distillation
from txsuite.compress.plan import Plan, check_host, plan_for
from txsuite.compress.size import model_bytes
from txsuite.config.spec import CellConfig
from txsuite.model import language_modelling
from txsuite.techniques.compilation import eager
from txsuite.techniques.setup import TrainSetup

# (model, steps, objective, after_step) -> the loss of every fine-tune step
Finetune = Callable[[nn.Module, int, Callable, Callable[[], None] | None], list[float]]


@dataclass
class AfterTraining:
    """What `finish` needs from the worker once training and its final evaluation are done."""
    model: nn.Module  # the trained model (possibly compiled); compressed in place
    cell: CellConfig
    device: torch.device
    evaluate: Callable[[nn.Module], float]  # mean val loss of a module on the fixed val batches; the
    # compressed model is the last module it is called on
    train_batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None  # micro-batches for a fine-tune
    dense_val_loss: float  # val loss of the trained model before post-training compression
    finetune: Finetune | None = None  # a fine-tune through the training step (txsuite.train.finetune)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # for the benchmark / fine-tune
    # the training's step hooks (TrainSetup.step_hooks): a prune-while-training schedule among
    # them is completed and its masks made permanent
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)


def apply(setup: TrainSetup, cell: CellConfig) -> TrainSetup:
    if setup.mesh is not None:
        return setup  # a distributed cell: no single-process model to compress or measure
    plan = plan_for(cell)
    if plan.active:
        check_host(plan, setup.device, next(setup.model.parameters()).dtype)
        _require_whole_model(eager(setup.model))
        setup.facts.update(plan.facts())
    setup.after_training.append(finish)
    return setup


def finish(ctx: AfterTraining) -> dict[str, Any]:
    """The post-training steps of the plan, then the model's quality, size and speed. The host
    and the model's wholeness were checked by `apply`, before training: the host cannot have
    changed since, so its probes are not run again."""
    plan = plan_for(ctx.cell)
    model = eager(ctx.model)
    if not plan.active:
        return _dense_metrics(ctx, model)
    started = time.perf_counter()
    metrics: dict[str, Any] = plan.facts()

    # What training left behind: a pruning schedule to complete, fake quantizers to convert.
    schedule = next((h for h in ctx.step_hooks if isinstance(h, prune.GradualMagnitude)), None)
    if plan.pruning_phase == "train":
        if schedule is None:
            raise RuntimeError("prune-while-training needs apply_during_training before the optimizer is built")
        metrics["prune_schedule_completed"] = schedule.finish()
        metrics["prune_mask_updates"] = schedule.updates
        metrics.update(prune.sparsity_of(model))
        prune.remove_masks(model)
    qat = plan.quantization == "qat-int8"
    if qat and not any(type(m).__name__ == "FakeQuantizedLinear" for m in model.modules()):
        raise RuntimeError("qat-int8 needs apply_during_training before the optimizer is built")

    dense_bytes = model_bytes(model)
    uncompressed = _uncompressed_loss(ctx, model, plan)
    teacher = _teacher(model) if plan.distill else None

    if plan.pruning_phase == "post":
        metrics.update(_prune_after_training(ctx, model, plan, teacher))
    if qat:
        metrics.update(quantize.qat_convert(model))
    elif plan.quantization_phase == "post":
        metrics.update(quantize.quantize_post_training(model, plan.quantization))
    if plan.pruning_kind == "2:4":
        metrics.update(prune.to_semi_structured(model, plan.sparse_dtype))
    del teacher
    metrics["compress_wall_s"] = time.perf_counter() - started

    compressed = ctx.evaluate(model)
    size = model_bytes(model)
    metrics.update({
        "compressed_val_loss": compressed,
        "compressed_val_ppl": _ppl(compressed),
        "uncompressed_val_loss": uncompressed,
        "quality_delta_vs_uncompressed": None if uncompressed is None else compressed - uncompressed,
        "model_size_bytes": size,
        "dense_model_size_bytes": dense_bytes,
        "size_ratio_vs_uncompressed": size / dense_bytes,
    })
    metrics.update(_benchmark(ctx, model))
    return metrics


def _dense_metrics(ctx: AfterTraining, model: nn.Module) -> dict[str, Any]:
    """The dense control: its size and inference speed (the deltas of compressed cells divide
    by these), and its val loss under the same names compressed cells use."""
    if not _is_whole_model(model):
        return {}  # a pipeline stage or sharded parameters: no single-process model to measure
    size = model_bytes(model)
    # timing inference costs seconds per cell: only where asked (a compression matrix asks it of
    # its dense controls with measure.inference: true; compressed cells always measure it)
    speed = _benchmark(ctx, model) if ctx.cell.measure.inference else {}
    return {"compressed_val_loss": ctx.dense_val_loss, "compressed_val_ppl": _ppl(ctx.dense_val_loss),
            "uncompressed_val_loss": ctx.dense_val_loss, "quality_delta_vs_uncompressed": 0.0,
            "model_size_bytes": size, "dense_model_size_bytes": size, **speed}


def _uncompressed_loss(ctx: AfterTraining, model: nn.Module, plan: Plan) -> float | None:
    """Val loss of this cell's trained weights before the post-training steps; for QAT, the same
    weights with fake quantization off. None when nothing can be undone (prune-while-training)."""
    if plan.quantization == "qat-int8":
        quantize.set_fake_quant(model, False)
        try:
            return ctx.evaluate(model)
        finally:
            quantize.set_fake_quant(model, True)
    if plan.quantization == "fp8" or not plan.has_post_steps:
        return None
    return ctx.dense_val_loss


def _teacher(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def _prune_after_training(ctx: AfterTraining, model: nn.Module, plan: Plan,
                          teacher: nn.Module | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"params_before_pruning": sum(p.numel() for p in model.parameters())}
    if plan.pruning_kind == "magnitude":
        facts.update(prune.prune_magnitude(model, plan.pruning_amount))
    elif plan.pruning_kind == "2:4":
        facts.update(prune.prune_two_four(model))
    else:
        facts.update(structured.prune_structured(model, plan.pruning_kind, plan.pruning_amount))
    if plan.finetune_steps:
        if ctx.finetune is None:
            raise RuntimeError("a fine-tune after pruning needs AfterTraining.finetune")
        facts.update(_finetune(ctx, model, plan.finetune_steps, teacher))
    prune.remove_masks(model)
    if plan.pruning_kind in ("magnitude", "2:4"):
        facts.update(prune.sparsity_of(model))
    return facts


def _finetune(ctx: AfterTraining, model: nn.Module, steps: int, teacher: nn.Module | None) -> dict[str, Any]:
    """`steps` optimizer steps through the training step, at the optimizer's own learning rate
    (no schedule); distilled from `teacher` when given. Per-step losses for the record."""
    k = ctx.cell.compress
    if teacher is None:
        curve = ctx.finetune(model, steps, language_modelling, None)
        return {"finetune_steps_done": steps, "finetune_loss_curve": [round(v, 6) for v in curve]}
    objective = Distillation(teacher, k.distill_temperature, k.distill_alpha)
    kl_curve: list[float] = []
    curve = ctx.finetune(model, steps, objective, lambda: kl_curve.append(objective.step_kl()))
    return {"finetune_steps_done": steps, "finetune_loss_curve": [round(v, 6) for v in curve],
            "distill_kl_curve": [round(v, 6) for v in kl_curve],
            "distill_temperature": k.distill_temperature, "distill_alpha": k.distill_alpha}


def _benchmark(ctx: AfterTraining, model: nn.Module) -> dict[str, Any]:
    return inference.benchmark(model, model.tok_emb.num_embeddings, ctx.cell.data.seq_len, ctx.device,
                               autocast=ctx.autocast)


def _is_whole_model(model: nn.Module) -> bool:
    """The whole GPT with full tensors here: not a pipeline stage (a missing tok_emb/lm_head),
    not FSDP/TP shards (DTensor), not ZeRO-3 partitions (DeepSpeed's `ds_tensor`)."""
    return (getattr(model, "tok_emb", None) is not None and getattr(model, "lm_head", None) is not None
            and not any(type(p).__name__ == "DTensor" or hasattr(p, "ds_tensor") for p in model.parameters()))


def _require_whole_model(model: nn.Module) -> None:
    if not _is_whole_model(model):
        raise RuntimeError("compression needs the whole model in one process (parallel.engine none)")


def _ppl(loss: float) -> float | None:
    return math.exp(loss) if loss < 700 else None
