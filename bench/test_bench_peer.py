"""txsuite's reference GPT, at its default settings, against peer implementations side by side.

Peers (each used when installed; the test is skipped when none is):
- Hugging Face transformers' GPT2LMHeadModel, with its default attention (sdpa) and, for
  information, eager attention;
- litgpt's GPT (PyPI `litgpt`), configured GPT-2-like at the same dims: LayerNorm, GELU MLP
  (GptNeoxMLP), sequential residual, biases. litgpt has no learned position embedding, so it
  runs rotary embeddings on a quarter of each head (its default), and it does not tie the
  output layer: its parameter count differs by the unembedding (65,536 of ~3.3 M).

For information (not asserted), ours also runs under torch.compile (`compile: true`), the
fastest configuration found on CPU.

Ours runs at its defaults: `model.attention: auto` resolves the kernel for this host, precision
and shape exactly as a cell does (suite.measure.attention; cached per host). Same dims (4
layers x 256 wide, 4 heads, d_ff 1024, byte-level vocab 256, no dropout), same batches, same
hand-written step (bench/conftest.py: bare_step) and AdamW settings, bf16 through
torch.autocast for all. The models' steps are interleaved, the order rotating every round.
Our step is timed by pytest-benchmark (`--benchmark-compare`), the peers' go into
`extra_info`. Asserted (issue 18): ours at least TARGET x every default-attention peer's speed.

    pytest bench/test_bench_peer.py -s -p no:cacheprovider
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from suite.measure.attention import choose_attention
from suite.measure.env import cpu_model
from suite.model import GPT, GPTConfig
from suite.model.gpt import attention_kernels

HAVE_HF = importlib.util.find_spec("transformers") is not None
HAVE_LITGPT = importlib.util.find_spec("litgpt") is not None
pytestmark = pytest.mark.skipif(
    not (HAVE_HF or HAVE_LITGPT),
    reason="the peer benchmark needs a peer: HF transformers and/or litgpt, installed with --no-deps "
           "so torch stays as it is (see bench/README.md)")

# Asserted: speed ours/peer (= peer step time / our step time) >= TARGET for every peer at its
# default attention, and the lower 95% bound above 1 (the lead is not noise).
TARGET = 1.05
WARMUP = 5
BUDGET_S = 60.0  # measuring time per precision on an idle machine
MIN_ROUNDS, MAX_ROUNDS = 50, 300  # one step of each model per round
# non-default settings, shown, not asserted: a peer's other attention, and ours under
# torch.compile (`compile: true`; compiled in the warm-up, so the rounds time the steady state)
INFORMATION_ONLY = {"hf-eager", "ours-compiled"}


def hf_model(kit, attn: str) -> torch.nn.Module:
    import transformers
    cfg = transformers.GPT2Config(
        n_layer=kit.N_LAYER, n_embd=kit.D_MODEL, n_head=kit.N_HEAD, n_inner=kit.D_FF,
        n_positions=kit.SEQ, vocab_size=kit.VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    model = transformers.GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == attn
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as ours
    return model


def litgpt_model(kit) -> torch.nn.Module:
    from litgpt.config import Config
    from litgpt.model import GPT as LitGPT
    cfg = Config(block_size=kit.SEQ, n_layer=kit.N_LAYER, n_embd=kit.D_MODEL, n_head=kit.N_HEAD,
                 vocab_size=kit.VOCAB, padded_vocab_size=kit.VOCAB, intermediate_size=kit.D_FF,
                 norm_class_name="LayerNorm", mlp_class_name="GptNeoxMLP", parallel_residual=False,
                 bias=True)
    model = LitGPT(cfg)
    model.max_seq_length = kit.SEQ
    return model


def peers(kit) -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (model, forward(x) -> logits [B, T, V]), each built from seed 0."""
    out = {}
    if HAVE_HF:
        for attn in ("sdpa", "eager"):
            torch.manual_seed(0)
            m = hf_model(kit, attn)
            out[f"hf-{attn}"] = (m, lambda x, m=m: m(input_ids=x).logits)
    if HAVE_LITGPT:
        torch.manual_seed(0)
        m = litgpt_model(kit)
        out["litgpt"] = (m, m)
    return out


