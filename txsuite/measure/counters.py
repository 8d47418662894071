"""Noise-free counters of one training step: operators dispatched, FLOPs, bytes allocated.

Time is noisy on a shared machine; what a step *does* is not. One untimed step of every
repetition (the last warm-up step) runs under a TorchDispatchMode that sees every aten
operator the step dispatches (forward, backward through the autograd engine, the optimizer)
and counts, per step:

    step_ops          operators dispatched
    step_flops        FLOPs, by torch.utils.flop_counter's formulas (matmuls, attention, ...)
    step_alloc_bytes  bytes of the new tensors operators return (outputs that share no storage
                      with an input: not views, not in-place results)
    step_op_counts    {"aten.mm.default(384x384,384x384)": 2, ...}: each operator with the
                      shapes of its tensor inputs, so a change is reported as what changed

They depend only on the code and the configuration, so two runs of the same code agree exactly
and a difference is a real change ("+1 aten.mm (384x384, 384x384) per step") whatever the
timing noise. A compiled model runs fused kernels the dispatcher does not see op by op, so
compiled cells are not counted (the record says why).
"""
from __future__ import annotations

from collections import Counter
from typing import Any


MAX_SHAPES = 4  # an operator over more tensors (foreach, fused optimizers) is named by their number


def op_signature(func, args) -> str:
    """`aten.mm.default(384x384,384x384)`: the operator and the shapes of its tensor inputs."""
    import torch
    from torch.utils._pytree import tree_flatten

    shapes = ["x".join(map(str, t.shape)) or "scalar" for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
    inputs = ",".join(shapes) if len(shapes) <= MAX_SHAPES else f"{len(shapes)} tensors"
    return f"{func}({inputs})"


class StepCounter:
    """Context manager counting what the enclosed code dispatches (one training step)."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.alloc_bytes = 0
        self.flops = 0
        self._modes: list = []

    def __enter__(self) -> "StepCounter":
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import FlopCounterMode

        counter = self

        class Counting(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.ops[op_signature(func, args)] += 1
                inputs = {storage_address(t) for t in tree_flatten((args, kwargs))[0]}
                for t in tree_flatten(out)[0]:
                    address = storage_address(t)
                    if address is not None and address not in inputs:
                        counter.alloc_bytes += t.numel() * t.element_size()
                return out

        # the flop counter sits outside: it sees the same operators and keeps its own totals
        self._flops = FlopCounterMode(display=False)
        self._counting = Counting()
        self._flops.__enter__()
        self._counting.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._counting.__exit__(*exc)
        self._flops.__exit__(*exc)
        self.flops = int(self._flops.get_total_flops())

    def metrics(self) -> dict[str, Any]:
        return {"step_ops": sum(self.ops.values()), "step_flops": self.flops, "step_alloc_bytes": self.alloc_bytes,
                "step_op_counts": dict(sorted(self.ops.items())), "step_counters_note": None}


def storage_address(t: Any) -> int | None:
    """Where a tensor's memory starts, or None for what holds no memory of its own: not a tensor,
    a meta tensor, or a wrapper subclass (torchao's quantized optimizer states) whose storage
    cannot be read; the tensors inside such a wrapper are dispatched, and counted, themselves."""
    import torch
    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return None
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # "invalid python storage": a wrapper without data
        return None


def not_counted(reason: str) -> dict[str, Any]:
    return {"step_ops": None, "step_flops": None, "step_alloc_bytes": None, "step_op_counts": None,
            "step_counters_note": reason}


def describe_difference(base: dict[str, int], now: dict[str, int], limit: int = 8) -> list[str]:
    """What one step does differently: "+1 aten.mm.default(384x384,384x384)", most changed first."""
    changes = []
    for op in set(base) | set(now):
        delta = now.get(op, 0) - base.get(op, 0)
        if delta:
            changes.append((abs(delta), op, delta))
    changes.sort(key=lambda c: (-c[0], c[1]))
    lines = [f"{delta:+d} {op}" for _, op, delta in changes[:limit]]
    if len(changes) > limit:
        lines.append(f"... and {len(changes) - limit} more operator changes")
    return lines
