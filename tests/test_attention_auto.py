"""model.attention: auto — the kernel is measured, checked for correctness, cached, and stated."""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
from txsuite.measure.attention import choose_attention
from txsuite.measure.host_cache import cache_dir
from txsuite.model.gpt import attention_kernels
from txsuite.train import build_training

CPU = torch.device("cpu")
SHAPE = (2, 4, 32, 16)  # batch, heads, seq, head_dim


def causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_a_fast_but_wrong_kernel_is_never_chosen():
    def fast_but_wrong(q, k, v):  # no causal mask: sees the future
        return F.scaled_dot_product_attention(q, k, v, is_causal=False)

    def slow_but_right(q, k, v):
        time.sleep(0.002)
        return causal(q, k, v)

    for precision in ("fp32", "bf16"):
        choice = choose_attention(torch, CPU, precision, SHAPE, "test-cpu",
                                  {"wrong": fast_but_wrong, "right": slow_but_right}, use_cache=False)
        assert choice["attention"] == "right"
        assert choice["rejected"]["wrong"].startswith("wrong: max error")
        assert set(choice["times_s"]) == {"right"}


def test_the_faster_correct_kernel_wins_by_its_measured_median():
    def slower(q, k, v):
        time.sleep(0.004)  # well beyond any scheduling noise at this shape
        return causal(q, k, v)

    choice = choose_attention(torch, CPU, "fp32", SHAPE, "test-cpu", {"slower": slower, "plain": causal}, use_cache=False)
    assert choice["attention"] == "plain"
    assert choice["times_s"]["plain"] < choice["times_s"]["slower"]
    assert choice["times_s"]["slower"] >= 0.004  # a real measurement of the sleep, not a constant


def test_the_choice_is_measured_once_per_host_and_shape_then_read_from_the_cache():
    first = choose_attention(torch, CPU, "fp32", SHAPE, "cache-test-cpu", attention_kernels())
    again = choose_attention(torch, CPU, "fp32", SHAPE, "cache-test-cpu", attention_kernels())
    assert first["cached"] is False and again["cached"] is True
    assert again["attention"] == first["attention"] and again["times_s"] == first["times_s"]
    stored = json.loads((cache_dir() / "attention.json").read_text())
    assert stored[first["key"]]["attention"] == first["attention"]
    other = choose_attention(torch, CPU, "fp32", (4, 4, 32, 16), "cache-test-cpu", attention_kernels())  # another batch
    assert other["cached"] is False and other["key"] != first["key"]


def _cell(attention: str) -> CellConfig:
    return CellConfig(model=ModelSpec(preset="tiny", attention=attention), data=DataSpec(seq_len=32),
                      train=TrainSpec(steps=1, micro_batch=2), device="cpu")


def test_a_cell_with_auto_runs_and_states_the_chosen_kernel():
    training = build_training(_cell("auto"))
    facts = training.setup.facts
    assert facts["attention"] in ("sdpa", "matmul")
    times = facts["attention_auto"]["times_s"]
    assert facts["attention"] == "sdpa" or times["matmul"] < times["sdpa"]  # away from SDPA only when faster
    assert all(block.attn.attention == facts["attention"] for block in training.setup.model.blocks)
    pinned = build_training(_cell("matmul")).setup
    assert pinned.facts["attention"] == "matmul" and "attention_auto" not in pinned.facts
    assert all(block.attn.attention == "matmul" for block in pinned.model.blocks)


def test_a_large_batch_is_trialled_at_a_bounded_size():
    """A cell of 4,096 sequences is ranked on 16 (64 sequence-head pairs), not 4,096: one entry
    serves every batch from 16 up."""
    big = choose_attention(torch, CPU, "fp32", (4096, 4, 32, 16), "cap-test-cpu", attention_kernels())
    also = choose_attention(torch, CPU, "fp32", (32, 4, 32, 16), "cap-test-cpu", attention_kernels())
    assert "|B16 H4 T32 D16|" in big["key"] and also["key"] == big["key"] and also["cached"]
