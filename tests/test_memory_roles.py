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
