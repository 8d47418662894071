"""model.linear — the transposed-weight input gradient computes nn.Linear's gradients, the swap
keeps the model's parameters, `auto` leaves torch's Linear unless the trial separates them, and
the record states the choice."""
from __future__ import annotations

import time
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, ParallelSpec, TrainSpec
from txsuite.measure.kernel_race import decide
from txsuite.measure.linear import DEFAULT, choose_linear
from txsuite.model import GPT, GPTConfig, lm_loss
from txsuite.techniques import TrainSetup, linear_kernel
from txsuite.techniques.linear_kernel import TransposedWeightLinear, transposed_weight_linear
from txsuite.train import build_training

from cli_helpers import run_records

CPU = torch.device("cpu")


def test_its_gradients_are_the_exact_derivatives_of_a_linear_layer():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)  # [batch, tokens, d_in]
    weight = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(transposed_weight_linear, (x, weight, bias))
    assert torch.autograd.gradcheck(transposed_weight_linear, (x, weight, None))


def _output_and_grads(fn, x, weight, bias, grad, autocast: bool):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_it_matches_torch_linear_in_fp32_and_under_bf16_autocast(autocast):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(4, 32, 64), torch.randn(48, 64) * 0.1, torch.randn(48)
    grad = torch.randn(4, 32, 48)
    ours, our_grads = _output_and_grads(transposed_weight_linear, x, weight, bias, grad, autocast)
    theirs, their_grads = _output_and_grads(F.linear, x, weight, bias, grad, autocast)
    assert ours.dtype == theirs.dtype == (torch.bfloat16 if autocast else torch.float32)
    # fp32: the same products in another operand layout, a few ulps apart; bf16: both round
    # to 8 significant bits, so they may differ by an ulp of bf16 (2^-8) of the magnitude
    rel = 2.0 ** -7 if autocast else 1e-5
    for a, b in zip((ours, *our_grads), (theirs, *their_grads)):
        assert a.dtype == b.dtype  # the fp32 parameters get fp32 gradients under autocast, as torch's do
        assert (a.float() - b.float()).abs().max() <= rel * b.float().abs().max()


def _cell(linear: str = "transposed-weight", **parallel) -> CellConfig:
    return CellConfig(model=ModelSpec(preset="tiny", linear=linear), data=DataSpec(seq_len=32),
                      train=TrainSpec(steps=1, micro_batch=2), device="cpu", parallel=ParallelSpec(**parallel))


def test_the_swap_keeps_the_parameters_the_tied_weight_and_the_state_dict_then_restores_nn_linear():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=2, n_head=4, d_model=32, d_ff=128))
    params_before, keys_before = list(model.parameters()), list(model.state_dict())
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    setup = linear_kernel.apply(TrainSetup(model=model, device=CPU, parts=[model]), _cell())
    assert setup.facts == {"linear": "transposed-weight"}
    assert all(type(m) is TransposedWeightLinear for m in linears) and len(linears) == 2 * 4 + 1
    assert model.lm_head.weight is model.tok_emb.weight
    assert list(model.parameters()) == params_before and list(model.state_dict()) == keys_before
    trained = types.SimpleNamespace(model=model)  # what the worker hands the after-training steps
    for restore in setup.after_training:  # compression and inference timing get torch's Linear back
        restore(trained)
    assert all(type(m) is nn.Linear for m in linears)
    distributed = GPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=1, n_head=4, d_model=32, d_ff=128))
    mesh_setup = linear_kernel.apply(TrainSetup(model=distributed, device=CPU, parts=[distributed], mesh=object()),
                                     _cell())
    assert mesh_setup.after_training == []  # no compression after a distributed cell: nothing to restore


def test_a_training_step_gives_the_gradients_of_torch_linear():
    def grads(linear: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=2, n_head=4, d_model=32, d_ff=128))
        linear_kernel.apply(TrainSetup(model=model, device=CPU, parts=[model]), _cell(linear))
        idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
        lm_loss(model(idx[:, :-1]), idx[:, 1:]).backward()
        return [p.grad for p in model.parameters()]

    for ours, theirs in zip(grads("transposed-weight"), grads("torch")):
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_auto_keeps_torch_unless_every_round_of_the_other_kernel_is_faster():
    assert decide({"torch": [1.0, 1.1, 1.2], "transposed-weight": [0.5, 0.6, 0.7]}, DEFAULT) == "transposed-weight"
    assert decide({"torch": [1.0, 1.1, 1.2], "transposed-weight": [0.5, 0.6, 1.05]}, DEFAULT) == "torch"  # overlap
    assert decide({"torch": [1.0, 1.0, 1.0], "transposed-weight": [1.0, 1.0, 1.0]}, DEFAULT) == "torch"  # tie


def test_a_kernel_slower_in_every_round_is_not_chosen_and_its_time_is_measured():
    def slower(x, weight, bias=None):
        time.sleep(0.02)  # on top of the same product: slower in every round, however loaded the host
        return F.linear(x, weight, bias)

    choice = choose_linear(torch, CPU, "fp32", (64, 32, 48), "test-cpu", {"torch": F.linear, "slower": slower},
                           use_cache=False)
    assert choice["linear"] == "torch"
    assert choice["times_s"]["slower"] >= 0.02  # a real measurement of the sleep, not a constant


