"""txsuite's reference GPT, at its default settings, against peer implementations side by side.

Peers:
- Hugging Face transformers' GPT2LMHeadModel, with its default attention (sdpa) and eager
  attention (when transformers is installed);
- litgpt's GPT (PyPI `litgpt`, when installed), configured GPT-2-like at the same dims:
  LayerNorm, GELU MLP (GptNeoxMLP), sequential residual, biases. litgpt has no learned position
  embedding, so it runs rotary embeddings on a quarter of each head (its default), and it does
  not tie the output layer: its parameter count differs by the unembedding (65,536 of ~3.3 M);
- minimal-gpt (bench/minimal_gpt.py, always present): a minimal GPT in the nanoGPT style,
  written here from public facts (fused qkv, SDPA, exact GELU, tied embeddings, its own AdamW
  set-up).

Two comparisons, each per precision (fp32, bf16):
- `shared`: every model runs one hand-written step (bench/conftest.py: bare_step) with the same
  AdamW settings (the kernel: ours the fused one a cell's optimizer builder picks on CPU, a peer
  torch's default). For information, ours also runs under torch.compile (`ours-compiled`).
- `natural`: each model in its own loop and optimizer set-up (bench/natural_loops.py); ours is
  a txsuite cell at its defaults stepped by the cell's own loop.

Every model trains in a process of its own (bench/step_server.py), with the settings it has in
real use: ours those a txsuite cell runs with at its defaults (the runner's OpenMP spin
setting, the worker's `measure.host_allocator`), a peer those of a plain Python process (the
environment as the user gave it). Ours runs at its defaults: `model.attention: auto` resolves
the kernel for this host, precision and shape exactly as a cell does. The servers' steps are
interleaved, one at a time, the order rotating every round, and timed inside each server (one
monotonic clock for all). Our step, as the parent waits for it, is timed by pytest-benchmark
(`--benchmark-compare`); the peers' go into `extra_info`.

Asserted (issue 31), speed ours/peer with its 95% interval: in bf16 at least 1.05 with the
lower bound above 1 (a lead); in fp32 at least 1.0 with the lower bound at least 0.98 (parity:
every model runs the same kernels there). In `shared`, hf-eager and ours-compiled are shown,
not asserted; in `natural` every peer is asserted.

    pytest bench/test_bench_peer.py -s -p no:cacheprovider
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAVE_HF = importlib.util.find_spec("transformers") is not None
HAVE_LITGPT = importlib.util.find_spec("litgpt") is not None

# Asserted: speed ours/peer (= peer step time / our step time): (least point, least lower 95%
# bound) by precision; a lower bound must exceed its floor in bf16 and reach it in fp32.
TARGET = {"bf16": (1.05, 1.0), "fp32": (1.0, 0.98)}
WARMUP = 5
BUDGET_S = 60.0  # measuring time per precision on an idle machine
MIN_ROUNDS, MAX_ROUNDS = 50, 300  # one step of each model per round
# shared mode's non-default settings, shown, not asserted: a peer's other attention, and ours
# under torch.compile (`compile: true`; compiled in the warm-up, so the rounds time the steady state)
INFORMATION_ONLY = {"shared": {"hf-eager", "ours-compiled"}, "natural": set()}
STEP_SERVER = Path(__file__).with_name("step_server.py")


class StepServer:
    """A bench/step_server.py process: one model, one step per call."""

    def __init__(self, name: str, precision: str, total_steps: int, env: dict[str, str], mode: str):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, str(STEP_SERVER), name, precision, str(total_steps), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the step server of {name} ended before it was built (its stderr is above)")
        self.info = json.loads(line)

    def step(self) -> tuple[float, float]:
        """One training step: its (start, duration) on the server's perf_counter clock."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        start, duration = self.proc.stdout.readline().split()
        return float(start), float(duration)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def variants(mode: str) -> list[str]:
    names = ["ours"] + (["ours-compiled"] if mode == "shared" else [])
    if HAVE_HF:
        names += ["hf-sdpa", "hf-eager"]
    if HAVE_LITGPT:
        names.append("litgpt")
    return names + ["minimal-gpt"]


def package_versions() -> dict[str, str]:
    from importlib.metadata import version
    return {name: version(name) for name, have in (("transformers", HAVE_HF), ("litgpt", HAVE_LITGPT)) if have}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["shared", "natural"])
def test_ours_vs_peers(benchmark, kit, precision, mode):
    total = WARMUP + MAX_ROUNDS
    # ours: the environment a cell gets (bench/conftest.py set the runner's OpenMP setting)
    servers: dict[str, StepServer] = {}
    try:
        for name in variants(mode):
            servers[name] = StepServer(name, precision, total,
                                       dict(os.environ) if name.startswith("ours") else kit.PLAIN_ENV, mode)
        run_rounds(benchmark, kit, precision, mode, servers)
    finally:
        for server in servers.values():
            server.close()


