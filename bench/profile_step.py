"""Where one training step goes, by operator, for ours and the peers of bench/test_bench_peer.py
(a script, not a test: it prints, asserts nothing).

    python bench/profile_step.py [fp32|bf16] [NAME ...]      (default: fp32 ours litgpt)

NAME: as bench/step_server.py (ours, ours-compiled, hf-sdpa, hf-eager, litgpt). Each model is
built as the peer bench builds it and runs the bench's step (kit.bare_step); after warm-up steps,
torch.profiler records `PROFILED_STEPS` steps and the self CPU time per step is grouped into
GEMMs, attention, GELU and the rest, and the rest is listed by operator and by the operator or
autograd node that called it (where a copy or a sum comes from). The models run one after
another in this process: compare shares, not absolute totals, which drift with the host.
"""
from __future__ import annotations

import collections
import sys

import conftest as kit  # first, before torch: it sets the OpenMP spin the bench runs with (bench/ is on sys.path)
import step_server
import torch
from torch.profiler import ProfilerActivity, profile

WARMUP_STEPS, PROFILED_STEPS, LISTED = 5, 10, 12
GROUPS = (("GEMMs", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
          ("attention", ("scaled_dot_product", "aten::_softmax")),
          ("GELU", ("gelu",)))


def group_of(op: str) -> str:
    return next((name for name, keys in GROUPS if any(k in op for k in keys)), "everything else")


def profile_model(name: str, precision: str) -> None:
    model, forward, info = step_server.build(name, precision)
    step = kit.bare_step(forward, model, kit.make_batches(), precision, WARMUP_STEPS + PROFILED_STEPS,
                         impl=info["adamw"])
    for _ in range(WARMUP_STEPS):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
    per_step_ms = lambda us: us / PROFILED_STEPS / 1e3  # noqa: E731
    groups: dict[str, float] = collections.Counter()
    rest: dict[tuple[str, str], float] = collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        group = group_of(event.name)
        groups[group] += per_step_ms(event.self_cpu_time_total)
        if group == "everything else" and event.self_cpu_time_total > 0:
            caller = event.cpu_parent.name if event.cpu_parent is not None else "(step)"
            rest[(event.name, caller)] += per_step_ms(event.self_cpu_time_total)
    total = sum(groups.values())
    print(f"\n{name} ({precision}, attention {info['attention']}, linear {info['linear']}): "
          f"{total:.1f} ms of operators per step")
    for group in [g for g, _ in GROUPS] + ["everything else"]:
        print(f"  {group:16s} {groups[group]:7.1f} ms  {groups[group] / total:5.1%}")
    print(f"  the rest's largest ({LISTED}), operator < caller:")
    for (op, caller), ms in rest.most_common(LISTED):
        print(f"    {ms:6.2f} ms  {op} < {caller}")


def main(argv: list[str]) -> int:
    precision = argv[0] if argv else "fp32"
    names = argv[1:] or ["ours", "litgpt"]
    print(f"[profile {precision}] {kit.host_line()}")
    for name in names:
        profile_model(name, precision)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
