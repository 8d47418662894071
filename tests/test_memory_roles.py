"""Issue 30: the tensors live at a training step's peak, measured and named by role."""
from __future__ import annotations

import torch

from txsuite.measure.memory_roles import ROLES, MemoryRoles
from txsuite.model import GPT, GPTConfig

CPU = torch.device("cpu")


def _step(model, optimizer, batch: int):
    x = torch.randint(0, 64, (batch, 32))

    def run():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


def _measured(batch: int, steps_before: int = 1) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=2, n_head=2, d_model=32, d_ff=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = _step(model, optimizer, batch)
    for _ in range(steps_before):
        step()
    with MemoryRoles(model, optimizer, CPU) as roles:
        step()
    out = roles.metrics()
    out["expected_params"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["expected_state"] = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    return out


def test_the_roles_add_up_and_the_known_ones_are_exact():
    m = _measured(batch=4)
    assert m["params_at_peak_bytes"] == m["expected_params"]
    assert m["optimizer_at_peak_bytes"] == m["expected_state"]  # state from the step before, live throughout
    assert m["tensors_at_peak_bytes"] == sum(m[f"{role}_at_peak_bytes"] for role in ROLES)
    assert m["activations_at_peak_bytes"] > 0 and m["other_at_peak_bytes"] >= 0


def test_activations_grow_with_the_batch_and_the_weights_do_not():
    small, big = _measured(batch=2), _measured(batch=16)
    assert big["activations_at_peak_bytes"] > 4 * small["activations_at_peak_bytes"]
    assert big["params_at_peak_bytes"] == small["params_at_peak_bytes"]
    assert big["optimizer_at_peak_bytes"] == small["optimizer_at_peak_bytes"]


def test_the_first_step_counts_the_optimizer_state_it_creates_when_live_at_the_peak():
    m = _measured(batch=4, steps_before=0)
    assert m["params_at_peak_bytes"] == m["expected_params"]
    assert 0 <= m["optimizer_at_peak_bytes"] <= m["expected_state"]
    assert m["tensors_at_peak_bytes"] == sum(m[f"{role}_at_peak_bytes"] for role in ROLES)


def _cell_activations(precision: str, attention: str) -> tuple[int, int]:
    """(activations at a real step's peak, what txsuite/config/estimate.py says the cell keeps)."""
    from txsuite.config.estimate import estimate_memory
    from txsuite.config.spec import CellConfig
    from txsuite.train.build import build_training

    cell = CellConfig.from_dict({"model": {"preset": "tiny", "attention": attention},
                                 "data": {"dataset": "markov", "seq_len": 64, "symbols": 64},
                                 "train": {"steps": 4, "micro_batch": 8}, "precision": precision, "device": "cpu"})
    training = build_training(cell)
    trainer = training.trainer
    trainer.step(training.batches)  # the optimizer's state exists from here on, as in a measured step
    with MemoryRoles(training.setup.model, trainer.optimizer, CPU) as roles:
        trainer.step(training.batches)
    return roles.metrics()["activations_at_peak_bytes"], estimate_memory(cell, training.dataset.vocab_size)[
        "activations_bytes"]


def test_the_estimate_counts_the_activations_a_real_step_keeps():
    """The estimate's activations (what each block saves for its backward pass, by precision and
    attention kernel, plus the logits) against what the profiled step measured live at its peak:
    fp32, autocast bf16 and pure bf16, SDPA and matmul attention (its T x T scores)."""
    for precision in ("fp32", "bf16", "bf16-pure"):
        for attention in ("sdpa", "matmul"):
            measured, estimated = _cell_activations(precision, attention)
            assert abs(estimated / measured - 1) < 0.12, (precision, attention, measured, estimated)
