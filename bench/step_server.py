"""One model's training step in a process of its own, run one step at a time on request
(bench/test_bench_peer.py drives several of these, interleaved).

    python bench/step_server.py NAME PRECISION TOTAL_STEPS [shared|natural]

NAME: ours, ours-compiled, hf-sdpa, hf-eager, litgpt, minimal-gpt (bench/minimal_gpt.py).
`shared` (the default): every model runs the one hand-written step of bench/conftest.py
(bare_step); `natural`: each its own loop and optimizer set-up (bench/natural_loops.py). Each model runs in its own process so
that each has the process settings it has in real use: ours those a txsuite cell applies in its
worker at the defaults (the host allocator policy, txsuite/measure/host_allocator.py; the OpenMP spin
setting the runner gives a CPU cell comes in the environment), a peer the defaults of a plain
Python process. One process for all would hand the cell's settings to the peers too (the
allocator policy is process-wide), or take them from ours.

Prints one JSON line once built ({"params", "attention", "host_allocator"}); then, for each
line on stdin, runs one step and prints "<start> <duration>" in seconds of time.perf_counter
(CLOCK_MONOTONIC on Linux: one clock for every process, so the parent can interleave and pair
the steps of all its servers). Exits at the end of stdin.
"""
from __future__ import annotations

import json
import sys
import time

import torch

# bench/ is this script's folder, first on sys.path: the shared benchmark setting and step
import conftest as kit  # noqa: E402

OURS = ("ours", "ours-compiled")
PEERS = ("hf-sdpa", "hf-eager", "litgpt", "minimal-gpt")


def hf_model(attn: str) -> torch.nn.Module:
    import transformers
    cfg = transformers.GPT2Config(
        n_layer=kit.N_LAYER, n_embd=kit.D_MODEL, n_head=kit.N_HEAD, n_inner=kit.D_FF,
        n_positions=kit.SEQ, vocab_size=kit.VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    model = transformers.GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == attn
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as ours
    return model


def litgpt_model() -> torch.nn.Module:
    from litgpt.config import Config
    from litgpt.model import GPT as LitGPT
    cfg = Config(block_size=kit.SEQ, n_layer=kit.N_LAYER, n_embd=kit.D_MODEL, n_head=kit.N_HEAD,
                 vocab_size=kit.VOCAB, padded_vocab_size=kit.VOCAB, intermediate_size=kit.D_FF,
                 norm_class_name="LayerNorm", mlp_class_name="GptNeoxMLP", parallel_residual=False,
                 bias=True)
    model = LitGPT(cfg)
    model.max_seq_length = kit.SEQ
    return model


def minimal_gpt_model() -> torch.nn.Module:
    from minimal_gpt import MinimalGPT
    return MinimalGPT(vocab=kit.VOCAB, context=kit.SEQ, layers=kit.N_LAYER, heads=kit.N_HEAD, width=kit.D_MODEL,
                      hidden=kit.D_FF)


def build(name: str, precision: str) -> tuple[torch.nn.Module, object, dict]:
    """(model, forward(x) -> logits [B, T, V], what to report), the model built from seed 0.
    info["adamw"]: the AdamW kernel choice (foreach/fused) — for ours what a cell's optimizer
    builder picks on CPU, for a peer torch's default (what `torch.optim.AdamW(params)` gives)."""
    info: dict = {"attention": None, "linear": None, "host_allocator": "system", "adamw": {"foreach": None, "fused": None}}
    if name in OURS:
        from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
        from txsuite.config.spec.measure import MeasureSpec
        from txsuite.model import GPT, GPTConfig
        from txsuite.measure.host_allocator import apply_host_allocator
        from txsuite.techniques.kernel_trial import resolve_attention
        # first, as the worker does: every allocation after it is served under the policy
        info["host_allocator"] = apply_host_allocator(MeasureSpec().host_allocator)["host_allocator"]
        # the cell this model is: its auto kernels resolved exactly as a cell's (a block trial of its shape)
        cell = CellConfig(model=ModelSpec(preset="small"), data=DataSpec(seq_len=kit.SEQ),
                          train=TrainSpec(micro_batch=kit.BATCH), precision=precision, device="cpu")
        assert cell.model.dims == (kit.N_LAYER, kit.N_HEAD, kit.D_MODEL, kit.D_FF), "the kit's model is `small`"
        resolved = resolve_attention(cell, torch.device("cpu"))
        choice = {"attention": resolved["attention"], "times_s": resolved["attention_auto"]["times_s"]}
        info["attention"], info["attention_trial_s"] = choice["attention"], choice["times_s"]
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=kit.VOCAB, max_seq_len=kit.SEQ, n_layer=kit.N_LAYER, n_head=kit.N_HEAD,
                              d_model=kit.D_MODEL, d_ff=kit.D_FF, attention=choice["attention"]))
        # model.linear: auto, as a cell resolves it (txsuite.techniques.linear_kernel)
        from txsuite.techniques import linear_kernel
        linear = linear_kernel.resolve(cell, torch.device("cpu"), choice["attention"])
        info["linear"], info["linear_trial_s"] = linear["linear"], linear["linear_auto"].get("times_s")
        if linear["linear"] == linear_kernel.TRIAL_KERNEL:
            linear_kernel.convert(model)
        from txsuite.config.spec import TrainSpec
        from txsuite.train.optimizers import build_optimizer
        cells_adamw = build_optimizer(model, TrainSpec(), torch.device("cpu")).defaults
        info["adamw"] = {k: cells_adamw[k] for k in ("foreach", "fused")}
        # compiled in the warm-up, so the measured rounds time the steady state
        return model, (torch.compile(model) if name == "ours-compiled" else model), info
    torch.manual_seed(0)
    if name == "litgpt":
        model = litgpt_model()
        return model, model, info
    if name == "minimal-gpt":
        model = minimal_gpt_model()
        return model, (lambda x: model(x)[0]), info
    model = hf_model(name.removeprefix("hf-"))
    return model, (lambda x: model(input_ids=x).logits), info


def main(argv: list[str]) -> int:
    name, precision, total = argv[0], argv[1], int(argv[2])
    mode = argv[3] if len(argv) > 3 else "shared"
    if mode == "natural":
        from natural_loops import natural_step
        model, step, info = natural_step(name, precision, total)
    else:
        model, forward, info = build(name, precision)
        step = kit.bare_step(forward, model, kit.make_batches(), precision, total, impl=info["adamw"])
    info["params"] = sum(p.numel() for p in model.parameters())
    info["threads"] = torch.get_num_threads()
    print(json.dumps(info), flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        step()
        print(f"{t0!r} {time.perf_counter() - t0!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
