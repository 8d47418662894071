"""txsuite's reference GPT against Hugging Face transformers' GPT2LMHeadModel, side by side.

Same dims (4 layers x 256 wide, 4 heads, d_ff 1024, byte-level vocab 256, tied embeddings,
no dropout), same batches, same hand-written step (bench/conftest.py: bare_step) and AdamW
settings, bf16 through torch.autocast for both. HF runs with its default attention (sdpa)
and, for information, with eager attention. The three models' steps are interleaved, the
order rotating every round. Our step is timed by pytest-benchmark (`--benchmark-compare`),
the HF ones go into `extra_info`. Asserted: ours is at least as fast as HF's default (sdpa).

    pytest bench/test_bench_peer.py -s -p no:cacheprovider
"""
from __future__ import annotations

import pytest
import torch

from suite.model import GPT, GPTConfig

transformers = pytest.importorskip(
    "transformers",
    reason="the peer benchmark needs HF transformers: pip install --no-deps transformers, "
           "then its pure-Python dependencies (see bench/README.md), keeping torch as it is")

# Asserted: the lower 95% confidence bound of (our tokens/s) / (HF sdpa tokens/s). 1.0 would
# ask for a significant win; 0.98 asks for a tie-or-better while leaving room for the shared
# machine's noise (see README: the measured bound is well above it).
MIN_SPEED_RATIO = 0.98
WARMUP = 5
BUDGET_S = 60.0  # measuring time per precision on an idle machine
MIN_ROUNDS, MAX_ROUNDS = 50, 300  # one step of each of the three models per round


def hf_model(kit, attn: str) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=kit.N_LAYER, n_embd=kit.D_MODEL, n_head=kit.N_HEAD, n_inner=kit.D_FF,
        n_positions=kit.SEQ, vocab_size=kit.VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    model = transformers.GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == attn
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as ours
    return model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ours_vs_hf_gpt2(benchmark, kit, precision):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=kit.VOCAB, max_seq_len=kit.SEQ, n_layer=kit.N_LAYER,
                         n_head=kit.N_HEAD, d_model=kit.D_MODEL, d_ff=kit.D_FF))
    models = {"ours": ours}
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        models[f"hf-{attn}"] = hf_model(kit, attn)
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert len(set(n_params.values())) == 1, n_params

    batches = kit.make_batches()
    total = WARMUP + MAX_ROUNDS
    steps = {"ours": kit.bare_step(ours, ours, batches, precision, total)}
    for name in ("hf-sdpa", "hf-eager"):
        m = models[name]
        steps[name] = kit.bare_step(lambda x, m=m: m(input_ids=x).logits, m, batches, precision, total)

    if benchmark.disabled:  # --benchmark-disable: a smoke run of all three
        benchmark.pedantic(steps["ours"], setup=lambda: [steps["hf-sdpa"](), steps["hf-eager"]()] and None)
        return

    round_s = kit.warm(list(steps.values()), WARMUP)
    rounds = kit.plan_rounds(round_s, BUDGET_S, MIN_ROUNDS, MAX_ROUNDS)
    samples = {name: kit.Samples() for name in steps}
    timed = {name: kit.timed(fn, samples[name]) for name, fn in steps.items()}
    names = list(steps)
    rnd = 0

    # pytest-benchmark times ours; in each round the HF steps that precede ours in the round's
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
    # speed ratio ours/HF = HF step time / our step time
    cmp = {name: kit.compare(samples[name], samples["ours"]) for name in ("hf-sdpa", "hf-eager")}
    speed = {name: {"ratio": c["paired"], "ci": [c["paired_ci"][0], c["paired_ci"][1]],
                    "ratio_of_medians": c["ratio"], "ratio_of_medians_ci": list(c["ratio_ci"])}
             for name, c in cmp.items()}
    benchmark.extra_info.update({
        "precision": precision, "vocab": kit.VOCAB, "tokens_per_step": tokens, "rounds": rounds,
        "threads": torch.get_num_threads(), "host": kit.host_line(), "transformers": transformers.__version__,
        "params": n_params["ours"], "tokens_per_s": tps,
        "speed_ratio_ours_over_hf (time ratio hf/ours)": speed, "confidence": kit.CONFIDENCE,
        "step_times_s": {name: [round(d, 6) for d in s.durations] for name, s in samples.items()},
    })
    lines = [f"\n[peer {precision}] {kit.host_line()}, transformers {transformers.__version__}",
             f"  {rounds} interleaved rounds (order rotating), vocab {kit.VOCAB}, {tokens} tokens/step, "
             f"{n_params['ours']:,} parameters each"]
    for name, s in samples.items():
        lines.append(f"  {name:9s} median step {s.median() * 1e3:8.2f} ms  {tps[name]:8.0f} tokens/s")
    for name, c in cmp.items():
        lines.append(f"  speed ours/{name}: {kit.fmt_ratio(c, invert=False)}")
    print("\n".join(lines))
    low = cmp["hf-sdpa"]["paired_ci"][0]
    assert cmp["hf-sdpa"]["paired"] >= 1.0 and low >= MIN_SPEED_RATIO, (
        f"our model trains slower than HF GPT2LMHeadModel (sdpa) in {precision}: speed ratio "
        f"{cmp['hf-sdpa']['paired']:.4f}, {int(kit.CONFIDENCE * 100)}% CI {cmp['hf-sdpa']['paired_ci']} "
        f"({kit.host_line()})")