def run_rounds(benchmark, kit, precision, mode, servers):
    info = {name: s.info for name, s in servers.items()}
    n_params = {name: i["params"] for name, i in info.items()}
    for name, n in n_params.items():  # the same model size, up to litgpt's untied unembedding
        assert abs(n - n_params["ours"]) <= kit.VOCAB * kit.D_MODEL, (name, n_params)
    from txsuite.config.spec.measure import MeasureSpec
    assert info["ours"]["host_allocator"] == MeasureSpec().host_allocator, info["ours"]  # the default applied
    if mode == "natural":
        assert info["ours"]["attention"] in ("sdpa", "matmul"), info["ours"]  # auto resolved by the cell
    samples = {name: kit.Samples() for name in servers}

    def timed(name):
        def run() -> None:
            samples[name].append(servers[name].step())
        return run

    steps = {name: timed(name) for name in servers}
    if benchmark.disabled:  # --benchmark-disable: a smoke run of every variant
        benchmark.pedantic(steps["ours"], setup=lambda: [step() for name, step in steps.items() if name != "ours"] and None)
        return

    round_s = kit.warm(list(steps.values()), WARMUP)
    for s in samples.values():
        s.clear()  # the warm-up's steps are not measured
    rounds = kit.plan_rounds(round_s, BUDGET_S, MIN_ROUNDS, MAX_ROUNDS)
    names = list(steps)
    rnd = 0

    # pytest-benchmark times ours; in each round the other steps that precede ours in the
    # round's order run in `setup`, those that follow it in `teardown` (neither is in its timing).
    def before():
        order = kit.rotation(names, rnd)
        for name in order[:order.index("ours")]:
            steps[name]()

    def after():
        nonlocal rnd
        order = kit.rotation(names, rnd)
        for name in order[order.index("ours") + 1:]:
            steps[name]()
        rnd += 1

    benchmark.group = f"peer-{mode}-{precision}"
    benchmark.pedantic(steps["ours"], setup=before, teardown=after, rounds=rounds,
                       iterations=1, warmup_rounds=0)
    choice = {"attention": info["ours"]["attention"], "times_s": info["ours"].get("attention_trial_s")}
    threads = info["ours"]["threads"]

    tokens = kit.BATCH * kit.SEQ
    tps = {name: tokens / s.median() for name, s in samples.items()}
    # speed ratio ours/peer = peer step time / our step time
    cmp = {name: kit.compare(samples[name], samples["ours"]) for name in servers if name != "ours"}
    speed = {name: {"ratio": c["paired"], "ci": [c["paired_ci"][0], c["paired_ci"][1]],
                    "ratio_of_medians": c["ratio"], "ratio_of_medians_ci": list(c["ratio_ci"])}
             for name, c in cmp.items()}
    benchmark.extra_info.update({
        "mode": mode, "precision": precision, "vocab": kit.VOCAB, "cpu_flags": kit.cpu_flags_line(), "tokens_per_step": tokens, "rounds": rounds,
        "threads": threads, "host": kit.host_line(), "packages": package_versions(),
        "host_allocator": {name: i["host_allocator"] for name, i in info.items()},
        "adamw": {name: i["adamw"] for name, i in info.items()},
        "our_attention": choice["attention"], "attention_trial_s": choice["times_s"],
        "params": n_params, "tokens_per_s": tps,
        "speed_ratio_ours_over_peer (time ratio peer/ours)": speed, "confidence": kit.CONFIDENCE,
        "step_times_s": {name: [round(d, 6) for d in s.durations] for name, s in samples.items()},
    })
    lines = [f"\n[peer {mode} {precision}] {kit.host_line()}, {package_versions()}",
             f"  CPU flags: {kit.cpu_flags_line()}",
             f"  {rounds} interleaved rounds (order rotating), vocab {kit.VOCAB}, {tokens} tokens/step, "
             f"ours with attention {choice['attention']} (auto)"]
    for name, s in samples.items():
        lines.append(f"  {name:18s} median step {s.median() * 1e3:8.2f} ms  {tps[name]:8.0f} tokens/s  "
                     f"{n_params[name]:,} parameters, malloc {info[name]['host_allocator']}, "
                     f"AdamW {'fused' if info[name]['adamw']['fused'] else 'foreach' if info[name]['adamw']['foreach'] else 'default'}")
    for name, c in cmp.items():
        lines.append(f"  speed ours/{name}: {kit.fmt_ratio(c, invert=False)}")
    print("\n".join(lines))
    point, floor = TARGET[precision]
    met = (lambda lo: lo > floor) if precision == "bf16" else (lambda lo: lo >= floor)
    short = {name: c for name, c in cmp.items() if name not in INFORMATION_ONLY[mode]
             and not (c["paired"] >= point and met(c["paired_ci"][0]))}
    assert not short, "; ".join(
        f"ours is not {point}x {name} ({mode}, {precision}; lower bound {'above' if precision == 'bf16' else 'at least'} "
        f"{floor}): speed ratio {c['paired']:.4f}, "
        f"{int(kit.CONFIDENCE * 100)}% CI {c['paired_ci']}" for name, c in short.items()) + f" ({kit.host_line()})"