def test_a_wrong_kernel_is_rejected_before_it_is_timed():
    def wrong(x, weight, bias=None):
        return F.linear(x, weight, -bias)  # the bias's sign flipped

    choice = choose_linear(torch, CPU, "bf16", (64, 32, 48), "test-cpu", {"torch": F.linear, "wrong": wrong},
                           use_cache=False)
    assert choice["linear"] == "torch" and set(choice["times_s"]) == {"torch"}
    assert choice["rejected"]["wrong"].startswith("wrong: max error")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cell_with_auto_states_the_kernel_its_trial_chose(precision):
    """On a host whose bf16 matmul is emulated the bf16 trial separates the kernels (6x here);
    with native kernels it keeps torch. Either way the record's choice follows its times."""
    cell = CellConfig(model=ModelSpec(preset="tiny"), data=DataSpec(seq_len=32), precision=precision,
                      train=TrainSpec(steps=1, micro_batch=2), device="cpu")
    training = build_training(cell)
    facts = training.setup.facts
    times = facts["linear_auto"]["times_s"]
    assert set(times) == {"torch", "transposed-weight"}
    if facts["linear"] == "transposed-weight":
        assert times["transposed-weight"] < times["torch"]
    kinds = {type(m) for m in training.setup.model.modules() if isinstance(m, nn.Linear)}
    assert kinds == {TransposedWeightLinear if facts["linear"] == "transposed-weight" else nn.Linear}


def test_auto_keeps_torch_where_the_swap_cannot_apply_and_says_why():
    facts = linear_kernel.resolve(_cell("auto", tp=2, dp=1), CPU)
    assert facts == {"linear": "torch", "linear_auto": {"not_tried": "tensor parallelism (tp > 1) shards "
                                                                      "nn.Linear with its own hooks"}}


def _compression_cells_by_kernel(tmp_path, compress: str) -> tuple[dict, dict]:
    """(torch's cell, transposed-weight's cell): the metrics of a one-layer tiny cell trained for
    2 steps with each kernel and then compressed as `compress` (a YAML mapping) says."""
    records = run_records(tmp_path, "name: compress-after-kernel\n"
                                    "fixed:\n"
                                    "  model: {preset: tiny, n_layer: 1}\n"
                                    "  data: {dataset: markov, seq_len: 32}\n"
                                    "  train: {steps: 2, warmup_steps: 0, micro_batch: 2, eval_batches: 1}\n"
                                    f"  compress: {compress}\n"
                                    "axes:\n"
                                    "  model.linear: [torch, transposed-weight]\n")
    by_kernel = {r.metrics["linear"]: r.metrics for r in records}
    return by_kernel["torch"], by_kernel["transposed-weight"]


def test_a_compression_cell_quantizes_the_same_layers_after_training_with_either_kernel(tmp_path):
    """Compression after a transposed-weight training finds as many layers to quantize as after
    torch's Linear, and the compressed model's loss is the same to fp32 rounding (the kernel
    changes how gradients are computed, not the trained weights beyond rounding)."""
    torch_cell, ours = _compression_cells_by_kernel(tmp_path, "{quantization: int8-dynamic}")
    assert ours["quantized_layers"] == torch_cell["quantized_layers"] > 0
    assert abs(ours["compressed_val_loss"] - torch_cell["compressed_val_loss"]) <= 1e-4 * torch_cell["compressed_val_loss"]


def test_a_pruning_fine_tune_runs_the_kernel_the_cell_trained_with(tmp_path):
    """The fine-tune after structured pruning (layers rebuilt smaller as plain nn.Linear) runs
    transposed-weight where the cell trained with it (the record says so), to the losses torch's
    Linear gives, and the compressed model's loss is the same too."""
    torch_cell, ours = _compression_cells_by_kernel(tmp_path, "{pruning: structured-0.5, finetune_steps: 3}")
    assert torch_cell["finetune_linear"] == "torch" and ours["finetune_linear"] == "transposed-weight"
    assert len(ours["finetune_loss_curve"]) == len(torch_cell["finetune_loss_curve"]) == 3
    for a, b in zip(ours["finetune_loss_curve"], torch_cell["finetune_loss_curve"]):
        assert abs(a - b) <= 1e-4 * b  # fp32: the kernels differ by summation order only
    assert abs(ours["compressed_val_loss"] - torch_cell["compressed_val_loss"]) <= 1e-4 * torch_cell["compressed_val_loss"]


def test_training_kernel_converts_only_for_the_fine_tune_and_leaves_torch_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=1, n_head=4, d_model=32, d_ff=128))
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    with linear_kernel.training_kernel(model, "torch") as kernel:
        assert kernel == "torch" and all(type(m) is nn.Linear for m in linears)
    with linear_kernel.training_kernel(model, "transposed-weight") as kernel:
        assert kernel == "transposed-weight" and all(type(m) is TransposedWeightLinear for m in linears)
    assert all(type(m) is nn.Linear for m in linears)
    with pytest.raises(RuntimeError, match="boom"), linear_kernel.training_kernel(model, "transposed-weight"):
        raise RuntimeError("boom")  # a failed fine-tune still hands back torch's layers
    assert all(type(m) is nn.Linear for m in linears)
