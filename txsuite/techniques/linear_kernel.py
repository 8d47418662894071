"""`model.linear`: which code computes the linear layers' products, a model converter (the
last of them, after float8, qat and prune_schedule).

torch               nn.Linear as it is
transposed-weight   the same forward; the input gradient g @ W is computed as
                    g @ (W^T made contiguous)^T, so that product reads its second operand
                    transposed, as the forward does, instead of both contiguous
auto (default)      transposed-weight where the host's matmul is measurably faster for it,
                    else torch (txsuite.measure.linear: measured once per host and cached)

Why: on CPUs without bf16 instructions torch's fallback bf16 matmul is more than ten times slower
when both operands are contiguous (the input gradient's layout) than when one is transposed; a
`small` bf16 step spent most of its time there (docs/measurements.md, "bf16 on a CPU without
bf16 instructions"). The copy of W is
d_in x d_out elements per layer and backward pass, nothing beside the product.

The swap changes each plain `nn.Linear`'s class in place (TransposedWeightLinear is an
nn.Linear: same parameters, the tied lm_head/embedding weight stays one tensor, same
state_dict), so whatever walks the model afterwards (pipeline stages, checkpoint wrappers,
FSDP, compile) sees the modules it expects; after training they become nn.Linear again, for
compression and the inference timing. Layers another converter
already replaced (Float8Linear, QAT's fake-quantized linears) keep their own code. Not with
tensor parallelism (its styles shard nn.Linear with their own hooks) or DeepSpeed (ZeRO-3
replaces torch's linear function); `auto` keeps torch there, and the plan refuses the explicit
setting.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from txsuite.config.spec.model import transposed_weight_unsupported
from txsuite.techniques.setup import TrainSetup

TRIAL_KERNEL = "transposed-weight"


class _TransposedWeightLinear(torch.autograd.Function):
    """y = x W^T + b; backward: dx = g (W^T contiguous)^T, dW = g^T x, db = sum g.
    x: [..., d_in], W: [d_out, d_in], b: [d_out] or None -> y: [..., d_out]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [tokens, d_out]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # [tokens, d_out] @ [d_out, d_in] with the second operand a transposed view
            grad_x = (g @ weight.t().contiguous().t()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = g.t() @ x.reshape(-1, x.shape[-1])  # [d_out, d_in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        return grad_x, grad_weight, grad_bias


def transposed_weight_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear's result and gradients, through _TransposedWeightLinear; under autocast the
    operands are cast to its dtype first (as autocast casts F.linear's), differentiably, so
    the fp32 parameters receive fp32 gradients."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return _TransposedWeightLinear.apply(x, weight, bias)


class TransposedWeightLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return transposed_weight_linear(x, self.weight, self.bias)


KERNELS = {"torch": F.linear, TRIAL_KERNEL: transposed_weight_linear}


def apply(setup: TrainSetup, cell) -> TrainSetup:
    # the attention kernel the model runs (resolved before the model was built): the block trial runs it too
    attention = getattr(getattr(setup.model, "cfg", None), "attention", "sdpa")
    choice = resolve(cell, setup.device, attention)
    if choice["linear"] == TRIAL_KERNEL:
        convert(setup.model)
        if setup.mesh is None:  # only a single-process cell is compressed and timed for inference
            setup.after_training.append(restore)
    setup.facts.update(choice)  # the record states the kernel, and why when it was chosen
    return setup


def restore(after_training) -> dict[str, Any]:
    """After training (txsuite.techniques.compression.AfterTraining): the trained model's layers
    become nn.Linear again, so compression and the inference timing measure the model as it is
    deployed (inference has no input gradient to speed up). Runs before compression's own step
    (converters come first in the order); a pruning fine-tune converts them again for its
    steps (`training_kernel`). Walks the model it is given rather than keeping a list, which
    would hold every layer (and, under pipelining, other stages' blocks) alive for the whole run."""
    for module in after_training.model.modules():
        if type(module) is TransposedWeightLinear:
            module.__class__ = nn.Linear
    return {}


def convert(model: nn.Module) -> list[nn.Linear]:
    """Every plain nn.Linear of model becomes a TransposedWeightLinear, in place; returns them."""
    converted = [m for m in model.modules() if type(m) is nn.Linear]
    for module in converted:
        module.__class__ = TransposedWeightLinear
    return converted


@contextlib.contextmanager
def training_kernel(model: nn.Module, kernel: str | None) -> Iterator[str]:
    """While the block runs, model's plain nn.Linear layers run `kernel`, the one the cell
    trained with (its record's `linear`; None or torch: nothing changes); after it, nn.Linear
    again. Yields the kernel the layers run (torch where nothing was converted). For training
    steps after training (a pruning fine-tune): on a host where the cell's trial chose
    transposed-weight, torch's Linear would make each such step several times slower than the
    cell's own (docs/measurements.md, "bf16 on a CPU without bf16 instructions"). Layers
    structured pruning rebuilt are
    plain nn.Linear and are converted too; the trial measured the unpruned shape."""
    converted = convert(model) if kernel == TRIAL_KERNEL else []
    try:
        yield TRIAL_KERNEL if converted else "torch"
    finally:
        for module in converted:
            if type(module) is TransposedWeightLinear:
                module.__class__ = nn.Linear


def resolve(cell, device: torch.device, attention: str = "sdpa") -> dict[str, Any]:
    """{"linear": the kernel, ...}: the cell's own choice, or for `auto` the measured one, raced
    inside a block of the cell's shape and precision running `attention` (with the trial's
    times, its level and whether they came from the host's cache), or torch with the reason
    where the setting does not apply."""
    setting = cell.model.linear
    if setting != "auto":
        return {"linear": setting}
    unsupported = transposed_weight_unsupported(cell)
    if unsupported:
        return {"linear": "torch", "linear_auto": {"not_tried": unsupported}}
    from txsuite.measure.device import device_fingerprint
    from txsuite.measure.linear import choose_linear
    from txsuite.techniques.kernel_trial import block_trial, rng_untouched, trial_facts
    _, _, d_model, d_ff = cell.model.dims
    shape = (cell.train.micro_batch * cell.data.seq_len, d_model, d_ff)  # the MLP's first linear (tp is 1 here)
    with rng_untouched(device):
        choice = choose_linear(torch, device, cell.precision, shape, device_fingerprint(torch, device)["device_name"],
                               KERNELS, block=block_trial(cell, device, "linear", {"attention": attention}))
    return {"linear": choice["linear"], "linear_auto": trial_facts(choice)}