def package_versions() -> dict[str, str]:
    from importlib.metadata import version
    return {name: version(name) for name, have in (("transformers", HAVE_HF), ("litgpt", HAVE_LITGPT)) if have}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ours_vs_peers(benchmark, kit, precision):
    head_dim = kit.D_MODEL // kit.N_HEAD
    choice = choose_attention(torch, torch.device("cpu"), precision, (kit.BATCH, kit.N_HEAD, kit.SEQ, head_dim),
                              cpu_model(), attention_kernels())
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=kit.VOCAB, max_seq_len=kit.SEQ, n_layer=kit.N_LAYER,
                         n_head=kit.N_HEAD, d_model=kit.D_MODEL, d_ff=kit.D_FF, attention=choice["attention"]))
    torch.manual_seed(0)
    ours_compiled = GPT(ours.cfg)
    models = {"ours": (ours, ours), "ours-compiled": (ours_compiled, torch.compile(ours_compiled)), **peers(kit)}
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in models.items()}
    for name, n in n_params.items():  # the same model size, up to litgpt's untied unembedding
        assert abs(n - n_params["ours"]) <= kit.VOCAB * kit.D_MODEL, (name, n_params)

    batches = kit.make_batches()
    total = WARMUP + MAX_ROUNDS
    steps = {name: kit.bare_step(forward, m, batches, precision, total) for name, (m, forward) in models.items()}

    if benchmark.disabled:  # --benchmark-disable: a smoke run of all three
        benchmark.pedantic(steps["ours"], setup=lambda: [step() for name, step in steps.items() if name != "ours"] and None)
        return

    round_s = kit.warm(list(steps.values()), WARMUP)
    rounds = kit.plan_rounds(round_s, BUDGET_S, MIN_ROUNDS, MAX_ROUNDS)
    samples = {name: kit.Samples() for name in steps}
    timed = {name: kit.timed(fn, samples[name]) for name, fn in steps.items()}
    names = list(steps)
    rnd = 0

    # pytest-benchmark times ours; in each round the peer steps that precede ours in the round's
    # order run in `setup`, those that follow it in `teardown` (neither is in its timing).
    def before():
        order = kit.rotation(names, rnd)
        for name in order[:order.index("ours")]:
            timed[name]()

    def after():
        nonlocal rnd
        order = kit.rotation(names, rnd)
        for name in order[order.index("ours") + 1:]:
            timed[name]()
        rnd += 1

    benchmark.group = f"peer-{precision}"
    benchmark.pedantic(timed["ours"], setup=before, teardown=after, rounds=rounds,
                       iterations=1, warmup_rounds=0)

    tokens = kit.BATCH * kit.SEQ
    tps = {name: tokens / s.median() for name, s in samples.items()}
    # speed ratio ours/peer = peer step time / our step time
    cmp = {name: kit.compare(samples[name], samples["ours"]) for name in steps if name != "ours"}
    speed = {name: {"ratio": c["paired"], "ci": [c["paired_ci"][0], c["paired_ci"][1]],
                    "ratio_of_medians": c["ratio"], "ratio_of_medians_ci": list(c["ratio_ci"])}
             for name, c in cmp.items()}
    benchmark.extra_info.update({
        "precision": precision, "vocab": kit.VOCAB, "tokens_per_step": tokens, "rounds": rounds,
        "threads": torch.get_num_threads(), "host": kit.host_line(), "packages": package_versions(),
        "our_attention": choice["attention"], "attention_trial_s": choice["times_s"],
        "params": n_params, "tokens_per_s": tps,
        "speed_ratio_ours_over_peer (time ratio peer/ours)": speed, "confidence": kit.CONFIDENCE,
        "step_times_s": {name: [round(d, 6) for d in s.durations] for name, s in samples.items()},
    })
    lines = [f"\n[peer {precision}] {kit.host_line()}, {package_versions()}",
             f"  {rounds} interleaved rounds (order rotating), vocab {kit.VOCAB}, {tokens} tokens/step, "
             f"ours with attention {choice['attention']} (auto)"]
    for name, s in samples.items():
        lines.append(f"  {name:13s} median step {s.median() * 1e3:8.2f} ms  {tps[name]:8.0f} tokens/s  "
                     f"{n_params[name]:,} parameters")
    for name, c in cmp.items():
        lines.append(f"  speed ours/{name}: {kit.fmt_ratio(c, invert=False)}")
    print("\n".join(lines))
    short = {name: c for name, c in cmp.items() if name not in INFORMATION_ONLY
             and not (c["paired"] >= TARGET and c["paired_ci"][0] > 1.0)}
    assert not short, "; ".join(
        f"ours is not {TARGET}x {name} in {precision}: speed ratio {c['paired']:.4f}, "
        f"{int(kit.CONFIDENCE * 100)}% CI {c['paired_ci']}" for name, c in short.items()) + f" ({kit.host_line()})"
